"""The container image, built once per test session (tests/container/podman.py).

``dray_image`` installs podman when missing (root), makes the base image when missing (cached in podman's
storage) and builds ./Dockerfile with the layer cache. When any step fails the tests that need the image fail in
CI (CI=true) and are skipped elsewhere, with the reason. Those tests carry the marker `container`:
`pytest -m "not container"` leaves them out.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.container import podman

_notes: list[str] = []


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "container: builds and runs the container image with podman (slow)")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(message + "\n(CI=true: the container image must build and run here)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def dray_image() -> str:
    """The id of a freshly built image of ./Dockerfile (tag localhost/dray:test)."""
    try:
        podman.ensure_tools()
        base_s = podman.ensure_base()
        _notes.append(f"base image {'cached' if not base_s else f'made in {base_s:.0f} s'}")
        started = time.monotonic()
        image = podman.build_image()
    except podman.ContainerError as e:
        unavailable(f"cannot build the container image: {e}")
    size = podman.inspect_image(image)["Size"]
    _notes.append(f"image built in {time.monotonic() - started:.0f} s, {size / 1e6:.0f} MB")
    return image


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _notes:
        terminalreporter.write_line("container: " + "; ".join(_notes))
