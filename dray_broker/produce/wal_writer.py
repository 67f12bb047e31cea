"""Buffers produced batches across connections and partitions and commits them: one WAL object per flush, then
one index append per partition of the flush (sent to the metadata store in batches), then the acks (DESIGN.md
section 5).

Group commit: when nothing is being written, a flush starts at once (at the end of the event-loop iteration in
which the first batch arrived, so requests read together share it). While flushes are being written, batches
gather and go out together as soon as one finishes; flush_ms caps that wait: a buffer that waited flush_ms goes out
in a flush of its own if the object store allows another put in flight (ObjectStore.parallel_puts, more on S3
where a put takes long than on a local disk). A buffer of flush_bytes goes out at once. So an idle broker acks
after one put and one index commit, and a busy one writes fewer, larger objects.

Objects are written in parallel, but index appends follow flush order, so the offsets of a partition follow the
order in which batches arrived: one index write at a time takes every written flush at the head of the line (in
flush order) in one store batch, so the index keeps up however many flushes are in flight. Nothing is acked
before its object is durable and its index entry committed; a failed step fails exactly the appends of that flush
(or of that partition) with an error the client retries.

An idempotent producer's append carries a guard and the append it follows (produce/producers.py). Right before an
index write, a partition's entry is left out (and its appends failed) when a guard gives a reason, or when an
append follows one that is neither committed nor in this index write ahead of it. A partition's appends in one
index write are applied in order (put_sequential_batch), and one of them fails only for a reason that fails the
later ones of the same partition too. So a producer's batches commit in order, never one after a gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from ulid import ULID

from dray_broker.faults import Faults
from dray_broker.index.offsets import Append, IndexEntry, OffsetIndex, PartitionRef, WalLocation
from dray_broker.objectstore import ObjectStore
from dray_broker.observability.metrics import BrokerMetrics
from dray_broker.records.batch import BatchSummary
from dray_broker.wal import format as wal

log = logging.getLogger(__name__)

WAL_PREFIX = "wal/"


class FlushError(Exception):
    """The WAL object or the index entry could not be committed; nothing of the append is acked."""


# Checked right before the index write: a reason why the append must not be indexed now, or None.
Guard = Callable[[], Optional[str]]


@dataclass(slots=True)
class _Append:
    data: bytes | memoryview
    summary: BatchSummary
    future: asyncio.Future
    guard: Guard | None
    after: asyncio.Future | None  # an earlier append that must commit before (or with) this one


@dataclass(slots=True)
class _Flush:
    batch: dict[PartitionRef, list[_Append]]
    started: float
    written: bool = False  # the object write ended (key is None if it failed)
    key: str | None = None
    chunks: dict[PartitionRef, wal.Chunk] = field(default_factory=dict)


# Called after a partition's entry is committed, with the entry and the chunk's bytes (for the fetch cache).
CommitListener = Callable[[PartitionRef, IndexEntry, list], None]


class WalWriter:
    def __init__(self, objects: ObjectStore, index: OffsetIndex, *, broker_id: int, flush_ms: float,
                 flush_bytes: int, on_commit: CommitListener | None = None, metrics: BrokerMetrics | None = None,
                 faults: Faults | None = None):
        self.objects = objects
        self.index = index
        self.broker_id = broker_id
        self.flush_s = flush_ms / 1000
        self.flush_bytes = flush_bytes
        self.on_commit = on_commit
        self.metrics = metrics
        self.faults = faults
        self._buffer: dict[PartitionRef, list[_Append]] = {}
        self._buffered_bytes = 0
        self._flush_soon: asyncio.Handle | None = None  # a flush at the end of this loop iteration
        self._timer: asyncio.TimerHandle | None = None  # the flush_ms cap
        self._parallel_puts = max(1, objects.parallel_puts)
        self._put_slots = asyncio.Semaphore(self._parallel_puts)
        self._writing = 0  # flushes started whose object is not written yet
        self._unindexed: deque[_Flush] = deque()  # in flush order
        self._indexing = False
        self._flushes: set[asyncio.Task] = set()

    def append(self, partition: PartitionRef, data: bytes | memoryview, summary: BatchSummary, *,
               guard: Guard | None = None, after: asyncio.Future | None = None) -> asyncio.Future:
        """Buffer one partition's batches; the future gives their base offset once committed. after must be an
        earlier append to the same partition."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._buffer.setdefault(partition, []).append(_Append(data, summary, future, guard, after))
        self._buffered_bytes += len(data)
        if self._buffered_bytes >= self.flush_bytes:
            self.flush()
        elif self._writing == 0:
            if self._flush_soon is None:
                self._flush_soon = loop.call_soon(self.flush)
        elif self._timer is None:
            self._timer = loop.call_later(self.flush_s, self._waited_long_enough)
        return future

    def _waited_long_enough(self) -> None:
        self._timer = None
        if self._writing < self._parallel_puts:
            self.flush()
        # else the next flush that finishes writing takes the buffer

    def flush(self) -> None:
        """Start committing what is buffered."""
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        flush = _Flush(self._buffer, time.perf_counter())
        self._buffer, self._buffered_bytes = {}, 0
        self._unindexed.append(flush)
        self._writing += 1
        self._track(asyncio.create_task(self._write(flush), name="wal-write"))

    def _track(self, task: asyncio.Task) -> None:
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    @property
    def flushes_in_flight(self) -> int:
        return len(self._flushes)

    async def close(self) -> None:
        """Commit everything buffered and wait for every flush in flight."""
        self.flush()
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    async def _write(self, flush: _Flush) -> None:
        try:
            async with self._put_slots:
                flush.key, flush.chunks = await self._write_object(flush.batch)
        finally:
            flush.written = True
            self._writing -= 1
            if self._buffer and self._writing < self._parallel_puts:
                self.flush()  # group commit: what arrived meanwhile goes out now
            self._index_written()

    def _index_written(self) -> None:
        """Unless an index write is under way, start one with every written flush at the head of the line."""
        if self._indexing:
            return  # it calls again when done
        ready = []
        while self._unindexed and self._unindexed[0].written:
            ready.append(self._unindexed.popleft())
        if ready:
            self._indexing = True
            self._track(asyncio.create_task(self._index_flushes(ready), name="wal-index"))

    async def _index_flushes(self, flushes: list[_Flush]) -> None:
        try:
            await self._index(flushes)
        except Exception as e:  # a bug: fail what waits rather than hang it
            log.exception("indexing WAL objects failed")
            for f in flushes:
                _fail([a for appends in f.batch.values() for a in appends], FlushError(f"index commit failed: {e!r}"))
        finally:
            self._indexing = False
            self._index_written()
        if self.metrics is not None:
            done = time.perf_counter()
            for f in flushes:
                if f.key is not None:
                    self.metrics.wal_flush_seconds.observe(done - f.started)
                    self.metrics.wal_flush_bytes.observe(sum(c.data_length for c in f.chunks.values()))

    async def _write_object(
            self, batch: dict[PartitionRef, list[_Append]]) -> tuple[str | None, dict[PartitionRef, wal.Chunk]]:
        inputs = []
        for p, appends in batch.items():
            inputs.append(wal.ChunkInput(
                p.topic_id, p.partition, [a.data for a in appends],
                batch_count=sum(a.summary.batch_count for a in appends),
                record_count=sum(a.summary.record_count for a in appends),
                min_timestamp=min(a.summary.min_timestamp for a in appends),
                max_timestamp=max(a.summary.max_timestamp for a in appends),
            ))
        buffers, table = wal.encode(inputs, created_ms=int(time.time() * 1000), broker_id=self.broker_id)
        key = WAL_PREFIX + str(ULID())
        started = time.perf_counter()
        try:
            await self.objects.put(key, buffers, create_only=True)
        except Exception as e:
            log.warning("WAL object %s could not be written: %r; failing %d partition(s)", key, e, len(batch))
            _fail([a for appends in batch.values() for a in appends], FlushError(f"WAL write failed: {e!r}"))
            return None, {}
        log.debug("wrote %s (%d bytes, %d chunks) in %.1f ms", key, sum(map(len, buffers)), len(table),
                  (time.perf_counter() - started) * 1000)
        return key, dict(zip(batch.keys(), table))

    async def _index(self, flushes: list[_Flush]) -> None:
        """Append the flushes' chunks to the index as one store batch (in flush order, so a partition's offsets
        follow arrival order); ack each partition whose append committed."""
        if self.faults is not None and self.faults.fire("stall-before-index"):
            await asyncio.Event().wait()  # a broker hung between its WAL writes and its index write
        todo: list[tuple[PartitionRef, list[_Append]]] = []
        requests: list[Append] = []
        included: set[int] = set()  # ids of the append futures in this index write so far
        for f in flushes:
            if f.key is None:
                continue  # its object write failed, and failed its appends
            for p, appends in f.batch.items():
                refusal = _refusal(appends, included)
                if refusal is not None:
                    log.warning("not indexing %d appends to %s: %s", len(appends), p, refusal)
                    _fail(appends, FlushError(refusal))
                    continue
                included.update(id(a.future) for a in appends)
                chunk = f.chunks[p]
                location = WalLocation(
                    f.key, chunk.data_offset, chunk.data_length, chunk.data_crc, chunk.min_timestamp,
                    chunk.max_timestamp, tuple(n for a in appends for n in a.summary.batch_records),
                    tuple(n for a in appends for n in a.summary.batch_sizes),
                )
                todo.append((p, appends))
                requests.append(Append(p, location, chunk.record_count, chunk.data_length))
        if not requests:
            return
        try:
            results = await self.index.append_batch(requests)
        except Exception as e:
            results = [e] * len(requests)
        for (p, appends), entry in zip(todo, results):
            if isinstance(entry, Exception):
                log.warning("index append for %s failed: %r", p, entry)
                _fail(appends, FlushError(f"index commit failed: {entry!r}"))
                continue
            offset = entry.start
            for a in appends:
                if not a.future.done():
                    a.future.set_result(offset)
                offset += a.summary.record_count
            if self.on_commit is not None:
                self.on_commit(p, entry, [a.data for a in appends])


def _refusal(appends: list[_Append], included: set[int]) -> str | None:
    """Why a partition's entry must not be indexed, if it must not. included: the appends ahead of it in the same
    index write (its own come after them)."""
    here = None
    for a in appends:
        if a.after is not None and id(a.after) not in included and not _committed(a.after):
            here = here or {id(b.future) for b in appends}
            if id(a.after) not in here:
                return "an earlier batch of the same idempotent producer was not committed"
        if a.guard is not None:
            reason = a.guard()
            if reason is not None:
                return reason
    return None


def _committed(f: asyncio.Future) -> bool:
    return f.done() and not f.cancelled() and f.exception() is None


def _fail(appends: list[_Append], error: Exception) -> None:
    for a in appends:
        if not a.future.done():
            a.future.set_exception(error)
            a.future.exception()  # retrieved: the request waiting for it may be gone (its connection closed)
