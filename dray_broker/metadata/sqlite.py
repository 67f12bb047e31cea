"""The embedded metadata store: one SQLite file, shared safely by several processes on one machine.

Layout:
- kv: one row per key, with `sk` = hierarchical_sort_key(key) as the unique, indexed sort column, so ranges and
  floor/ceiling/lower/higher follow Oxia's hierarchical order exactly. `session_id` marks ephemeral keys.
- changes: an append-only log of every modification (AUTOINCREMENT id, so ids are never reused). The id of the
  change row written in the same transaction is the key's new version: versions are global and monotonic across
  keys and processes. Watches read this log; entries older than about an hour are pruned.
- sessions: one row per live session with an expiry time, refreshed every timeout/3. Any live store's reaper
  removes the ephemeral keys of expired sessions (with DELETED notifications).

Sessions: a thread of their own with a connection of their own keeps the session alive, so a keepalive never
waits behind the store's queued writes (only behind SQLite's write lock, held for one transaction at a time). When
the keepalive finds its session gone (reaped by any store) or cannot refresh it before it expires (the file was
locked, the process stalled), the generation ends (SessionLife); the thread then removes what is left of it and
opens the next session at once.

Concurrency: every other SQLite call runs on one dedicated thread per store (the event loop never blocks on SQLite).
Writes use BEGIN IMMEDIATE with a busy timeout; writes queued while the thread is busy share one transaction
(group commit), each with its own condition check and savepoint, so one failing op never affects another (as an
Oxia write request: one unit, conditions per operation, no rollback of the others).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import random
import sqlite3
import threading
import time
import weakref
from typing import Any, Callable, Sequence

from dray_broker.metadata.base import (
    MUST_NOT_EXIST,
    Comparison,
    Entry,
    KeyNotFoundError,
    MetadataError,
    MetadataStore,
    Notification,
    NotificationType,
    SequentialPut,
    SessionExpiredError,
    SessionLife,
    VersionMismatchError,
    Watch,
    hierarchical_sort_key,
    parse_sequence_key,
    sequence_key,
)

log = logging.getLogger(__name__)

_MAX_SEQUENCE = 2**64 - 1  # as Oxia: sums are uint64, printed with %020d
_BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    id INTEGER PRIMARY KEY,
    sk BLOB NOT NULL UNIQUE,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    session_id INTEGER
);
CREATE INDEX IF NOT EXISTS kv_session ON kv (session_id) WHERE session_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    type INTEGER NOT NULL,
    range_end TEXT,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    expires_at REAL NOT NULL,
    timeout_ms INTEGER NOT NULL,
    pid INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_at);
"""

_CREATED = NotificationType.CREATED.value
_MODIFIED = NotificationType.MODIFIED.value
_DELETED = NotificationType.DELETED.value
_RANGE_DELETED = NotificationType.RANGE_DELETED.value


def _checked_deltas(deltas: Sequence[int]) -> list[int]:
    deltas = [int(d) for d in deltas]
    if not deltas:
        raise ValueError("put_sequential needs at least one delta")
    if deltas[0] <= 0 or any(d < 0 for d in deltas):
        raise ValueError(f"put_sequential deltas must be >= 0 and the first > 0: {deltas}")
    return deltas


