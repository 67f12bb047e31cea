"""Test-session wiring: real Oxia and MinIO servers as session fixtures, and CI's no-skip rule.

- ``oxia_service``: an ``OxiaService`` (``.address`` = "127.0.0.1:PORT", ``.stop()``), one per session.
- ``s3_service``: a ``MinioService`` (``.endpoint``, ``.access_key``, ``.secret_key``, ``.bucket``,
  ``.url(prefix)`` -> "s3://BUCKET/PREFIX?endpoint=...&access_key_id=...&secret_access_key=..."), one per session.

Each server starts on first use only. Their binaries are built and cached by tests/services.py; when a collected
test may need one, it is built before the first test runs, so that a first build (minutes) does not count
against a test's timeout. A service that cannot be built or started skips its tests, except with CI=true, where
it fails them. With CI=true any skipped test fails the run. The exception is Oxia: no registry here serves an
Oxia server, so without one (DRAY_OXIA_BIN or a cached build) its tests are skipped and the summary says how many.
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
        self.skipped = 0
        self.oxia_not_run = 0  # tests skipped because no Oxia server can be had on this machine


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
        except Exception as e:  # noqa: BLE001 - reported by the fixture, as a skip or (CI) a failure
            _state.build_errors[name] = str(e)
            if reporter is not None:
                reporter.write_line(f"services: building {name} failed:\n{e}", red=True)
        else:
            _state.notes.append(f"built {name} in {time.monotonic() - started:.0f} s")


# --------------------------------------------------------------------------------------- fixtures


OXIA_UNAVAILABLE = "oxia test server unavailable"


def _unavailable(name: str, error: Exception | str) -> None:
    message = f"{name} test server unavailable: {error}"
    # No registry here serves an Oxia server (tests/services.py): its tests are skipped, and said so, even in CI.
    if _in_ci() and name != "oxia":
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
        if OXIA_UNAVAILABLE in str(report.longrepr):
            _state.oxia_not_run += 1
        else:
            _state.skipped += 1
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _in_ci() and _state.skipped and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    line = f"services: {len(_state.used['oxia'])} tests used Oxia, {len(_state.used['s3'])} tests used S3"
    if _state.notes:
        line += f" ({'; '.join(_state.notes)})"
    terminalreporter.write_line(line)
    if _state.oxia_not_run:
        terminalreporter.write_line(
            f"services: {_state.oxia_not_run} tests NOT RUN for want of an Oxia server (set DRAY_OXIA_BIN; no "
            "registry here serves one)", red=True)
    if _in_ci() and _state.skipped:
        terminalreporter.write_line(
            f"CI=true: {_state.skipped} skipped tests fail this run (no test may be skipped in CI)", red=True
        )
