"""The watch both backends hand out: a queue of notifications for one key prefix, fed by the backend.

The backend decides which changes concern the watch (`prefix`: a KeyPrefix) and pushes them, on the event loop, in
the order they happened. The reader iterates with `async for`. Three ways the watch stops:
- aclose() by its reader: at once (what is queued is dropped); the backend is told through `on_close`;
- end() by the backend (the store closed): after what is queued;
- fail(exc) by the backend (its change feed broke for good): after what is queued, the reader gets exc once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable, Iterable

from dray_broker.metadata.base import Notification, Watch
from dray_broker.metadata.keys import KeyPrefix


class WatchQueue(Watch):
    def __init__(self, prefix: str, on_close: Callable[["WatchQueue"], Awaitable[None] | None] | None = None) -> None:
        self.prefix = KeyPrefix(prefix)
        self._on_close = on_close
        self._items: deque[Notification] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False  # aclose(): stop at once
        self._ended = False  # end() or fail(): stop after what is queued
        self._error: BaseException | None = None

    @property
    def stopped(self) -> bool:
        """Nothing more is queued: the reader closed the watch or the backend ended it."""
        return self._closed or self._ended

    def push(self, notification: Notification) -> None:
        if not self.stopped:
            self._items.append(notification)
            self._wakeup.set()

    def push_many(self, notifications: Iterable[Notification]) -> None:
        if not self.stopped:
            self._items.extend(notifications)
            self._wakeup.set()

    def end(self) -> None:
        self._ended = True
        self._wakeup.set()

    def fail(self, exc: BaseException) -> None:
        if not self.stopped:
            self._error = exc
            self.end()

    async def __anext__(self) -> Notification:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._items:
                return self._items.popleft()
            if self._ended:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        self._wakeup.set()
        if self._on_close is not None:
            done = self._on_close(self)
            if done is not None:
                await done