def _prefix_successor(b: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with b (None: no bound)."""
    b = b.rstrip(b"\xff")
    if not b:
        return None
    return b[:-1] + bytes([b[-1] + 1])


def _prefix_intervals(prefix: str) -> list[tuple[bytes, bytes | None]]:
    """The sort-key intervals [lo, hi) that hold exactly the keys starting with prefix (hierarchical order).

    A key starting with 'd1/d2/s' continues the segment s either as its final segment or as a directory: two
    contiguous intervals."""
    parts = prefix.encode().split(b"/")
    dirs = b"".join(b"\x01" + p + b"\x00" for p in parts[:-1])
    out = []
    for marker in (b"\x00", b"\x01"):
        lo = dirs + marker + parts[-1]
        out.append((lo, _prefix_successor(lo)))
    return out


class _WatchFilter:
    __slots__ = ("prefix", "start", "intervals")

    def __init__(self, prefix: str, start: int) -> None:
        self.prefix = prefix
        self.start = start
        self.intervals = _prefix_intervals(prefix)

    def matches(self, change_id: int, key: str, type_: int, range_end: str | None) -> bool:
        if change_id <= self.start:
            return False
        if type_ != _RANGE_DELETED:
            return key.startswith(self.prefix)
        lo_r, hi_r = hierarchical_sort_key(key), hierarchical_sort_key(range_end or "")
        return any((hi is None or lo_r < hi) and lo < hi_r for lo, hi in self.intervals)


class _SqliteWatch(Watch):
    def __init__(self, store: "SqliteMetadataStore", watch_id: int) -> None:
        self._store = store
        self._id = watch_id
        self._items: collections.deque[Notification] = collections.deque()
        self._event = asyncio.Event()
        self._closed = False  # aclose(): stop at once
        self._ended = False  # the store closed: stop after what is queued

    def _push(self, notes: list[Notification]) -> None:
        if not self._closed:
            self._items.extend(notes)
            self._event.set()

    def _end(self) -> None:
        self._ended = True
        self._event.set()

    async def __anext__(self) -> Notification:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._items:
                return self._items.popleft()
            if self._ended:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        self._event.set()
        self._store._unregister_watch(self._id)


class _Op:
    __slots__ = ("fn", "write", "fut", "loop")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], write: bool, fut, loop) -> None:
        self.fn = fn
        self.write = write
        self.fut = fut
        self.loop = loop


_STOP = object()
_POLL = object()

# Stores of this process by database file: a commit in one wakes the watch pollers of the others at once.
_LOCAL_STORES: dict[str, "weakref.WeakSet[SqliteMetadataStore]"] = {}
_LOCAL_LOCK = threading.Lock()


def _begin_immediate(conn: sqlite3.Connection, wait_s: float) -> None:
    """BEGIN IMMEDIATE, waiting up to wait_s for another connection's write lock with short sleeps.

    SQLite's own busy handler backs off to 100 ms sleeps, which caps the write rate of several processes sharing
    the file (and starves a rare writer, such as a keepalive, among busy ones); here each retry waits a few ms."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + wait_s
        delay = 0.0002
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.004)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")


