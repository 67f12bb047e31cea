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
import logging
import os
import sqlite3
import threading
import time
from typing import Any, Callable, Sequence

from dray_broker.metadata.base import (
    MUST_NOT_EXIST,
    Comparison,
    Entry,
    KeyNotFoundError,
    MetadataError,
    MetadataStore,
    NotificationType,
    SequentialPut,
    SessionExpiredError,
    SessionLife,
    VersionMismatchError,
    Watch,
)
from dray_broker.metadata.keys import hierarchical_sort_key
from dray_broker.metadata.sqlite import schema
from dray_broker.metadata.sqlite.thread import StoreThread
from dray_broker.metadata.sqlite.watches import Watches
from dray_broker.metadata.sequence import (
    MAX_SUM,
    check_sequential,
    check_sums_covered,
    newest_key_bound,
    sequence_key,
    sums_of_newest,
)

log = logging.getLogger("dray_broker.metadata.sqlite")

_CREATED = NotificationType.CREATED.value
_MODIFIED = NotificationType.MODIFIED.value
_DELETED = NotificationType.DELETED.value
_RANGE_DELETED = NotificationType.RANGE_DELETED.value


class SqliteMetadataStore(MetadataStore):
    REAPER_INTERVAL_S = 0.25  # how often expired sessions are looked for

    def __init__(self, path: str, session_timeout_ms: int) -> None:
        self._path = path
        self._timeout_s = session_timeout_ms / 1000.0
        self._timeout_ms = session_timeout_ms
        self.thread = StoreThread(path, periodic=self._run_timers, after_batch=self._after_batch)
        self.watches = Watches(path, self.thread)
        self.session = SessionLife()
        self._session_id: int | None = None  # of the live generation, on the event loop (None: none is live)
        self._closed = False
        # The session thread's own view: the generation it keeps alive, its row and expiry, and rows of ended
        # generations whose keys it removes when it opens the next one.
        self._session_thread: threading.Thread | None = None
        self._session_wake = threading.Event()
        self._session_stop = False
        self._t_generation = 0
        self._t_session_id: int | None = None
        self._t_expires_at = 0.0
        self._t_ended: list[int] = []
        self._t_renew_failures = 0
        self._next_reap = 0.0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str, *, session_timeout_ms: int = 10_000) -> "SqliteMetadataStore":
        if session_timeout_ms <= 0:
            raise ValueError("session_timeout_ms must be positive")
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        store = cls(path, session_timeout_ms)
        loop = asyncio.get_running_loop()
        await store.thread.start()  # the connection is open and the schema exists (or the error is raised here)
        try:
            sid, expires_at = await store._submit(store._op_create_session, write=True)
        except BaseException:
            await store.thread.stop()
            raise
        store.watches.join()
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
        self.watches.leave()
        sessions = [*self._t_ended, *([self._t_session_id] if self._t_session_id is not None else [])]
        try:
            if sessions:
                await self._submit(lambda c: self._op_close_sessions(c, sessions), write=True, allow_closed=True)
        except MetadataError as e:
            log.warning("closing metadata sessions %s failed: %s", sessions, e)
        finally:
            await self.thread.stop()
            self.watches.end_all()

    def _after_batch(self, conn: sqlite3.Connection, wrote: bool, poked: bool) -> None:
        self.watches.after_batch(conn, wrote, poked)

    def _run_timers(self, conn: sqlite3.Connection) -> float:
        """Periodic work of the store thread; returns how long the thread may wait for the next op."""
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + self.REAPER_INTERVAL_S
            try:
                expired = conn.execute(
                    "SELECT id FROM sessions WHERE expires_at < ? LIMIT 100", (time.time(),)
                ).fetchall()
                if expired:
                    self.thread.write_now(lambda c: self._reap(c, [r[0] for r in expired]))
            except sqlite3.Error as e:
                log.warning("metadata session reaper: %s", e)
        deadline = min(self._next_reap, self.watches.tick(conn, now))
        return max(0.0, deadline - time.monotonic())

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

    # ------------------------------------------------------------------ submitting ops

    def _submit(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool, allow_closed: bool = False):
        if self._closed and not allow_closed:
            raise MetadataError("the metadata store is closed")
        return self.thread.submit(fn, write=write)

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
                    conn = schema.connect_for_sessions(self._path)
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
        self.thread.priority_writer.set()
        try:
            schema.begin_immediate(conn, wait_s)
        finally:
            self.thread.priority_writer.clear()
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

    def _write_key(self, conn: sqlite3.Connection, key: str, sk: bytes, value: bytes, existed: bool, sid) -> int:
        version = schema.log_change(conn, key, _MODIFIED if existed else _CREATED)
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
        deltas = check_sequential(prefix, deltas, partition_key)
        value = bytes(value)
        return await self._submit(lambda conn: self._append_sequential(conn, prefix, value, deltas), write=True)

    async def put_sequential_batch(self, puts: Sequence[SequentialPut]) -> list[Entry | Exception]:
        """One write op: the puts share a transaction. A put the store refuses fails alone (it is refused before
        it writes); an SQLite error fails the whole batch, as it fails a transaction."""
        results: list[Entry | Exception | None] = []
        todo: list[tuple[int, str, bytes, list[int]]] = []
        for i, p in enumerate(puts):
            try:
                todo.append((i, p.prefix, bytes(p.value), check_sequential(p.prefix, p.deltas, p.partition_key)))
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
        row = conn.execute(
            "SELECT key FROM kv WHERE sk >= ? AND sk < ? ORDER BY sk DESC LIMIT 1",
            (hierarchical_sort_key(prefix + "-"), hierarchical_sort_key(newest_key_bound(prefix))),
        ).fetchone()
        last = sums_of_newest(prefix, row[0] if row else None)
        check_sums_covered(prefix, len(last), deltas)
        sums = [(last[i] if i < len(last) else 0) + d for i, d in enumerate(deltas)]
        if any(s > MAX_SUM for s in sums):
            raise MetadataError(f"put_sequential {prefix}: sequence overflow")
        key = sequence_key(prefix, sums)
        # A new key: it sorts after the newest key under the prefix.
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
            schema.log_change(conn, key, _DELETED)
            return True

        return await self._submit(op, write=True)

    async def delete_range(self, start: str, end: str, *, partition_key: str | None = None) -> None:
        lo, hi = hierarchical_sort_key(start), hierarchical_sort_key(end)

        def op(conn: sqlite3.Connection) -> None:
            if lo >= hi:
                return
            n = conn.execute("DELETE FROM kv WHERE sk >= ? AND sk < ?", (lo, hi)).rowcount
            if n:
                schema.log_change(conn, start, _RANGE_DELETED, end)

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
        if self._closed:
            raise MetadataError("the metadata store is closed")
        return await self.watches.watch(prefix)

    # ------------------------------------------------------------------ introspection (tests, tools)

    @property
    def session_id(self) -> int | None:
        return self._session_id

    @property
    def path(self) -> str:
        return self._path
