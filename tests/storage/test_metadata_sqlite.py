"""What only the embedded (SQLite) metadata store does: its session's keepalive has a thread and a connection of its
own, so nothing queued on the store's thread delays it; a write lock held past the session timeout (another process
holding the file) ends the session, and the next one begins once the lock is released; a write's notifications reach
the watches of its event loop in the same wake-up as its result."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from dray_broker.metadata.sqlite import SqliteMetadataStore
from dray_broker.metadata.watch import WatchQueue
from tests.storage.test_metadata_contract import wait_until


async def test_keepalive_does_not_wait_behind_the_store_thread(tmp_path):
    path = str(tmp_path / "meta.db")
    observer = await SqliteMetadataStore.open(path)
    s = await SqliteMetadataStore.open(path, session_timeout_ms=1000)
    try:
        await s.put("/eph", b"1", ephemeral=True)
        # The store's thread is busy for 2.5 session timeouts (a slow read), with writes queued behind it.
        busy = s.thread.submit(lambda _conn: time.sleep(2.5), write=False)
        writes = [s.put(f"/k{i}", b"v") for i in range(50)]
        await busy
        await asyncio.gather(*writes)
        assert s.session.alive and s.session.generation == 1
        assert (await observer.get("/eph")).ephemeral
    finally:
        await s.close()
        await observer.close()


async def test_a_write_lock_held_past_the_timeout_ends_the_session_and_it_renews(tmp_path):
    path = str(tmp_path / "meta.db")
    observer = await SqliteMetadataStore.open(path)
    s = await SqliteMetadataStore.open(path, session_timeout_ms=1000)
    try:
        await s.put("/eph", b"1", ephemeral=True, session=1)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's writer, stuck
        try:
            await asyncio.wait_for(s.session.wait_ended(1), 10)
            assert not s.session.alive
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert await asyncio.wait_for(s.session.wait_alive(), 10) == 2

        async def gone():
            return await observer.get("/eph") is None

        await wait_until(gone, 5, "the ended generation's key to go")
        assert (await s.put("/eph", b"2", ephemeral=True, session=2)).ephemeral
        assert (await observer.get("/eph")).value == b"2"
    finally:
        await s.close()
        await observer.close()


async def test_a_write_wakes_its_loop_once_for_its_result_and_its_notifications(tmp_path, monkeypatch):
    s = await SqliteMetadataStore.open(str(tmp_path / "meta.db"))
    try:
        watches = [await s.watch("/a/"), await s.watch("/a/b")]
        loop = asyncio.get_running_loop()
        handed: list = []
        original = loop.call_soon_threadsafe

        def counted(callback, *args, **kwargs):
            handed.append(callback)
            return original(callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
        entry = await s.put("/a/b", b"v")
        monkeypatch.undo()
        assert len(handed) == 1  # one hand-over for the result and both watches' notifications
        for w in watches:  # already queued when the put returned
            n = await asyncio.wait_for(w.__anext__(), 0.1)
            assert (n.key, n.version) == ("/a/b", entry.version)
    finally:
        await s.close()


async def test_a_failing_watch_does_not_keep_a_write_from_its_caller(tmp_path, monkeypatch):
    s = await SqliteMetadataStore.open(str(tmp_path / "meta.db"))
    try:
        await s.watch("/a/")

        def broken(self, notifications):
            raise RuntimeError("a bug in a watch")

        monkeypatch.setattr(WatchQueue, "push_many", broken)
        entry = await asyncio.wait_for(s.put("/a/b", b"v"), 5)
        assert (await s.get("/a/b")).version == entry.version
    finally:
        await s.close()
