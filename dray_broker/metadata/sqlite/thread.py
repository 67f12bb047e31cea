"""The store thread: every SQLite call of a store runs on one thread of its own, with one connection.

The event loop never blocks on SQLite: it queues an op (a function of the connection) and awaits its future. The
thread takes what has gathered in the queue as one batch. Reads run one by one. Consecutive writes share one
transaction (group commit: one BEGIN IMMEDIATE and one fsync), each in its own savepoint, so an op that fails
rolls back alone, as an Oxia write request applies as one unit with conditions per operation and no rollback of
the others. Results are delivered only once the transaction is committed.

Two hooks let the other parts of the store run on this thread: `periodic(conn)` between batches (the reaper, the
change log pruner, the watch poller; it returns how long the thread may wait for the next op) and
`after_batch(conn, wrote, poked)` after each batch, before its results are delivered (watches see a change before
its writer's await returns). What the hooks hand to an event loop (`call_on_loop`) goes with the batch's results,
in one wake-up of that loop: a hand-over between threads costs more than the callbacks it runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from typing import Any, Callable

from dray_broker.metadata.base import MetadataError
from dray_broker.metadata.sqlite import schema

log = logging.getLogger("dray_broker.metadata.sqlite")

Op = Callable[[sqlite3.Connection], Any]

_STOP = object()
_POKE = object()


class _QueuedOp:
    __slots__ = ("fn", "write", "fut", "loop")

    def __init__(self, fn: Op, write: bool, fut: asyncio.Future | None, loop: asyncio.AbstractEventLoop | None):
        self.fn = fn
        self.write = write
        self.fut = fut
        self.loop = loop


def _deliver(calls: list[tuple[Callable, Any]], results: list[tuple[asyncio.Future, Any, BaseException | None]]) \
        -> None:
    """On the event loop: the hooks' calls first, then the results."""
    for fn, arg in calls:
        try:
            fn(arg)
        except Exception:  # noqa: BLE001 - a bug in one watch must not keep results from their callers
            log.exception("metadata store: a call handed to the event loop failed")
    for fut, result, exc in results:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


def _add_result(pending: dict, op: _QueuedOp, res: Any, exc: BaseException | None) -> None:
    if op.fut is not None:
        pending.setdefault(op.loop, []).append((op.fut, res, exc))


