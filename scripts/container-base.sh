#!/usr/bin/env bash
# Make the base image for Dray's Dockerfile on a machine that reaches no container registry: a minimal Debian
# bookworm root filesystem with Python 3.11 (debootstrap from the Debian mirror apt already uses), imported into
# podman as localhost/dray-base:bookworm. Cached: does nothing when that image exists (--force makes it anew).
#
#   scripts/container-base.sh [--force]
#   podman build --build-arg BASE_IMAGE=localhost/dray-base:bookworm ...
#
# Needs root, podman and debootstrap (scripts/install-container-tools.sh). Environment: DRAY_BASE_IMAGE (the tag),
# DRAY_DEBIAN_MIRROR (default: the first Debian mirror in apt's sources).
set -euo pipefail

IMAGE=${DRAY_BASE_IMAGE:-localhost/dray-base:bookworm}
SUITE=bookworm
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)

if [ "${1:-}" != "--force" ] && "${PODMAN[@]}" image exists "$IMAGE"; then
  echo "container-base: $IMAGE exists (--force makes it anew)" >&2
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "container-base: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "container-base: run scripts/install-container-tools.sh first" >&2; exit 1; }

mirror=${DRAY_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # deb822 sources (URIs: ...) first, then one-line sources (deb URL suite ...); skip the security archive.
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v security | head -n1 || true)
  [ -n "$mirror" ] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; break}}' | grep -v security | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi

rootfs=$(mktemp -d /var/tmp/dray-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
started=$(date +%s)
echo "container-base: debootstrap $SUITE from $mirror ..." >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$rootfs" "$mirror" >/dev/null

# Nothing a runtime needs: package caches and lists, documentation, locales other than C.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
       "$rootfs"/tmp/* "$rootfs"/var/tmp/*
echo "$mirror $SUITE main" > "$rootfs/etc/apt/sources.list"

tar -C "$rootfs" --numeric-owner -c . | "${PODMAN[@]}" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "debian $SUITE minbase + python3 (scripts/container-base.sh)" - "$IMAGE" >/dev/null
echo "container-base: $IMAGE made in $(( $(date +%s) - started )) s" >&2
