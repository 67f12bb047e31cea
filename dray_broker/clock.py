"""Time as a collaborator: components whose behaviour depends on time passing (the group coordinator's session
timers, takeover delays and offset expiry) take a Clock, so that tests drive time instead of sleeping through it."""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock milliseconds (stored timestamps such as offset commit times use them)."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Call callback (on the event loop) once delay_s seconds of this clock have passed."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real time, on the running event loop."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay_s, callback)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
