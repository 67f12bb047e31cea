"""The bound on request memory across all connections (Kafka's queued.max.request.bytes).

A connection reserves a frame's size when it reads the frame's length prefix, before any byte of the frame is
stored, and gives it back when the request is answered (or dropped with its connection): the reservation covers
the frame's bytes while they arrive and while the request is handled. A frame that does not fit waits: its
connection stops reading (back-pressure on the client's socket). Waiting frames are let in as bytes are given
back, in the order they came; a frame that fits goes in at once, even while a larger one waits. When nothing is
reserved any frame fits, so a frame larger than the bound (up to the largest frame accepted) still goes through,
alone.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

# Called when bytes were given back; returns True once it stops waiting (it reserved what it needed, or its
# connection is gone), False to stay first in line.
Waiter = Callable[[], bool]


class RequestBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._waiting: deque[Waiter] = deque()
        self._waking = False

    def try_reserve(self, n: int) -> bool:
        if self.used + n <= self.limit or self.used == 0:
            self.used += n
            return True
        return False

    def release(self, n: int) -> None:
        self.used -= n
        if self._waking:  # a waiter gave bytes back while being woken: the loop below goes on with them
            return
        self._waking = True
        try:
            while self._waiting and self._waiting[0]():
                self._waiting.popleft()
        finally:
            self._waking = False

    def wait(self, waiter: Waiter) -> None:
        self._waiting.append(waiter)

    @property
    def waiting(self) -> int:
        return len(self._waiting)
