"""Fault injection for tests, off unless DRAY_FAULTS is set: comma-separated name=count pairs, each fault firing
that many times. Faults:

    drop-produce-response   after a produce is committed, close the connection instead of answering
    stall-before-index      a WAL flush hangs after writing its object, before its index appends (kill it then)
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class Faults:
    def __init__(self, spec: str | None = None):
        spec = os.environ.get("DRAY_FAULTS", "") if spec is None else spec
        self._left: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, count = part.partition("=")
            self._left[name] = int(count or 1)
        if self._left:
            log.warning("fault injection is on: %s", self._left)

    def fire(self, name: str) -> bool:
        """True (and one fewer left) if the fault should happen now."""
        left = self._left.get(name, 0)
        if left <= 0:
            return False
        self._left[name] = left - 1
        log.warning("injecting fault %s (%d left)", name, left - 1)
        return True
