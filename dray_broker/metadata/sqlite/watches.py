"""Watches of the SQLite backend: the change log, polled.

Every modification appends a row to the `changes` table (schema.py), whose id is the key's new version. A watch
starts at the newest change id when it is registered, and the store thread reads the rows after it: after each
batch of ops that wrote (so a local watch holds a change before its writer's await returns), when another store
of this process on the same file wrote (it pokes this one), and every POLL_S otherwise (other processes' changes).
The matching changes go to the watches' queues (WatchQueue) on their event loops, with the results of the
store thread's batch. The log keeps about an hour (RETENTION_S), as Oxia keeps its notifications.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import weakref

from dray_broker.metadata.base import Notification, NotificationType
from dray_broker.metadata.keys import KeyPrefix
from dray_broker.metadata.sqlite.thread import StoreThread
from dray_broker.metadata.watch import WatchQueue

log = logging.getLogger("dray_broker.metadata.sqlite")

_CREATED = NotificationType.CREATED.value
_MODIFIED = NotificationType.MODIFIED.value
_RANGE_DELETED = NotificationType.RANGE_DELETED.value

_POLL_ROWS = 2000

# The watches of this process's stores, by database file: a commit by one store wakes the others' pollers at once.
_LOCAL: dict[str, "weakref.WeakSet[Watches]"] = {}
_LOCAL_LOCK = threading.Lock()


class _WatchFilter:
    __slots__ = ("prefix", "start")

    def __init__(self, prefix: KeyPrefix, start: int) -> None:
        self.prefix = prefix
        self.start = start

    def matches(self, change_id: int, key: str, type_: int, range_end: str | None) -> bool:
        if change_id <= self.start:
            return False
        if type_ != _RANGE_DELETED:
            return self.prefix.matches(key)
        return self.prefix.touches_range(key, range_end or "")


class Watches:
    POLL_S = 0.03  # how often other processes' changes are looked for while watches exist
    PRUNE_INTERVAL_S = 60.0
    RETENTION_S = 3600.0  # how long the change log keeps a change

    def __init__(self, path: str, thread: StoreThread) -> None:
        self.path = path
        self.thread = thread
        self.retention_s = self.RETENTION_S
        # Touched only by the store thread.
        self._filters: dict[int, tuple[_WatchFilter, asyncio.AbstractEventLoop, WatchQueue]] = {}
        self._cursor = 0
        self._next_poll = 0.0
        self._next_prune = 0.0
        # Touched only by the event loop.
        self._queues: dict[int, WatchQueue] = {}
        self._seq = 0
        self._left = False

    # -- on the event loop -------------------------------------------------------------------------------------

    async def watch(self, prefix: str) -> WatchQueue:
        loop = asyncio.get_running_loop()
        self._seq += 1
        wid = self._seq
        w = WatchQueue(prefix, lambda _w: self._unregister(wid))
        await self.thread.submit(lambda c: self._register(c, wid, w, loop), write=False)
        self._queues[wid] = w
        return w

    def join(self) -> None:
        """Be woken by the commits of this process's other stores on the file (and wake them)."""
        with _LOCAL_LOCK:
            _LOCAL.setdefault(self.path, weakref.WeakSet()).add(self)

    def leave(self) -> None:
        """The store is closing: no more wake-ups, and closed watches need not be unregistered."""
        self._left = True
        with _LOCAL_LOCK:
            local = _LOCAL.get(self.path)
            if local is not None:
                local.discard(self)
                if not local:
                    _LOCAL.pop(self.path, None)

    def end_all(self) -> None:
        """End every watch, after what it has queued (the store closed)."""
        for w in list(self._queues.values()):
            w.end()
        self._queues.clear()

    def _unregister(self, wid: int) -> None:
        self._queues.pop(wid, None)
        if not self._left:
            self.thread.post(lambda _c: self._filters.pop(wid, None))

    # -- on the store thread -----------------------------------------------------------------------------------

    def after_batch(self, conn: sqlite3.Connection, wrote: bool, poked: bool) -> None:
        if self._filters and (wrote or poked or time.monotonic() >= self._next_poll):
            self._poll(conn)
        if wrote:
            self._wake_others()

    def tick(self, conn: sqlite3.Connection, now: float) -> float:
        """The periodic work (pruning, polling); returns when it is next due (time.monotonic)."""
        if now >= self._next_prune:
            self._next_prune = now + self.PRUNE_INTERVAL_S
            self.thread.write_now(self.prune)
        deadline = self._next_prune
        if self._filters:
            if now >= self._next_poll:
                self._poll(conn)
            deadline = min(deadline, self._next_poll)
        return deadline

    def prune(self, conn: sqlite3.Connection) -> None:
        """In a write transaction: drop changes older than retention_s (ids stay unique: AUTOINCREMENT)."""
        cutoff = time.time() - self.retention_s
        row = conn.execute("SELECT id FROM changes WHERE ts >= ? ORDER BY id LIMIT 1", (cutoff,)).fetchone()
        if row is None:
            conn.execute("DELETE FROM changes WHERE ts < ?", (cutoff,))
        else:
            conn.execute("DELETE FROM changes WHERE id < ?", (row[0],))

    def _wake_others(self) -> None:
        with _LOCAL_LOCK:
            local = list(_LOCAL.get(self.path, ()))
        for other in local:
            if other is not self and other._filters:
                other.thread.poke()

    def _register(self, conn: sqlite3.Connection, wid: int, w: WatchQueue, loop: asyncio.AbstractEventLoop) -> None:
        # The newest change id now: the watch reports every change after it. Commits are serialized by the
        # write lock, so a change committed after this read always has a greater id.
        (start,) = conn.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)"
        ).fetchone()
        if not self._filters:
            self._cursor = start
        self._filters[wid] = (_WatchFilter(w.prefix, start), loop, w)
        self._cursor = min(self._cursor, start)
        self._next_poll = time.monotonic() + self.POLL_S

    def _poll(self, conn: sqlite3.Connection) -> None:
        self._next_poll = time.monotonic() + self.POLL_S
        while True:
            try:
                rows = conn.execute(
                    "SELECT id, key, type, range_end FROM changes WHERE id > ? ORDER BY id LIMIT ?",
                    (self._cursor, _POLL_ROWS),
                ).fetchall()
            except sqlite3.Error as e:
                log.warning("metadata watch poll: %s", e)
                return
            if not rows:
                return
            out: dict[int, list[Notification]] = {}
            for cid, key, type_, range_end in rows:
                for wid, (flt, _loop, _w) in self._filters.items():
                    if flt.matches(cid, key, type_, range_end):
                        out.setdefault(wid, []).append(
                            Notification(
                                key=key,
                                type=NotificationType(type_),
                                version=cid if type_ in (_CREATED, _MODIFIED) else None,
                                key_range_end=range_end,
                            )
                        )
            self._cursor = rows[-1][0]
            for wid, notes in out.items():
                _flt, loop, w = self._filters[wid]
                self.thread.call_on_loop(loop, w.push_many, notes)
            if len(rows) < _POLL_ROWS:
                return
