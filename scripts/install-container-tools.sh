#!/usr/bin/env bash
# Install what builds and runs Dray's container image on a Debian machine: podman (with runc) and debootstrap
# (scripts/container-base.sh makes the base image with it). Idempotent: does nothing when all are present.
#
#   scripts/install-container-tools.sh          # as root, or with sudo available
#
# podman runs with `--runtime runc --cgroup-manager cgroupfs` here (see tests/container/podman.py); the
# containers.conf written below drops podman's default ulimits, which these machines refuse to raise.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)

if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || {
    echo "install-container-tools: no apt-get; install ${missing[*]} with your package manager" >&2; exit 1; }
  echo "install-container-tools: installing ${missing[*]} from Debian" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq podman runc debootstrap >/dev/null
fi

conf=/etc/containers/containers.conf
if [ ! -f "$conf" ]; then
  $SUDO mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = []\n' | $SUDO tee "$conf" >/dev/null
fi
podman --version >/dev/null
