"""Build and run Dray's container image with podman, as the image tests do (and as a person can by hand).

    ensure_tools()                    # podman, runc, debootstrap (scripts/install-container-tools.sh; root)
    ensure_base()                     # localhost/dray-base:bookworm (scripts/container-base.sh; cached)
    image = build_image()             # localhost/dray:test from ./Dockerfile, BASE_IMAGE = that base
    with Container(image, ["dray", "broker"], env={...}, volumes={dir: "/data"}) as c:
        c.wait_ready("127.0.0.1:PORT")
        c.health()                    # runs the image's HEALTHCHECK once: True when healthy
        c.stop()                      # SIGTERM, then the exit code

Docker has no engine on these machines; podman from Debian runs with `--runtime runc --cgroup-manager cgroupfs`
(and the /etc/containers/containers.conf that scripts/install-container-tools.sh writes). No registry is reachable: the Dockerfile's base image comes from
debootstrap and `podman import`, and pip inside the build reaches PyPI through host networking with the machine's
CA bundle mounted. Host networking also lets clients on the machine reach a broker in a container.

Builds reuse podman's layer cache: a source change rebuilds only the project layers (seconds), a dependency change
the dependency layers (minutes). The build stage is tagged as well, to keep it as the cache; the images both tags
named before a build that changed them are removed, so that repeated runs do not pile up images.

    .venv/bin/python -m tests.container.podman build     # the same build by hand, with timings
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
BASE_IMAGE = os.environ.get("DRAY_BASE_IMAGE", "localhost/dray-base:bookworm")
TEST_IMAGE = "localhost/dray:test"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

INSTALL_TIMEOUT = 900
BASE_TIMEOUT = 1200
BUILD_TIMEOUT = 2400


class ContainerError(RuntimeError):
    """podman is missing, or the base, the build or a container failed."""


def _run(argv: list[str], timeout: float, what: str, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    except FileNotFoundError as e:
        raise ContainerError(f"{what}: {e}") from None
    except subprocess.TimeoutExpired as e:
        raise ContainerError(f"{what}: timed out after {timeout:.0f} s\n{_tail(e.stdout)}\n{_tail(e.stderr)}") from None
    if p.returncode != 0:
        raise ContainerError(f"{what} failed (exit {p.returncode}):\n{_tail(p.stdout)}\n{_tail(p.stderr)}")
    return p


def _tail(text, lines: int = 40) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    if check:
        return _run([*PODMAN, *args], timeout, "podman " + " ".join(args[:2]))
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------------------------------------ tools, base, build


def ensure_tools() -> None:
    """podman and its runtime: installed from Debian by scripts/install-container-tools.sh when missing."""
    if shutil.which("podman") and shutil.which("runc") and Path("/etc/containers/containers.conf").exists():
        if shutil.which("debootstrap") or image_exists(BASE_IMAGE):
            return
    if os.geteuid() != 0 and not shutil.which("sudo"):
        raise ContainerError("podman is not installed and this user cannot install it (run "
                             "scripts/install-container-tools.sh as root)")
    _run(["bash", str(REPO / "scripts/install-container-tools.sh")], INSTALL_TIMEOUT, "installing podman")


def image_exists(ref: str) -> bool:
    return shutil.which("podman") is not None and podman("image", "exists", ref, check=False).returncode == 0


def ensure_base() -> float:
    """The Dockerfile's base image made on this machine (cached); returns the seconds spent (0 when cached)."""
    if image_exists(BASE_IMAGE):
        return 0.0
    started = time.monotonic()
    _run(["bash", str(REPO / "scripts/container-base.sh")], BASE_TIMEOUT, "making the base image",
         env={**os.environ, "DRAY_BASE_IMAGE": BASE_IMAGE})
    return time.monotonic() - started


