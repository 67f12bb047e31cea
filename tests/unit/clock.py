"""A clock the test moves (dray_broker/clock.py's Clock): time passes only in advance(), which runs the timers and
wakes the sleepers that come due, in time order; a timer set for a time already passed runs at once. No test waits
for real time to pass."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Callable


class ManualTimer:
    def __init__(self, due_ms: float, callback: Callable[[], None]):
        self.due_ms = due_ms
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    def __init__(self, now_ms: int | None = None):
        self._now = int(time.time() * 1000) if now_ms is None else now_ms
        self._timers: list[tuple[float, int, ManualTimer]] = []
        self._order = itertools.count()  # timers due at the same time run in the order they were set

    def now_ms(self) -> int:
        return self._now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> ManualTimer | asyncio.Handle:
        if delay_s <= 0:  # due already (the time it waits for was passed before it was set): run it soon
            return asyncio.get_running_loop().call_soon(callback)
        timer = ManualTimer(self._now + delay_s * 1000, callback)
        heapq.heappush(self._timers, (timer.due_ms, next(self._order), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        woken = asyncio.get_running_loop().create_future()
        self.call_later(seconds, lambda: woken.done() or woken.set_result(None))
        await woken

    def advance(self, ms: int) -> None:
        """Move time ms forward, running each timer that comes due at its due time."""
        target = self._now + ms
        while self._timers and self._timers[0][0] <= target:
            due, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._now = max(self._now, round(due))
                timer.callback()
        self._now = target
