"""Crash injection for tests: named points in the compaction saga and GC where a test can make the step fail.

`arm(point, times)` makes the next `times` passes through `point` raise InjectedCrash (times=None: every pass until
disarmed), an Exception that step retry policies see as a transient failure. `arm(point, crash=True)` raises
ProcessCrash instead, a BaseException that retry policies do not retry: the run stops there, as if its process
had died.
DRAY_FAULTS="point[:times],..." arms points in a fresh process (a daemon run, a CLI call).
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_armed: dict[str, int | None] = {}
_crash: set[str] = set()
_env_loaded = False


class InjectedCrash(RuntimeError):
    """A failure injected by a test."""


class ProcessCrash(BaseException):
    """An injected crash of the process: the step fails without a retry."""


def _load_env() -> None:
    global _env_loaded
    if _env_loaded:
        return
    _env_loaded = True
    for item in filter(None, os.environ.get("DRAY_FAULTS", "").split(",")):
        point, _, times = item.partition(":")
        _armed[point.strip()] = int(times) if times else None


def arm(point: str, times: int | None = 1, *, crash: bool = False) -> None:
    with _lock:
        _load_env()
        _armed[point] = times
        if crash:
            _crash.add(point)
        else:
            _crash.discard(point)


def disarm(point: str | None = None) -> None:
    with _lock:
        _load_env()
        if point is None:
            _armed.clear()
            _crash.clear()
        else:
            _armed.pop(point, None)
            _crash.discard(point)


def point(name: str) -> None:
    """A place where an injected crash may happen."""
    with _lock:
        _load_env()
        if name not in _armed:
            return
        left = _armed[name]
        crash = name in _crash
        if left is not None:
            if left <= 1:
                del _armed[name]
            else:
                _armed[name] = left - 1
    if crash:
        raise ProcessCrash(f"injected process crash at {name}")
    raise InjectedCrash(f"injected failure at {name}")
