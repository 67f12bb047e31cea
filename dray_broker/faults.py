"""Fault injection for tests: named points in the code where a test makes something fail. Off unless armed.

A test arms a point of its own process with `arm(name, times, crash=...)`. DRAY_FAULTS arms points of a process it
starts (a broker, a Dagster daemon and its runs, a CLI call), read at the first use of a point: comma-separated items
`name[=times]`, times a positive count (default 1) or `always`, e.g. DRAY_FAULTS=drop-produce-response=3.

Code asks at a point:
    fire(name)   True (one firing used) when the fault should happen now; the caller makes it happen
    point(name)  raises InjectedCrash, an Exception that step retry policies retry, or, when armed with crash=True,
                 ProcessCrash, a BaseException they do not retry: the run stops as if its process had died

The points: drop-produce-response (the broker closes the connection instead of answering a committed produce:
dray_broker/produce/handler.py); stall-before-index (a WAL flush hangs after writing its objects, before its index
write: dray_broker/produce/wal_writer.py; a test kills the broker then); the compaction saga's stage.*, commit.*, publish.* (dray_pipelines/compaction.py); the cleaner's clean.stage.*, clean.commit.*, clean.publish.* (dray_pipelines/cleaning.py);
wal_gc.before_objects, retention.after_log_start and retention.after_trim (dray_pipelines/gc.py).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

ENV = "DRAY_FAULTS"
ALWAYS = None  # times: every pass until disarmed


class FaultSpecError(ValueError):
    """DRAY_FAULTS does not follow its grammar."""


class InjectedCrash(RuntimeError):
    """A failure injected by a test."""


class ProcessCrash(BaseException):
    """An injected crash of the process: the step fails without a retry."""


def parse(spec: str) -> dict[str, int | None]:
    """DRAY_FAULTS's items as name -> times (ALWAYS: every pass)."""
    armed: dict[str, int | None] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, times = (part.strip() for part in item.partition("="))
        if not name:
            raise FaultSpecError(f"{ENV}: {item!r} names no fault point")
        if not sep:
            armed[name] = 1
        elif times == "always":
            armed[name] = ALWAYS
        elif times.isdigit() and int(times) > 0:
            armed[name] = int(times)
        else:
            raise FaultSpecError(f"{ENV}: in {item!r}, the times must be a positive count or 'always'")
    return armed


class Faults:
    """The armed points of a process. Thread-safe: pipeline steps run in threads."""

    def __init__(self, spec: str | None = None):
        """spec: points to arm, in DRAY_FAULTS's grammar; None: the DRAY_FAULTS variable, read at first use."""
        self._lock = threading.Lock()
        self._spec = spec
        self._armed: dict[str, int | None] | None = None  # name -> firings left (ALWAYS: no limit)
        self._crash: set[str] = set()

    def load(self) -> None:
        """Arm the points of the spec (or DRAY_FAULTS) now, if not done yet. FaultSpecError when it is malformed."""
        with self._lock:
            self._loaded()

    def _loaded(self) -> dict[str, int | None]:
        if self._armed is None:
            armed = parse(os.environ.get(ENV, "") if self._spec is None else self._spec)
            if armed:
                log.warning("fault injection is on: %s", armed)
            self._armed = armed
        return self._armed

    def arm(self, name: str, times: int | None = 1, *, crash: bool = False) -> None:
        with self._lock:
            self._loaded()[name] = times
            if crash:
                self._crash.add(name)
            else:
                self._crash.discard(name)

    def disarm(self, name: str | None = None) -> None:
        """Disarm one point, or every point."""
        with self._lock:
            armed = self._loaded()
            if name is None:
                armed.clear()
                self._crash.clear()
            else:
                armed.pop(name, None)
                self._crash.discard(name)

    def fire(self, name: str) -> bool:
        """True (and one firing fewer left) if the fault at this point should happen now."""
        return self._take(name)[0]

    def point(self, name: str) -> None:
        """A place where an injected crash may happen."""
        fired, crash = self._take(name)
        if fired and crash:
            raise ProcessCrash(f"injected process crash at {name}")
        if fired:
            raise InjectedCrash(f"injected failure at {name}")

    def _take(self, name: str) -> tuple[bool, bool]:
        """(whether the point fires now, whether as a process crash), using one firing."""
        with self._lock:
            armed = self._loaded()
            if name not in armed:
                return False, False
            left = armed[name]
            crash = name in self._crash
            if left is not ALWAYS:
                left -= 1
                if left <= 0:
                    del armed[name]
                    self._crash.discard(name)
                else:
                    armed[name] = left
        log.warning("injecting fault %s (%s left)", name, "always" if left is ALWAYS else left)
        return True, crash


# The process's points, armed by its tests or by DRAY_FAULTS.
FAULTS = Faults()
arm = FAULTS.arm
disarm = FAULTS.disarm
fire = FAULTS.fire
point = FAULTS.point
