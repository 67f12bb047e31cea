"""Buffers produced batches across connections and partitions and commits them: one WAL object per flush, then
one index append per partition, then the acks (DESIGN.md section 5).

A flush starts when the buffer holds flush_bytes or its oldest batch has waited flush_ms. Two flushes may be in
flight: their objects are written in parallel, but index appends happen in flush order, so the offsets of a
partition follow the order in which batches arrived. Nothing is acked before its object is durable and its index
entry committed; a failed step fails exactly the appends of that flush (or of that partition) with an error the
client retries.

An idempotent producer's append carries a guard and the append it follows (produce/producers.py): right before
the index append, the partition's entry is refused when a guard gives a reason, or when an append follows one that
was not committed (in an earlier entry, or in this one). So a producer's batches commit in order, without gaps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ulid import ULID

from dray_broker.index.offsets import IndexEntry, OffsetIndex, PartitionRef, WalLocation
from dray_broker.objectstore import ObjectStore
from dray_broker.records.batch import BatchSummary
from dray_broker.wal import format as wal

log = logging.getLogger(__name__)

WAL_PREFIX = "wal/"
MAX_FLUSHES_IN_FLIGHT = 2


class FlushError(Exception):
    """The WAL object or the index entry could not be committed; nothing of the append is acked."""


# Checked right before the index append: a reason why the append must not be indexed now, or None.
Guard = Callable[[], Optional[str]]


@dataclass(slots=True)
class _Append:
    data: bytes | memoryview
    summary: BatchSummary
    future: asyncio.Future
    guard: Guard | None
    after: asyncio.Future | None  # an earlier append that must be committed before (or with) this one


# Called after a partition's entry is committed, with the entry and the chunk's bytes (for the fetch cache).
CommitListener = Callable[[PartitionRef, IndexEntry, list], None]


class WalWriter:
    def __init__(self, objects: ObjectStore, index: OffsetIndex, *, broker_id: int, flush_ms: float,
                 flush_bytes: int, on_commit: CommitListener | None = None, metrics=None, faults=None):
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
        self._timer: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(MAX_FLUSHES_IN_FLIGHT)
        self._previous_indexed: asyncio.Future | None = None
        self._flushes: set[asyncio.Task] = set()

    def append(self, partition: PartitionRef, data: bytes | memoryview, summary: BatchSummary, *,
               guard: Guard | None = None, after: asyncio.Future | None = None) -> asyncio.Future:
        """Buffer one partition's batches; the future gives their base offset once committed. after must be an
        earlier append of the same partition."""
        future = asyncio.get_running_loop().create_future()
        self._buffer.setdefault(partition, []).append(_Append(data, summary, future, guard, after))
        self._buffered_bytes += len(data)
        if self._buffered_bytes >= self.flush_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_s, self.flush)
        return future

    def flush(self) -> None:
        """Start committing what is buffered."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        batch, self._buffer, self._buffered_bytes = self._buffer, {}, 0
        previous = self._previous_indexed
        indexed = asyncio.get_running_loop().create_future()
        self._previous_indexed = indexed
        task = asyncio.create_task(self._commit(batch, previous, indexed), name="wal-flush")
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

    async def _commit(self, batch: dict[PartitionRef, list[_Append]], previous: asyncio.Future | None,
                      indexed: asyncio.Future) -> None:
        started = time.perf_counter()
        try:
            async with self._slots:
                key, chunks = await self._write_object(batch)
            if previous is not None:
                await asyncio.shield(previous)
            if key is not None:
                await asyncio.gather(*(self._index(p, key, chunk, batch[p]) for p, chunk in chunks.items()))
                if self.metrics is not None:
                    self.metrics.wal_flush_seconds.observe(time.perf_counter() - started)
                    self.metrics.wal_flush_bytes.observe(sum(c.data_length for c in chunks.values()))
        finally:
            indexed.set_result(None)

    async def _write_object(self, batch: dict[PartitionRef, list[_Append]]):
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
            if self.faults is not None and self.faults.fire("fail-wal-write"):
                raise OSError("fault injection: the object store refused the write")
            await self.objects.put(key, buffers, create_only=True)
        except Exception as e:
            log.warning("WAL object %s could not be written: %r; failing %d partitions", key, e, len(batch))
            _fail([a for appends in batch.values() for a in appends], FlushError(f"WAL write failed: {e!r}"))
            return None, {}
        log.debug("wrote %s (%d bytes, %d chunks) in %.1f ms", key, sum(map(len, buffers)), len(table),
                  (time.perf_counter() - started) * 1000)
        return key, dict(zip(batch.keys(), table))

    async def _index(self, p: PartitionRef, key: str, chunk: wal.Chunk, appends: list[_Append]) -> None:
        location = WalLocation(
            key, chunk.data_offset, chunk.data_length, chunk.data_crc, chunk.min_timestamp, chunk.max_timestamp,
            tuple(n for a in appends for n in a.summary.batch_records),
            tuple(n for a in appends for n in a.summary.batch_sizes),
        )
        if self.faults is not None and self.faults.fire("stall-before-index"):
            await asyncio.Event().wait()  # a broker hung between its WAL write and its index append
        refusal = _refusal(appends)
        if refusal is not None:
            log.warning("not indexing %d appends to %s: %s", len(appends), p, refusal)
            _fail(appends, FlushError(refusal))
            return
        try:
            entry = await self.index.append(p, location, chunk.record_count, chunk.data_length)
        except Exception as e:
            log.warning("index append for %s failed: %r", p, e)
            _fail(appends, FlushError(f"index commit failed: {e!r}"))
            return
        offset = entry.start
        for a in appends:
            if not a.future.done():
                a.future.set_result(offset)
            offset += a.summary.record_count
        if self.on_commit is not None:
            self.on_commit(p, entry, [a.data for a in appends])


def _refusal(appends: list[_Append]) -> str | None:
    """Why this entry must not be indexed, if it must not."""
    here = None
    for a in appends:
        if a.after is not None:
            here = here or {id(b.future) for b in appends}
            if id(a.after) not in here and not _committed(a.after):
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