class StoreThread:
    MAX_GROUP = 256  # ops per batch (and per group-commit transaction)
    RETRY_S = 0.25  # after the periodic work failed

    def __init__(
        self,
        path: str,
        *,
        periodic: Callable[[sqlite3.Connection], float],
        after_batch: Callable[[sqlite3.Connection, bool, bool], None],
    ) -> None:
        self.path = path
        # Set while another connection of this process (the session thread's) waits for the write lock: this
        # thread's writes let it go first.
        self.priority_writer = threading.Event()
        self._periodic = periodic
        self._after_batch = after_batch
        self._refusing = False
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._calls: dict[asyncio.AbstractEventLoop, list[tuple[Callable, Any]]] = {}  # call_on_loop's, not sent yet
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._exited: asyncio.Future | None = None

    async def start(self) -> None:
        """Start the thread; return once its connection is open and the tables exist (MetadataError if not)."""
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        ready: asyncio.Future = loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(loop, ready), name=f"dray-sqlite-meta:{os.path.basename(self.path)}",
            daemon=True,
        )
        self._thread.start()
        await ready

    def submit(self, fn: Op, *, write: bool, closing: bool = False) -> asyncio.Future:
        """Run fn(conn) on the thread (in a write transaction if write); the future gets its result. An
        sqlite3.Error becomes MetadataError; a write op that raises is rolled back alone. Once the store refuses
        callers, only its own closing ops are taken."""
        if self._refusing and not closing:
            raise MetadataError("the metadata store is closed")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put(_QueuedOp(fn, write, fut, loop))
        return fut

    def refuse_callers(self) -> None:
        """The store is closing: submit() raises MetadataError from now on, except for closing ops."""
        self._refusing = True

    def post(self, fn: Op) -> None:
        """Run fn(conn) on the thread, without an answer."""
        self._q.put(_QueuedOp(fn, False, None, None))

    def poke(self) -> None:
        """Wake the thread for an after_batch(poked=True)."""
        self._q.put(_POKE)

    def write_now(self, fn: Op) -> None:
        """On the thread: run fn(conn) in a write transaction of its own (its failure is dropped)."""
        self._run_writes([_QueuedOp(fn, True, None, None)], {})

    def call_on_loop(self, loop: asyncio.AbstractEventLoop, fn: Callable[[Any], None], arg: Any) -> None:
        """On the thread: have loop run fn(arg), before the results of the batch under way (or at once, from the
        periodic work)."""
        self._calls.setdefault(loop, []).append((fn, arg))

    async def stop(self) -> None:
        """Stop the thread once it has run what is queued; ops queued later fail."""
        self._q.put(_STOP)
        if self._exited is not None:
            await self._exited

    # -- on the thread -----------------------------------------------------------------------------------------

    def _main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future) -> None:
        exited = self._exited
        assert exited is not None
        try:
            self._conn = schema.connect(self.path)
        except BaseException as e:  # noqa: BLE001 - reported to start()
            err = MetadataError(f"cannot open metadata database {self.path}: {e}")
            loop.call_soon_threadsafe(lambda: ready.done() or ready.set_exception(err))
            loop.call_soon_threadsafe(lambda: exited.done() or exited.set_result(None))
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
                loop.call_soon_threadsafe(lambda: exited.done() or exited.set_result(None))
            except RuntimeError:  # the loop is closed
                pass

    def _serve(self) -> None:
        while True:
            try:
                timeout = self._periodic(self._conn)
            except Exception:  # noqa: BLE001 - keep serving
                log.exception("metadata store thread: periodic work failed")
                timeout = self.RETRY_S
            self._send({})
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
                    if isinstance(it, _QueuedOp):
                        _add_result(pending, it, None, err)
                self._send(pending)
                if any(it is _STOP for it in batch):
                    return

    def _serve_batch(self, batch: list) -> bool:
        """Run one batch of queued items; return whether the thread is stopping."""
        stop = False
        pending: dict[asyncio.AbstractEventLoop, list] = {}
        wrote = False
        poked = False
        i = 0
        while i < len(batch):
            it = batch[i]
            if it is _STOP:
                stop = True
                i += 1
                continue
            if it is _POKE:
                poked = True
                i += 1
                continue
            if stop:  # ops queued after close: refuse them
                _add_result(pending, it, None, MetadataError("the metadata store is closed"))
                i += 1
                continue
            if it.write:
                j = i
                while j < len(batch) and isinstance(batch[j], _QueuedOp) and batch[j].write:
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
                _add_result(pending, it, res, exc)
                i += 1
        # Notifications first, then results: when `await put()` returns, local watches already hold it.
        self._after_batch(self._conn, wrote, poked)
        self._send(pending)
        return stop

    def _send(self, pending: dict[asyncio.AbstractEventLoop, list]) -> None:
        """Hand each event loop its calls and results, in one wake-up."""
        if not self._calls and not pending:
            return  # the common case after the periodic work
        calls, self._calls = self._calls, {}
        for loop in calls.keys() | pending.keys():
            try:
                loop.call_soon_threadsafe(_deliver, calls.get(loop, ()), pending.get(loop, ()))
            except RuntimeError:  # the loop is closed
                pass

    def _run_writes(self, ops: list[_QueuedOp], pending: dict) -> bool:
        """Run ops in one transaction, each in a savepoint; deliver results only once committed."""
        conn = self._conn
        results: list[tuple[_QueuedOp, Any, BaseException | None]] = []
        try:
            self._begin_immediate()
        except sqlite3.Error as e:
            err = MetadataError(f"sqlite: cannot begin a write transaction: {e}")
            for op in ops:
                _add_result(pending, op, None, err)
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
                _add_result(pending, op, None, err)
            return False
        for op, res, exc in results:
            _add_result(pending, op, res, exc)
        return True

    def _begin_immediate(self) -> None:
        """BEGIN IMMEDIATE for the store's writes; a priority writer waiting for the lock goes first."""
        deadline = time.monotonic() + schema.BUSY_TIMEOUT_MS / 1000.0
        while self.priority_writer.is_set() and time.monotonic() < deadline:
            time.sleep(0.0005)
        schema.begin_immediate(self._conn, schema.BUSY_TIMEOUT_MS / 1000.0)
