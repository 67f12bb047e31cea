"""Sessions of the SQLite backend: a keepalive thread per store, and a reaper shared by every store on the file.

A session is a row of the `sessions` table with an expiry time; its ephemeral keys carry its id. A thread of its
own, with a connection of its own, refreshes the row every timeout/3, so a keepalive never waits behind the store's
queued writes (only behind SQLite's write lock, held for one transaction at a time, and the store thread lets it
go first). When the keepalive finds its row gone (reaped by any store) or cannot refresh it before it expires (the
file was locked, the process stalled), the generation ends (SessionLife); the thread then removes what is left of
it and opens the next session at once.

The reaper runs on the store thread of every open store: it removes the rows of expired sessions, whoever owned
them, with their ephemeral keys (each a DELETED change). An ephemeral put checks, in its write transaction, that
its session is alive, so a key never lands in a session that is over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from typing import Any, Callable

from dray_broker.metadata.base import MetadataError, NotificationType, SessionExpiredError, SessionLife
from dray_broker.metadata.sqlite import schema
from dray_broker.metadata.sqlite.thread import StoreThread

log = logging.getLogger("dray_broker.metadata.sqlite")

_DELETED = NotificationType.DELETED.value


def _call_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed
        pass


class Sessions:
    REAPER_INTERVAL_S = 0.25  # how often expired sessions are looked for

    def __init__(self, path: str, timeout_ms: int, store_thread: StoreThread, life: SessionLife) -> None:
        self.path = path
        self.life = life
        self.store_thread = store_thread
        self._timeout_ms = timeout_ms
        self._timeout_s = timeout_ms / 1000.0
        self._session_id: int | None = None  # of the live generation, on the event loop (None: none is live)
        self._next_reap = 0.0  # on the store thread
        # The session thread's own view: the generation it keeps alive, its row and expiry, and rows of ended
        # generations whose keys it removes when it opens the next one.
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = False
        self._t_generation = 0
        self._t_session_id: int | None = None
        self._t_expires_at = 0.0
        self._t_ended: list[int] = []
        self._t_renew_failures = 0

    # -- on the event loop -------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the first session (generation 1) and start its keepalive thread."""
        sid, expires_at = await self.store_thread.submit(self._create_row, write=True)
        self._t_generation, self._t_session_id, self._t_expires_at = 1, sid, expires_at
        self._began(1, sid)
        self._thread = threading.Thread(
            target=self._main, args=(asyncio.get_running_loop(),),
            name=f"dray-sqlite-session:{os.path.basename(self.path)}", daemon=True)
        self._thread.start()

    def require(self, generation: int | None) -> tuple[int, int | None]:
        """(live generation, its session row id) for an ephemeral put; SessionExpiredError as SessionLife."""
        return self.life.require(generation), self._session_id

    async def close(self) -> None:
        """Stop the keepalive, end the session and remove it with its ephemeral keys."""
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self.life.close()
        sessions = [*self._t_ended, *([self._t_session_id] if self._t_session_id is not None else [])]
        if sessions:
            try:
                await self.store_thread.submit(lambda c: self._close_rows(c, sessions), write=True, closing=True)
            except MetadataError as e:
                log.warning("closing metadata sessions %s failed: %s", sessions, e)

    def _began(self, generation: int, session_id: int) -> None:
        if self.life.closed:
            return
        self._session_id = session_id
        self.life.begin(generation)

    def _ended(self, generation: int, reason: str) -> None:
        if self.life.generation == generation:
            self._session_id = None
        self.life.end(generation, reason)

    # -- on the store thread -----------------------------------------------------------------------------------

    def check_alive(self, conn: sqlite3.Connection, sid: int, generation: int) -> None:
        """In a write transaction: the session sid (of that generation) is still alive, else SessionExpiredError."""
        row = conn.execute("SELECT expires_at FROM sessions WHERE id = ?", (sid,)).fetchone()
        if row is None or row[0] < time.time():
            self._wake.set()  # the session thread finds out and ends the generation
            raise SessionExpiredError(f"metadata session {sid} (generation {generation}) expired")

    def tick(self, conn: sqlite3.Connection, now: float) -> float:
        """Reap expired sessions when due; returns when it is next due (time.monotonic)."""
        if now >= self._next_reap:
            self._next_reap = now + self.REAPER_INTERVAL_S
            try:
                expired = conn.execute(
                    "SELECT id FROM sessions WHERE expires_at < ? LIMIT 100", (time.time(),)
                ).fetchall()
                if expired:
                    self.store_thread.write_now(lambda c: self._reap(c, [r[0] for r in expired]))
            except sqlite3.Error as e:
                log.warning("metadata session reaper: %s", e)
        return self._next_reap

    def _reap(self, conn: sqlite3.Connection, session_ids: list[int]) -> None:
        now = time.time()
        for sid in session_ids:
            row = conn.execute("SELECT expires_at FROM sessions WHERE id = ?", (sid,)).fetchone()
            if row is None or row[0] >= now:
                continue  # gone already, or refreshed since we looked
            n = self._delete_keys(conn, sid)
            conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))
            if sid == self._t_session_id:
                self._wake.set()  # our own: the session thread ends its generation now
            log.info("metadata session %s expired: removed %d ephemeral keys", sid, n)

    # -- in a write transaction of either thread ---------------------------------------------------------------

    def _create_row(self, conn: sqlite3.Connection) -> tuple[int, float]:
        """(session id, expiry time) of a new session row."""
        now = time.time()
        cur = conn.execute(
            "INSERT INTO sessions (expires_at, timeout_ms, pid, created_at) VALUES (?, ?, ?, ?)",
            (now + self._timeout_s, self._timeout_ms, os.getpid(), now),
        )
        return cur.lastrowid, now + self._timeout_s

    def _close_rows(self, conn: sqlite3.Connection, session_ids: list[int]) -> None:
        for sid in session_ids:
            self._delete_keys(conn, sid)
            conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))

    @staticmethod
    def _delete_keys(conn: sqlite3.Connection, sid: int) -> int:
        rows = conn.execute("SELECT id, key FROM kv WHERE session_id = ? ORDER BY sk", (sid,)).fetchall()
        for rid, key in rows:
            conn.execute("DELETE FROM kv WHERE id = ?", (rid,))
            schema.log_change(conn, key, _DELETED)
        return len(rows)

    # -- on the session thread ---------------------------------------------------------------------------------

    def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop:
            self._wake.clear()
            try:
                if conn is None:
                    conn = schema.connect_for_sessions(self.path)
                wait = self._step(conn, loop)
            except Exception:  # noqa: BLE001 - keep the session thread alive; retry soon
                log.exception("metadata session thread failed")
                wait = 0.5
            self._wake.wait(wait)
        if conn is not None:
            conn.close()

    def _step(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> float:
        """Keep the session alive, or end its generation and open the next; returns how long to wait."""
        interval = self._timeout_s / 3.0
        if self._t_session_id is None:
            try:
                sid, expires_at = self._write(conn, interval, self._renew)
            except sqlite3.Error as e:
                log.log(logging.INFO if self._t_renew_failures else logging.WARNING,
                        "metadata session: cannot open a new one yet (retrying): %s", e)
                self._t_renew_failures += 1
                return min(interval, 0.5)
            self._t_renew_failures = 0
            self._t_ended.clear()
            self._t_generation += 1
            self._t_session_id, self._t_expires_at = sid, expires_at
            _call_loop(loop, self._began, self._t_generation, sid)
            return interval
        try:
            expires_at = self._write(conn, max(0.05, min(interval, self._t_expires_at - time.time())),
                                     self._keepalive)
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
        _call_loop(loop, self._ended, self._t_generation, reason)
        return 0.0

    def _write(self, conn: sqlite3.Connection, wait_s: float, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """fn in one write transaction, waiting at most wait_s for the write lock (ahead of the store's writes)."""
        self.store_thread.priority_writer.set()
        try:
            schema.begin_immediate(conn, wait_s)
        finally:
            self.store_thread.priority_writer.clear()
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _keepalive(self, conn: sqlite3.Connection) -> float | None:
        """The session's new expiry time; None if it is gone (or expired: nobody may revive it)."""
        now = time.time()
        cur = conn.execute(
            "UPDATE sessions SET expires_at = ? WHERE id = ? AND expires_at >= ?",
            (now + self._timeout_s, self._t_session_id, now),
        )
        return now + self._timeout_s if cur.rowcount else None

    def _renew(self, conn: sqlite3.Connection) -> tuple[int, float]:
        """Remove what is left of ended generations (any reaper would) and open a new session."""
        self._close_rows(conn, self._t_ended)
        return self._create_row(conn)