def image_id(ref: str) -> str | None:
    p = podman("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return p.stdout.strip() if p.returncode == 0 else None


def build_image(tag: str = TEST_IMAGE, base: str = BASE_IMAGE) -> str:
    """Build ./Dockerfile as tag on base; return the image id.

    The build stage is tagged too (tag + "-build"), so that it stays as the layer cache of the next build; the
    images these tags named before are removed when replaced (with their layers no other image uses)."""
    build_tag = tag + "-build"
    previous = {t: image_id(t) for t in (tag, build_tag)}
    argv = ["build", "--format", "docker", "--layers", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
            "-f", str(REPO / "Dockerfile")]
    if CA_BUNDLE.exists():
        argv += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    podman(*argv, "-t", tag, str(REPO), timeout=BUILD_TIMEOUT)
    podman(*argv, "--target", "build", "-t", build_tag, str(REPO), timeout=BUILD_TIMEOUT)  # all from the cache
    new = image_id(tag)
    if new is None:
        raise ContainerError(f"the build reported success but {tag} does not exist")
    for t, old in previous.items():
        if old and old != image_id(t):
            podman("rmi", old, check=False)  # still used by a container: then it stays
    return new


def inspect_image(ref: str) -> dict:
    return json.loads(podman("image", "inspect", ref).stdout)[0]


# ------------------------------------------------------------------------------------------------ containers


class Container:
    """One detached container with host networking; removed on exit from the with block."""

    def __init__(self, image: str, command: list[str] | None = None, *, env: dict[str, str] | None = None,
                 volumes: dict[str | Path, str] | None = None, user: str | None = None, name: str | None = None):
        self.image = image
        self.command = command or []
        self.env = env or {}
        self.volumes = volumes or {}
        self.user = user
        self.name = name or f"dray-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.started = False

    def start(self) -> "Container":
        argv = ["run", "-d", "--name", self.name, "--network", "host",
                # podman schedules healthchecks with systemd timers, absent here: the tests run it on demand.
                "--health-interval", "disable"]
        for key, value in self.env.items():
            argv += ["-e", f"{key}={value}"]
        for host, inside in self.volumes.items():
            argv += ["-v", f"{host}:{inside}"]
        if self.user:
            argv += ["--user", self.user]
        podman(*argv, self.image, *self.command, timeout=120)
        self.started = True
        return self

    def __enter__(self) -> "Container":
        return self.start() if not self.started else self

    def __exit__(self, *exc) -> None:
        self.remove()

    def running(self) -> bool:
        p = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return p.stdout.strip() == "true"

    def logs(self) -> str:
        p = podman("logs", self.name, check=False)
        return (p.stdout or "") + (p.stderr or "")

    def exec(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *argv, timeout=timeout, check=False)

    def health(self) -> bool:
        """Run the image's HEALTHCHECK once (podman healthcheck run): True when it passes."""
        return podman("healthcheck", "run", self.name, timeout=60, check=False).returncode == 0

    def wait_http(self, url: str, timeout: float = 90.0) -> None:
        """Wait until url answers 200, failing early (with the logs) when the container exits."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            if not self.running():
                raise ContainerError(f"container {self.name} exited before {url} answered:\n{_tail(self.logs())}")
            time.sleep(0.3)
        raise ContainerError(f"{url} did not answer in {timeout:.0f} s ({last}):\n{_tail(self.logs())}")

    def wait_exit(self, timeout: float = 300) -> int:
        """Wait until the container's command ends; return its exit code."""
        return int(podman("wait", self.name, timeout=timeout).stdout.strip().splitlines()[-1])

    def stop(self, timeout: int = 30) -> int:
        """SIGTERM (then SIGKILL after timeout); return the exit code."""
        podman("stop", "-t", str(timeout), self.name, timeout=timeout + 60)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def remove(self) -> None:
        if self.started:
            podman("rm", "-f", "-v", "-t", "5", self.name, timeout=120, check=False)
            self.started = False


def main(argv: list[str]) -> int:
    if argv[1:] != ["build"]:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_tools()
    t = ensure_base()
    print(f"base {BASE_IMAGE}: {'cached' if not t else f'made in {t:.0f} s'}", flush=True)
    started = time.monotonic()
    image = build_image()
    size = inspect_image(image)["Size"]
    print(f"image {TEST_IMAGE} {image[:12]}: built in {time.monotonic() - started:.0f} s, {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
