"""Test-session wiring: real Oxia and MinIO servers as session fixtures, and CI's no-skip rule.

- ``oxia_service``: an ``OxiaService`` (``.address`` = "127.0.0.1:PORT", ``.stop()``), one per session.
- ``s3_service``: a ``MinioService`` (``.endpoint``, ``.access_key``, ``.secret_key``, ``.bucket``,
  ``.url(prefix)`` -> "s3://BUCKET/PREFIX?endpoint=...&access_key_id=...&secret_access_key=..."), one per session.

Each server starts on first use only. Their binaries are built and cached by tests/services.py; when a collected
test may need one, it is built before the first test runs, so that a first build (minutes) does not count
against a test's timeout. A service that cannot be built or started skips its tests with the reason (a
developer without Go still runs the rest), except with CI=true, where it fails them. With CI=true any skipped
test fails the run: a green CI means every backend's tests ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import services

OXIA_FIXTURE = "oxia_service"
S3_FIXTURE = "s3_service"
_SERVICE_FIXTURES = {OXIA_FIXTURE: "oxia", S3_FIXTURE: "s3"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


class _State:
    """What this session built, started and which tests used which service."""

    def __init__(self) -> None:
        self.build_errors: dict[str, str] = {}  # "oxia" | "s3" -> why the binary could not be built
        self.notes: list[str] = []  # timings for the terminal summary
        self.used: dict[str, set[str]] = {"oxia": set(), "s3": set()}  # nodeids of passed tests
        self.skipped: dict[str, int] = {}  # why -> how many tests were skipped for it


_state = _State()


# --------------------------------------------------------------------------------------- collection: markers, builds


def _may_use(item: pytest.Item, fixture: str) -> bool:
    """Statically requested, or named in the test's module (fixtures fetched with request.getfixturevalue)."""
    if fixture in getattr(item, "fixturenames", ()):
        return True
    path = getattr(item, "path", None)
    if path is None:
        return False
    return fixture in _module_text(Path(path))


_texts: dict[Path, str] = {}


def _module_text(path: Path) -> str:
    if path not in _texts:
        try:
            _texts[path] = path.read_text(errors="replace")
        except OSError:
            _texts[path] = ""
    return _texts[path]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in _SERVICE_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    wanted = {
        name: ensure
        for name, fixture, ensure in (
            ("oxia", OXIA_FIXTURE, services.ensure_oxia_binary),
            ("s3", S3_FIXTURE, services.ensure_minio_binary),
        )
        if any(_may_use(item, fixture) for item in session.items)
    }
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for name, ensure in wanted.items():
        path = services.oxia_binary_path() if name == "oxia" else services.minio_binary_path()
        if path.exists():
            continue
        if reporter is not None:
            reporter.write_line(f"services: building the {name} server into {path} (first run: minutes) ...")
        started = time.monotonic()
        try:
            ensure()
        except Exception as e:  # noqa: BLE001 - CI stops here; elsewhere the fixture skips with the reason
            if _in_ci():
                pytest.exit(f"CI=true: the {name} test server could not be built, so its tests cannot run:\n{e}",
                            returncode=pytest.ExitCode.TESTS_FAILED)
            _state.build_errors[name] = str(e)
            if reporter is not None:
                reporter.write_line(f"services: building {name} failed:\n{e}", red=True)
        else:
            _state.notes.append(f"built {name} in {time.monotonic() - started:.0f} s")


# --------------------------------------------------------------------------------------- fixtures


UNAVAILABLE = "test server unavailable"


def _unavailable(name: str, error: Exception | str) -> None:
    message = f"{name} {UNAVAILABLE}: {error}"
    if _in_ci():
        pytest.fail(message + "\n(CI=true: a test service that cannot start fails the run)", pytrace=False)
    pytest.skip(message)


def _service(name: str, start):
    if name in _state.build_errors:
        _unavailable(name, _state.build_errors[name])
    started = time.monotonic()
    try:
        handle = start()
    except Exception as e:  # noqa: BLE001
        _unavailable(name, e)
    _state.notes.append(f"started {name} in {time.monotonic() - started:.1f} s")
    return handle


@pytest.fixture(scope="session")
def oxia_service():
    """A real Oxia server (standalone, one shard) for this test session: ``.address`` is "127.0.0.1:PORT"."""
    handle = _service("oxia", services.start_oxia)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def s3_service():
    """A real MinIO server with a bucket for this test session; ``.url(prefix)`` gives a dray object store URL."""
    handle = _service("s3", services.start_minio)
    yield handle
    handle.stop()


# --------------------------------------------------------------------------------------- reporting, CI rule


def _requested(item: pytest.Item) -> set[str]:
    names = set(getattr(item, "fixturenames", ()))
    request = getattr(item, "_request", None)  # its fixturenames include those fetched with getfixturevalue
    names.update(getattr(request, "fixturenames", ()) or ())
    return names


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call" and report.passed:
        requested = _requested(item)
        for fixture, name in _SERVICE_FIXTURES.items():
            if fixture in requested:
                _state.used[name].add(item.nodeid)
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ").split(":", 1)[0] if UNAVAILABLE in reason else "other reasons"
        _state.skipped[reason] = _state.skipped.get(reason, 0) + 1
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _in_ci() and _state.skipped and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    line = f"services: {len(_state.used['oxia'])} tests used Oxia, {len(_state.used['s3'])} tests used S3"
    if _state.notes:
        line += f" ({'; '.join(_state.notes)})"
    terminalreporter.write_line(line)
    for reason, count in sorted(_state.skipped.items()):
        terminalreporter.write_line(f"services: {count} tests skipped: {reason}", red=True)
    for name, error in sorted(_state.build_errors.items()):
        terminalreporter.write_line(f"services: the {name} server could not be built: {error.splitlines()[0]}",
                                    red=True)
    if _in_ci() and _state.skipped:
        terminalreporter.write_line(
            f"CI=true: {sum(_state.skipped.values())} skipped tests fail this run (no test may be skipped in CI)",
            red=True)
