"""The embedded metadata store: one SQLite file, shared safely by several processes on one machine.

How the pieces fit:
- schema.py: the tables (kv sorted by hierarchical_sort_key, the change log whose ids are versions, sessions),
  the connections, and BEGIN IMMEDIATE with short waits;
- thread.py: StoreThread, the one thread that runs every SQLite call of the store; writes queued while it is
  busy share one transaction (group commit), each in its own savepoint;
- watches.py: Watches, the change log polled into the watches' queues, pruned after about an hour;
- sessions.py: Sessions, the session row kept alive by a thread of its own, renewed in a new generation when it
  is lost, and the reaper of expired sessions;
- store.py: SqliteMetadataStore, the MetadataStore: each call is one op on the store thread.
"""

from __future__ import annotations

import builtins
import functools
import os
import sqlite3
import time
from typing import Sequence

from dray_broker.metadata.base import (
    MUST_NOT_EXIST,
    Comparison,
    Entry,
    KeyNotFoundError,
    MetadataError,
    MetadataStore,
    NotificationType,
    SequentialPut,
    SessionLife,
    VersionMismatchError,
    Watch,
)
from dray_broker.metadata.keys import hierarchical_sort_key
from dray_broker.metadata.sequence import (
    MAX_SUM,
    check_sequential,
    check_sums_covered,
    newest_key_bound,
    sequence_key,
    sums_of_newest,
)
from dray_broker.metadata.sqlite import schema
from dray_broker.metadata.sqlite.sessions import Sessions
from dray_broker.metadata.sqlite.thread import StoreThread
from dray_broker.metadata.sqlite.watches import Watches

_CREATED = NotificationType.CREATED.value
_MODIFIED = NotificationType.MODIFIED.value
_DELETED = NotificationType.DELETED.value
_RANGE_DELETED = NotificationType.RANGE_DELETED.value


class SqliteMetadataStore(MetadataStore):
    def __init__(self, path: str, session_timeout_ms: int) -> None:
        self.path = path
        self.thread = StoreThread(path, periodic=self._periodic, after_batch=self._after_batch)
        self.watches = Watches(path, self.thread)
        self.session = SessionLife()
        self.sessions = Sessions(path, session_timeout_ms, self.thread, self.session)
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str, *, session_timeout_ms: int = 10_000) -> "SqliteMetadataStore":
        if session_timeout_ms <= 0:
            raise ValueError("session_timeout_ms must be positive")
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        store = cls(path, session_timeout_ms)
        await store.thread.start()  # the connection is open and the schema exists (or the error is raised here)
        try:
            await store.sessions.open()
        except BaseException:
            await store.thread.stop()
            raise
        store.watches.join()
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.thread.refuse_callers()
        try:
            await self.sessions.close()
        finally:
            self.watches.leave()
            await self.thread.stop()
            self.watches.end_all()

    # -- the store thread's hooks ----------------------------------------------------------------------------

    def _periodic(self, conn: sqlite3.Connection) -> float:
        """The periodic work of the sessions and the watches; how long the thread may wait for the next op."""
        now = time.monotonic()
        due = min(self.sessions.tick(conn, now), self.watches.tick(conn, now))
        return max(0.0, due - time.monotonic())

    def _after_batch(self, conn: sqlite3.Connection, wrote: bool, poked: bool) -> None:
        self.watches.after_batch(conn, wrote, poked)

    # -- the interface ---------------------------------------------------------------------------------------

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

        return await self.thread.submit(op, write=False)

    def _write_key(self, conn: sqlite3.Connection, key: str, sk: bytes, value: bytes, existed: bool, sid) -> int:
        version = schema.log_change(conn, key, _MODIFIED if existed else _CREATED)
        conn.execute(
            "INSERT INTO kv (sk, key, value, version, session_id) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (sk) DO UPDATE SET value = excluded.value, version = excluded.version, "
            "session_id = excluded.session_id",
            (sk, key, value, version, sid),
        )
        return version

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
        generation, sid = self.sessions.require(session) if ephemeral else (0, None)

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
                self.sessions.check_alive(conn, sid, generation)
            version = self._write_key(conn, key, sk, value, row is not None, sid)
            return Entry(key, value, version, ephemeral)

        return await self.thread.submit(op, write=True)

    async def put_sequential(
        self, prefix: str, value: bytes, deltas: Sequence[int], *, partition_key: str
    ) -> Entry:
        deltas = check_sequential(prefix, deltas, partition_key)
        value = bytes(value)
        return await self.thread.submit(lambda conn: self._append_sequential(conn, prefix, value, deltas), write=True)

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
                await self.thread.submit(op, write=True)
            except MetadataError as e:
                for i, *_ in todo:
                    results[i] = e
        return results  # type: ignore[return-value]

    def _append_sequential(self, conn: sqlite3.Connection, prefix: str, value: bytes, deltas: list[int]) -> Entry:
        """Raises MetadataError before it writes anything."""
        row = conn.execute(
            "SELECT key FROM kv WHERE sk >= ? AND sk < ? ORDER BY sk DESC LIMIT 1", _sequence_range(prefix)
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

        return await self.thread.submit(op, write=True)

    async def delete_range(self, start: str, end: str, *, partition_key: str | None = None) -> None:
        lo, hi = hierarchical_sort_key(start), hierarchical_sort_key(end)

        def op(conn: sqlite3.Connection) -> None:
            if lo >= hi:
                return
            n = conn.execute("DELETE FROM kv WHERE sk >= ? AND sk < ?", (lo, hi)).rowcount
            if n:
                schema.log_change(conn, start, _RANGE_DELETED, end)

        await self.thread.submit(op, write=True)

    async def list(self, start: str, end: str, *, partition_key: str | None = None) -> list[str]:
        lo, hi = hierarchical_sort_key(start), hierarchical_sort_key(end)

        def op(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT key FROM kv WHERE sk >= ? AND sk < ? ORDER BY sk", (lo, hi))]

        return await self.thread.submit(op, write=False)

    async def range_scan(
        self, start: str, end: str, *, partition_key: str | None = None
    ) -> builtins.list[Entry]:  # `list`: the method above
        lo, hi = hierarchical_sort_key(start), hierarchical_sort_key(end)

        def op(conn: sqlite3.Connection) -> list[Entry]:
            return [
                Entry(k, bytes(v), ver, sid is not None)
                for k, v, ver, sid in conn.execute(
                    "SELECT key, value, version, session_id FROM kv WHERE sk >= ? AND sk < ? ORDER BY sk", (lo, hi)
                )
            ]

        return await self.thread.submit(op, write=False)

    async def watch(self, prefix: str) -> Watch:
        return await self.watches.watch(prefix)


@functools.lru_cache(maxsize=16384)
def _sequence_range(prefix: str) -> tuple[bytes, bytes]:
    """The sort keys between which the newest key of a sequence is searched: the same few partitions' prefixes
    come back at every index append."""
    return hierarchical_sort_key(prefix + "-"), hierarchical_sort_key(newest_key_bound(prefix))