def _deliver(results: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for fut, result, exc in results:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class SqliteMetadataStore(MetadataStore):
    WATCH_POLL_S = 0.03  # how often other processes' changes are looked for while watches exist
    REAPER_INTERVAL_S = 0.25  # how often expired sessions are looked for
    PRUNE_INTERVAL_S = 60.0
    CHANGE_RETENTION_S = 3600.0  # the change log (watch notifications) keeps about an hour, as Oxia
    BUSY_TIMEOUT_MS = _BUSY_TIMEOUT_MS
    MAX_GROUP = 256  # ops per group-commit transaction

    def __init__(self, path: str, session_timeout_ms: int) -> None:
        self._path = path
        self._timeout_s = session_timeout_ms / 1000.0
        self._timeout_ms = session_timeout_ms
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self.session = SessionLife()
        self._session_id: int | None = None  # of the live generation, on the event loop (None: none is live)
        self._closed = False
        # The session thread's own view: the generation it keeps alive, its row and expiry, and rows of ended
        # generations whose keys it removes when it opens the next one.
        self._session_thread: threading.Thread | None = None
        self._session_wake = threading.Event()
        self._keepalive_waiting = threading.Event()  # the session thread wants the write lock: writes wait
        self._session_stop = False
        self._t_generation = 0
        self._t_session_id: int | None = None
        self._t_expires_at = 0.0
        self._t_ended: list[int] = []
        self._t_renew_failures = 0
        # Watch state, touched only by the store thread (except _watch_objs, touched only by the loop).
        self._watch_filters: dict[int, tuple[_WatchFilter, asyncio.AbstractEventLoop, _SqliteWatch]] = {}
        self._watch_seq = 0
        self._cursor = 0
        self._watch_objs: dict[int, _SqliteWatch] = {}
        self._next_reap = 0.0
        self._next_prune = 0.0
        self._next_poll = 0.0
        self._thread_exited: asyncio.Future | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str, *, session_timeout_ms: int = 10_000) -> "SqliteMetadataStore":
        if session_timeout_ms <= 0:
            raise ValueError("session_timeout_ms must be positive")
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        store = cls(path, session_timeout_ms)
        loop = asyncio.get_running_loop()
        store._thread_exited = loop.create_future()
        ready: asyncio.Future = loop.create_future()
        store._thread = threading.Thread(
            target=store._thread_main, args=(loop, ready), name=f"dray-sqlite-meta:{os.path.basename(path)}", daemon=True
        )
        store._thread.start()
        await ready  # the connection is open and the schema exists (or the error is raised here)
        try:
            sid, expires_at = await store._submit(store._op_create_session, write=True)
        except BaseException:
            await store._stop_thread()
            raise
        with _LOCAL_LOCK:
            _LOCAL_STORES.setdefault(path, weakref.WeakSet()).add(store)
        store._t_generation, store._t_session_id, store._t_expires_at = 1, sid, expires_at
        store._session_began(1, sid)
        store._session_thread = threading.Thread(
            target=store._session_main, args=(loop,), name=f"dray-sqlite-session:{os.path.basename(path)}",
            daemon=True)
        store._session_thread.start()
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._session_thread is not None:
            self._session_stop = True
            self._session_wake.set()
            await asyncio.get_running_loop().run_in_executor(None, self._session_thread.join)
        self.session.close()
        with _LOCAL_LOCK:
            stores = _LOCAL_STORES.get(self._path)
            if stores is not None:
                stores.discard(self)
                if not stores:
                    _LOCAL_STORES.pop(self._path, None)
        sessions = [*self._t_ended, *([self._t_session_id] if self._t_session_id is not None else [])]
        try:
            if sessions:
                await self._submit(lambda c: self._op_close_sessions(c, sessions), write=True, allow_closed=True)
        except MetadataError as e:
            log.warning("closing metadata sessions %s failed: %s", sessions, e)
        finally:
            await self._stop_thread()
            for w in list(self._watch_objs.values()):
                w._end()
            self._watch_objs.clear()

    async def _stop_thread(self) -> None:
        self._q.put(_STOP)
        if self._thread_exited is not None:
            await self._thread_exited

    # ------------------------------------------------------------------ the store thread

    def _thread_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future) -> None:
        try:
            self._conn = self._connect()
        except BaseException as e:  # noqa: BLE001 - reported to open()
            err = MetadataError(f"cannot open metadata database {self._path}: {e}")
            loop.call_soon_threadsafe(lambda: ready.done() or ready.set_exception(err))
            loop.call_soon_threadsafe(lambda: self._thread_exited.done() or self._thread_exited.set_result(None))
            return
        loop.call_soon_threadsafe(lambda: ready.done() or ready.set_result(None))
        try:
            self._serve()
        finally:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            try:
                loop.call_soon_threadsafe(
                    lambda: self._thread_exited.done() or self._thread_exited.set_result(None)
                )
            except RuntimeError:  # the loop is closed
                pass

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=self.BUSY_TIMEOUT_MS / 1000.0, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.BUSY_TIMEOUT_MS)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise MetadataError(f"cannot put {self._path} in WAL mode (got {mode})")
        # A produce is acked once its index entry is committed, so a commit must survive a power loss as it does
        # on Oxia: synchronous=FULL fsyncs the WAL file at every commit (NORMAL would only keep the file
        # consistent, losing the last commits). Group commit shares one fsync among the writes queued meanwhile.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return conn

    def _serve(self) -> None:
        while True:
            try:
                timeout = self._run_timers()
            except Exception:  # noqa: BLE001 - keep serving
                log.exception("metadata store thread: periodic work failed")
                timeout = self.REAPER_INTERVAL_S
            try:
                item = self._q.get(timeout=timeout)
            except queue.Empty:
                continue
            batch = [item]
            while len(batch) < self.MAX_GROUP:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            try:
                if self._serve_batch(batch):
                    return
            except Exception as e:  # noqa: BLE001 - a bug: fail what is unanswered, keep serving
                log.exception("metadata store thread failed on a batch")
                err = MetadataError(f"sqlite metadata store: internal error: {e!r}")
                pending: dict = {}
                for it in batch:
                    if isinstance(it, _Op):
                        self._add_result(pending, it, None, err)
                for loop, results in pending.items():
                    try:
                        loop.call_soon_threadsafe(_deliver, results)
                    except RuntimeError:
                        pass
                if any(it is _STOP for it in batch):
                    return

    def _serve_batch(self, batch: list) -> bool:
        """Run one batch of queued items; return whether the store is stopping."""
        stop = False
        pending: dict[asyncio.AbstractEventLoop, list] = {}
        wrote = False
        poll = False
        i = 0
        while i < len(batch):
            it = batch[i]
            if it is _STOP:
                stop = True
                i += 1
                continue
            if it is _POLL:
                poll = True
                i += 1
                continue
            if stop:  # ops queued after close: refuse them
                self._add_result(pending, it, None, MetadataError("the metadata store is closed"))
                i += 1
                continue
            if it.write:
                j = i
                while j < len(batch) and isinstance(batch[j], _Op) and batch[j].write:
                    j += 1
                if self._run_writes(batch[i:j], pending):
                    wrote = True
                i = j
            else:
                try:
                    res, exc = it.fn(self._conn), None
                except MetadataError as e:
                    res, exc = None, e
                except sqlite3.Error as e:
                    res, exc = None, MetadataError(f"sqlite: {e}")
                except Exception as e:  # noqa: BLE001 - a bug; the caller sees it
                    res, exc = None, e
                self._add_result(pending, it, res, exc)
                i += 1
        # Notifications first, then results: when `await put()` returns, local watches already hold it.
        if self._watch_filters and (wrote or poll or time.monotonic() >= self._next_poll):
            self._poll_changes()
        if wrote:
            self._wake_siblings()
        for loop, results in pending.items():
            try:
                loop.call_soon_threadsafe(_deliver, results)
            except RuntimeError:
                pass
        return stop

    @staticmethod
    def _add_result(pending: dict, op: _Op, res: Any, exc: BaseException | None) -> None:
        if op.fut is not None:
            pending.setdefault(op.loop, []).append((op.fut, res, exc))

    def _run_writes(self, ops: list[_Op], pending: dict) -> bool:
        """Run ops in one transaction, each in a savepoint; deliver results only once committed."""
        conn = self._conn
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            self._begin_immediate()
        except sqlite3.Error as e:
            err = MetadataError(f"sqlite: cannot begin a write transaction: {e}")
            for op in ops:
                self._add_result(pending, op, None, err)
            return False
        try:
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    res = op.fn(conn)
                except BaseException as e:  # noqa: BLE001
                    if not conn.in_transaction:
                        raise
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if isinstance(e, sqlite3.Error):
                        e = MetadataError(f"sqlite: {e}")
                    results.append((op, None, e))
                else:
                    conn.execute("RELEASE op")
                    results.append((op, res, None))
            conn.execute("COMMIT")
        except BaseException as e:  # noqa: BLE001 - the whole group failed: nothing was applied
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = MetadataError(f"sqlite: write transaction failed: {e}")
            for op in ops:
                self._add_result(pending, op, None, err)
            return False
        for op, res, exc in results:
            self._add_result(pending, op, res, exc)
        return True

    def _begin_immediate(self) -> None:
        """BEGIN IMMEDIATE for the store's writes; a keepalive waiting for the lock goes first."""
        deadline = time.monotonic() + self.BUSY_TIMEOUT_MS / 1000.0
        while self._keepalive_waiting.is_set() and time.monotonic() < deadline:
            time.sleep(0.0005)
        _begin_immediate(self._conn, self.BUSY_TIMEOUT_MS / 1000.0)

    def _run_internal_write(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        pending: dict = {}
        self._run_writes([_Op(fn, True, None, None)], pending)

    def _run_timers(self) -> float:
        """Periodic work of the store thread; returns how long the thread may wait for the next op."""
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + self.REAPER_INTERVAL_S
            try:
                expired = self._conn.execute(
                    "SELECT id FROM sessions WHERE expires_at < ? LIMIT 100", (time.time(),)
                ).fetchall()
                if expired:
                    self._run_internal_write(lambda c: self._reap(c, [r[0] for r in expired]))
            except sqlite3.Error as e:
                log.warning("metadata session reaper: %s", e)
        if now >= self._next_prune:
            self._next_prune = now + self.PRUNE_INTERVAL_S
            self._run_internal_write(self._prune)
        deadline = self._next_reap
        if self._watch_filters:
            if now >= self._next_poll:
                self._poll_changes()
            deadline = min(deadline, self._next_poll)
        return max(0.0, deadline - time.monotonic())

    def _wake_siblings(self) -> None:
        with _LOCAL_LOCK:
            stores = list(_LOCAL_STORES.get(self._path, ()))
        for s in stores:
            if s is not self and s._watch_filters:
                s._q.put(_POLL)

    # ------------------------------------------------------------------ watches (store thread)

    def _poll_changes(self) -> None:
        self._next_poll = time.monotonic() + self.WATCH_POLL_S
        conn = self._conn
        while True:
            try:
                rows = conn.execute(
                    "SELECT id, key, type, range_end FROM changes WHERE id > ? ORDER BY id LIMIT 2000",
                    (self._cursor,),
                ).fetchall()
            except sqlite3.Error as e:
                log.warning("metadata watch poll: %s", e)
                return
            if not rows:
                return
            out: dict[int, list[Notification]] = {}
            for cid, key, type_, range_end in rows:
                for wid, (flt, _loop, _w) in self._watch_filters.items():
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
                _flt, loop, w = self._watch_filters[wid]
                try:
                    loop.call_soon_threadsafe(w._push, notes)
                except RuntimeError:
                    pass
            if len(rows) < 2000:
                return

    def _op_register_watch(self, w: _SqliteWatch, prefix: str, loop: asyncio.AbstractEventLoop) -> None:
        # The newest change id now: the watch reports every change after it. Commits are serialized by the
        # write lock, so a change committed after this read always has a greater id.
        (start,) = self._conn.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)"
        ).fetchone()
        if not self._watch_filters:
            self._cursor = start
        self._watch_filters[w._id] = (_WatchFilter(prefix, start), loop, w)
        self._cursor = min(self._cursor, start)
        self._next_poll = time.monotonic() + self.WATCH_POLL_S

    def _unregister_watch(self, wid: int) -> None:
        self._watch_objs.pop(wid, None)
        if self._closed:
            return
        self._q.put(_Op(lambda _c: self._watch_filters.pop(wid, None), False, None, None))

    # ------------------------------------------------------------------ sessions (store thread)

    def _op_create_session(self, conn: sqlite3.Connection) -> tuple[int, float]:
        """(session id, expiry time) of a new session row."""
        now = time.time()
        cur = conn.execute(
            "INSERT INTO sessions (expires_at, timeout_ms, pid, created_at) VALUES (?, ?, ?, ?)",
            (now + self._timeout_s, self._timeout_ms, os.getpid(), now),
        )
        return cur.lastrowid, now + self._timeout_s

    def _op_close_sessions(self, conn: sqlite3.Connection, session_ids: list[int]) -> None:
        for sid in session_ids:
            self._delete_session_keys(conn, sid)
            conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))

    def _reap(self, conn: sqlite3.Connection, session_ids: list[int]) -> None:
        now = time.time()
        for sid in session_ids:
            row = conn.execute("SELECT expires_at FROM sessions WHERE id = ?", (sid,)).fetchone()
            if row is None or row[0] >= now:
                continue  # gone already, or refreshed since we looked
            n = self._delete_session_keys(conn, sid)
            conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))
            if sid == self._t_session_id:
                self._session_wake.set()  # our own: the session thread ends its generation now
            log.info("metadata session %s expired: removed %d ephemeral keys", sid, n)

    def _delete_session_keys(self, conn: sqlite3.Connection, sid: int) -> int:
        rows = conn.execute("SELECT id, key FROM kv WHERE session_id = ? ORDER BY sk", (sid,)).fetchall()
        now = time.time()
        for rid, key in rows:
            conn.execute("DELETE FROM kv WHERE id = ?", (rid,))
            conn.execute("INSERT INTO changes (key, type, ts) VALUES (?, ?, ?)", (key, _DELETED, now))
        return len(rows)

    def _prune(self, conn: sqlite3.Connection) -> None:
        cutoff = time.time() - self.CHANGE_RETENTION_S
        row = conn.execute("SELECT id FROM changes WHERE ts >= ? ORDER BY id LIMIT 1", (cutoff,)).fetchone()
        if row is None:
            conn.execute("DELETE FROM changes WHERE ts < ?", (cutoff,))
        else:
            conn.execute("DELETE FROM changes WHERE id < ?", (row[0],))

    # ------------------------------------------------------------------ submitting ops

    def _submit(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool, allow_closed: bool = False):
        if self._closed and not allow_closed:
            raise MetadataError("the metadata store is closed")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put(_Op(fn, write, fut, loop))
        return fut

    # ------------------------------------------------------------------ the session thread

    def _session_began(self, generation: int, session_id: int) -> None:  # on the event loop
        if self.session.closed:
            return
        self._session_id = session_id
        self.session.begin(generation)

    def _session_ended(self, generation: int, reason: str) -> None:  # on the event loop
        if self.session.generation == generation:
            self._session_id = None
        self.session.end(generation, reason)

    def _session_main(self, loop: asyncio.AbstractEventLoop) -> None:
        conn: sqlite3.Connection | None = None
        while not self._session_stop:
            self._session_wake.clear()
            try:
                if conn is None:
                    conn = sqlite3.connect(self._path, isolation_level=None)
                    # A lost session row costs nothing after a power loss (every session is over then): no fsync.
                    conn.execute("PRAGMA synchronous = NORMAL")
                wait = self._session_step(conn, loop)
            except Exception:  # noqa: BLE001 - keep the session thread alive; retry soon
                log.exception("metadata session thread failed")
                wait = 0.5
            self._session_wake.wait(wait)
        if conn is not None:
            conn.close()

    def _session_step(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> float:
        """Keep the session alive, or end its generation and open the next; returns how long to wait."""
        interval = self._timeout_s / 3.0
        if self._t_session_id is None:
            try:
                sid, expires_at = self._write_session(conn, interval, self._op_renew_session)
            except sqlite3.Error as e:
                log.log(logging.INFO if self._t_renew_failures else logging.WARNING,
                        "metadata session: cannot open a new one yet (retrying): %s", e)
                self._t_renew_failures += 1
                return min(interval, 0.5)
            self._t_renew_failures = 0
            self._t_ended.clear()
            self._t_generation += 1
            self._t_session_id, self._t_expires_at = sid, expires_at
            self._call_loop(loop, self._session_began, self._t_generation, sid)
            return interval
        try:
            expires_at = self._write_session(conn, max(0.05, min(interval, self._t_expires_at - time.time())),
                                             self._op_keepalive)
            alive = expires_at is not None
            if alive:
                self._t_expires_at = expires_at
            reason = "the store dropped it (it expired while this process or the store stalled)"
        except sqlite3.Error as e:
            if time.time() < self._t_expires_at:
                log.info("metadata session %s keepalive failed, retrying: %s", self._t_session_id, e)
                return min(interval, 0.25)
            alive, reason = False, f"no keepalive got through within the session timeout ({e})"
        if alive:
            return interval
        self._t_ended.append(self._t_session_id)
        self._t_session_id = None
        self._call_loop(loop, self._session_ended, self._t_generation, reason)
        return 0.0

    def _write_session(self, conn: sqlite3.Connection, wait_s: float, fn: Callable[[sqlite3.Connection], Any]):
        """fn in one write transaction, waiting at most wait_s for the write lock (ahead of this store's writes)."""
        self._keepalive_waiting.set()
        try:
            _begin_immediate(conn, wait_s)
        finally:
            self._keepalive_waiting.clear()
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _op_keepalive(self, conn: sqlite3.Connection) -> float | None:
        """The session's new expiry time; None if it is gone (or expired: nobody may revive it)."""
        now = time.time()
        cur = conn.execute(
            "UPDATE sessions SET expires_at = ? WHERE id = ? AND expires_at >= ?",
            (now + self._timeout_s, self._t_session_id, now),
        )
        return now + self._timeout_s if cur.rowcount else None

    def _op_renew_session(self, conn: sqlite3.Connection) -> tuple[int, float]:
        """Remove what is left of ended generations (any reaper would) and open a new session."""
        self._op_close_sessions(conn, self._t_ended)
        return self._op_create_session(conn)

    @staticmethod
    def _call_loop(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed
            pass

    # ------------------------------------------------------------------ the interface

    async def get(
        self, key: str, comparison: Comparison = Comparison.EQUAL, *, partition_key: str | None = None
    ) -> Entry | None:
        sk = hierarchical_sort_key(key)
        if comparison is Comparison.EQUAL:
            sql = "SELECT key, value, version, session_id FROM kv WHERE sk = ?"
        elif comparison is Comparison.FLOOR:
            sql = "SELECT key, value, version, session_id FROM kv WHERE sk <= ? ORDER BY sk DESC LIMIT 1"
        elif comparison is Comparison.CEILING:
            sql = "SELECT key, value, version, session_id FROM kv WHERE sk >= ? ORDER BY sk LIMIT 1"
        elif comparison is Comparison.LOWER:
            sql = "SELECT key, value, version, session_id FROM kv WHERE sk < ? ORDER BY sk DESC LIMIT 1"
        elif comparison is Comparison.HIGHER:
            sql = "SELECT key, value, version, session_id FROM kv WHERE sk > ? ORDER BY sk LIMIT 1"
        else:
            raise ValueError(f"unknown comparison {comparison!r}")

        def op(conn: sqlite3.Connection) -> Entry | None:
            row = conn.execute(sql, (sk,)).fetchone()
            if row is None:
                return None
            return Entry(row[0], bytes(row[1]), row[2], row[3] is not None)

        return await self._submit(op, write=False)

    @staticmethod
    def _log_change(conn: sqlite3.Connection, key: str, type_: int, range_end: str | None = None) -> int:
        return conn.execute(
            "INSERT INTO changes (key, type, range_end, ts) VALUES (?, ?, ?, ?)", (key, type_, range_end, time.time())
        ).lastrowid

    def _write_key(self, conn: sqlite3.Connection, key: str, sk: bytes, value: bytes, existed: bool, sid) -> int:
        version = self._log_change(conn, key, _MODIFIED if existed else _CREATED)
        conn.execute(
            "INSERT INTO kv (sk, key, value, version, session_id) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (sk) DO UPDATE SET value = excluded.value, version = excluded.version, "
            "session_id = excluded.session_id",
            (sk, key, value, version, sid),
        )
        return version

    def _check_session(self, conn: sqlite3.Connection, sid: int, generation: int) -> None:
        """In the write transaction: the session sid (of that generation) is still alive."""
        row = conn.execute("SELECT expires_at FROM sessions WHERE id = ?", (sid,)).fetchone()
        if row is None or row[0] < time.time():
            self._session_wake.set()  # the session thread finds out and ends the generation
            raise SessionExpiredError(f"metadata session {sid} (generation {generation}) expired")

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None = None,
        ephemeral: bool = False,
        session: int | None = None,
        partition_key: str | None = None,
    ) -> Entry:
        value = bytes(value)
        sk = hierarchical_sort_key(key)
        sid = None
        if ephemeral:
            generation = self.session.require(session)
            sid = self._session_id

        def op(conn: sqlite3.Connection) -> Entry:
            row = conn.execute("SELECT version FROM kv WHERE sk = ?", (sk,)).fetchone()
            if expected_version is not None:
                if row is None:
                    if expected_version != MUST_NOT_EXIST:
                        raise KeyNotFoundError(f"{key}: expected version {expected_version}, key not found")
                elif row[0] != expected_version:
                    raise VersionMismatchError(
                        f"{key}: expected version {expected_version}, found {row[0]}"
                        if expected_version != MUST_NOT_EXIST
                        else f"{key}: exists (version {row[0]})"
                    )
            if sid is not None:
                self._check_session(conn, sid, generation)
            version = self._write_key(conn, key, sk, value, row is not None, sid)
            return Entry(key, value, version, ephemeral)

        return await self._submit(op, write=True)

    async def put_sequential(
        self, prefix: str, value: bytes, deltas: Sequence[int], *, partition_key: str
    ) -> Entry:
        deltas = _checked_deltas(deltas)
        value = bytes(value)
        return await self._submit(lambda conn: self._append_sequential(conn, prefix, value, deltas), write=True)

    async def put_sequential_batch(self, puts: Sequence[SequentialPut]) -> list[Entry | Exception]:
        """One write op: the puts share a transaction. A put the store refuses fails alone (it is refused before
        it writes); an SQLite error fails the whole batch, as it fails a transaction."""
        results: list[Entry | Exception | None] = []
        todo: list[tuple[int, str, bytes, list[int]]] = []
        for i, p in enumerate(puts):
            try:
                todo.append((i, p.prefix, bytes(p.value), _checked_deltas(p.deltas)))
                results.append(None)
            except ValueError as e:
                results.append(e)

        def op(conn: sqlite3.Connection) -> None:
            for i, prefix, value, deltas in todo:
                try:
                    results[i] = self._append_sequential(conn, prefix, value, deltas)
                except MetadataError as e:
                    results[i] = e

        if todo:
            try:
                await self._submit(op, write=True)
            except MetadataError as e:
                for i, *_ in todo:
                    results[i] = e
        return results  # type: ignore[return-value]

    def _append_sequential(self, conn: sqlite3.Connection, prefix: str, value: bytes, deltas: list[int]) -> Entry:
        """Raises MetadataError before it writes anything."""
        lo = hierarchical_sort_key(prefix + "-")
        hi = hierarchical_sort_key(sequence_key(prefix, [_MAX_SEQUENCE]))
        last: list[int] = []
        for (k,) in conn.execute("SELECT key FROM kv WHERE sk >= ? AND sk < ? ORDER BY sk DESC", (lo, hi)):
            parsed = parse_sequence_key(prefix, k)
            if parsed is not None:
                last = parsed
                break
        if len(last) > len(deltas):
            raise MetadataError(
                f"put_sequential {prefix}: the newest key has {len(last)} sums, got {len(deltas)} deltas"
            )
        sums = [(last[i] if i < len(last) else 0) + d for i, d in enumerate(deltas)]
        if any(s > _MAX_SEQUENCE for s in sums):
            raise MetadataError(f"put_sequential {prefix}: sequence overflow")
        key = sequence_key(prefix, sums)
        # A new key: it sorts after the newest sequence key, the greatest under the prefix that parses.
        version = self._write_key(conn, key, hierarchical_sort_key(key), value, False, None)
        return Entry(key, value, version, False)

    async def delete(
        self, key: str, *, expected_version: int | None = None, partition_key: str | None = None
    ) -> bool:
        sk = hierarchical_sort_key(key)

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT id, version FROM kv WHERE sk = ?", (sk,)).fetchone()
            if expected_version is not None:
                if row is None:
                    if expected_version != MUST_NOT_EXIST:
                        raise KeyNotFoundError(f"{key}: expected version {expected_version}, key not found")
                elif row[1] != expected_version:
                    raise VersionMismatchError(f"{key}: expected version {expected_version}, found {row[1]}")
            if row is None:
                return False
            conn.execute("DELETE FROM kv WHERE id = ?", (row[0],))
            self._log_change(conn, key, _DELETED)
            return True

        return await self._submit(op, write=True)

    async def delete_range(self, start: str, end: str, *, partition_key: str | None = None) -> None:
        lo, hi = hierarchical_sort_key(start), hierarchical_sort_key(end)

        def op(conn: sqlite3.Connection) -> None:
            if lo >= hi:
                return
            n = conn.execute("DELETE FROM kv WHERE sk >= ? AND sk < ?", (lo, hi)).rowcount
            if n:
                self._log_change(conn, start, _RANGE_DELETED, end)

        await self._submit(op, write=True)

    async def list(self, start: str, end: str, *, partition_key: str | None = None) -> list[str]:
        lo, hi = hierarchical_sort_key(start), hierarchical_sort_key(end)

        def op(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT key FROM kv WHERE sk >= ? AND sk < ? ORDER BY sk", (lo, hi))]

        return await self._submit(op, write=False)

    async def range_scan(self, start: str, end: str, *, partition_key: str | None = None) -> list[Entry]:
        lo, hi = hierarchical_sort_key(start), hierarchical_sort_key(end)

        def op(conn: sqlite3.Connection) -> list[Entry]:
            return [
                Entry(k, bytes(v), ver, sid is not None)
                for k, v, ver, sid in conn.execute(
                    "SELECT key, value, version, session_id FROM kv WHERE sk >= ? AND sk < ? ORDER BY sk", (lo, hi)
                )
            ]

        return await self._submit(op, write=False)

    async def watch(self, prefix: str) -> Watch:
        loop = asyncio.get_running_loop()
        self._watch_seq += 1
        w = _SqliteWatch(self, self._watch_seq)
        await self._submit(lambda _c: self._op_register_watch(w, prefix, loop), write=False)
        self._watch_objs[w._id] = w
        return w

    # ------------------------------------------------------------------ introspection (tests, tools)

    @property
    def session_id(self) -> int | None:
        return self._session_id

    @property
    def path(self) -> str:
        return self._path
