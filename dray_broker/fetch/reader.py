"""Reads committed batches of a partition from a given offset: index lookup (cached), chunk range read (cached,
with offsets patched in and the chunk's CRC checked once, as it enters the cache), no per-record work. What a read
returns are views of the cached bytes (Fetch sends them as they are): a read of cached data copies nothing and reads
no object."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from dray_broker.fetch.cache import ChunkCache, EntryCache, LoadedRange
from dray_broker.index.offsets import IndexEntry, OffsetIndex, PartitionRef, WalLocation
from dray_broker.objectstore import ObjectNotFoundError, ObjectStore
from dray_broker.records.batch import patch_base_offsets
from dray_broker.wal import format as wal

log = logging.getLogger(__name__)

LOG_START_TTL_S = 2.0


class OffsetOutOfRange(Exception):
    pass


# Rebuilds record batches for an entry that is not in a WAL object (compacted to Parquet).
RangeLoader = Callable[[IndexEntry], Awaitable[LoadedRange]]


@dataclass(slots=True)
class ReadResult:
    pieces: list[memoryview]  # whole batches: views of cached ranges, one per index entry read (Fetch sends them)
    size: int
    high_watermark: int
    log_start_offset: int

    @property
    def records(self) -> bytes | memoryview:
        """The batches as one buffer (joined if they span index entries), for readers other than Fetch."""
        return self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)


class PartitionSignals:
    """Wakes long-polling fetches when a partition's log end moves (local commits or other brokers')."""

    def __init__(self) -> None:
        self._events: dict[PartitionRef, asyncio.Event] = {}

    def notify(self, p: PartitionRef) -> None:
        event = self._events.pop(p, None)
        if event is not None:
            event.set()

    def event(self, p: PartitionRef) -> asyncio.Event:
        event = self._events.get(p)
        if event is None:
            event = self._events[p] = asyncio.Event()
        return event


class PartitionReader:
    def __init__(self, objects: ObjectStore, index: OffsetIndex, cache_bytes: int,
                 load_compacted: RangeLoader | None = None):
        self.objects = objects
        self.load_compacted = load_compacted
        self.index = index
        self.chunks = ChunkCache(cache_bytes)
        self.entries = EntryCache()
        self.signals = PartitionSignals()
        self._log_end: dict[PartitionRef, int] = {}
        self._log_start: dict[PartitionRef, tuple[float, int]] = {}
        self._loading: dict[str, asyncio.Future[LoadedRange]] = {}

    # --- what the produce path and the index watch tell us ----------------------------------------------------

    def committed(self, p: PartitionRef, entry: IndexEntry, buffers: list) -> None:
        """A local commit: cache its bytes with offsets patched, move the log end, wake fetchers."""
        data = bytearray().join(buffers)
        loc = entry.location
        if not isinstance(loc, WalLocation):  # the WAL writer commits WAL entries only
            raise TypeError(f"{entry.key} is not a WAL entry")
        patch_base_offsets(data, entry.start, loc.batch_records)
        self.chunks.put(entry.key, LoadedRange(data, loc.batch_records, loc.batch_sizes))
        self.entries.add(p, entry)
        self._advance(p, entry.end)

    def index_changed(self, p: PartitionRef, log_end: int) -> None:
        """The index watch saw a WAL append reach log_end (another broker's, or this one's)."""
        self._advance(p, log_end)

    def log_start_changed(self, p: PartitionRef) -> None:
        """The index watch saw the log start move (DeleteRecords, retention): read it again at the next fetch."""
        self._log_start.pop(p, None)

    def watermark_changed(self, p: PartitionRef) -> None:
        """The index watch saw the compacted watermark move: read the range from Parquet from now on, not from
        cached WAL entries (for a compacted topic the cleaner then rewrites those ranges; the WAL keeps every
        record)."""
        self.entries.forget(p)

    def log_start_moved(self, p: PartitionRef, start: int) -> None:
        """This broker moved the log start (DeleteRecords): fetches below it are out of range from now on."""
        self._log_start[p] = (time.monotonic(), start)

    def _advance(self, p: PartitionRef, end: int) -> None:
        if end > self._log_end.get(p, -1):
            self._log_end[p] = end
            self.signals.notify(p)

    def log_ends(self) -> dict[PartitionRef, int]:
        """The log end offset of every partition this reader has heard of."""
        return dict(self._log_end)

    def forget(self, p: PartitionRef) -> None:
        self.entries.forget(p)
        self._log_end.pop(p, None)
        self._log_start.pop(p, None)

    # --- offsets ----------------------------------------------------------------------------------------------

    async def log_end_offset(self, p: PartitionRef, *, fresh: bool = False) -> int:
        if fresh or p not in self._log_end:
            self._advance(p, await self.index.log_end_offset(p))
        return self._log_end.get(p, 0)

    def cached_log_end(self, p: PartitionRef) -> int:
        """The log end this broker knows, without asking the store (0 if it knows none): a lower bound."""
        return self._log_end.get(p, 0)

    async def log_start_offset(self, p: PartitionRef) -> int:
        cached = self._log_start.get(p)
        now = time.monotonic()
        if cached is None or now - cached[0] > LOG_START_TTL_S:
            cached = (now, await self.index.log_start_offset(p))
            self._log_start[p] = cached
        return cached[1]

    # --- reading ----------------------------------------------------------------------------------------------

    async def read(self, p: PartitionRef, offset: int, max_bytes: int, *, min_one: bool = True) -> ReadResult:
        """Whole batches from the one holding offset, up to max_bytes. min_one: the first batch comes even when it
        is larger than max_bytes (so that a consumer always progresses), as Kafka's minOneMessage."""
        start = await self.log_start_offset(p)
        if offset < start:
            raise OffsetOutOfRange(f"offset {offset} is before the log start {start}")
        end = self._log_end.get(p)
        if end is None or offset >= end:
            # Maybe another broker appended since we last heard: ask the store (read-your-writes).
            end = await self.log_end_offset(p, fresh=True)
        if offset > end:
            raise OffsetOutOfRange(f"offset {offset} is after the log end {end}")
        pieces: list = []
        size = 0
        position = offset
        while position < end and (size < max_bytes or (min_one and not pieces)):
            entry = await self._entry(p, position)
            if entry is None:
                break
            try:
                data = await self._chunk_bytes(entry)
            except ObjectNotFoundError:
                if not self.entries.find(p, position):
                    raise
                # A cached entry whose WAL object was collected after compaction: ask the index again.
                self.entries.forget(p)
                continue
            piece, complete = data.slice_from(entry.start, position, max_bytes - size, first=min_one and not pieces)
            if piece:
                pieces.append(piece)
                size += len(piece)
            if not complete:
                break  # the budget ended inside this entry: the next fetch continues from there
            position = entry.end
        return ReadResult(pieces, size, max(end, self._log_end.get(p, 0)), start)

    async def _entry(self, p: PartitionRef, offset: int) -> IndexEntry | None:
        entry = self.entries.find(p, offset)
        if entry is None:
            entry = await self.index.lookup(p, offset)
            if entry is not None and entry.is_wal:
                self.entries.add(p, entry)
                self._advance(p, entry.end)
        return entry

    async def load(self, entry: IndexEntry) -> LoadedRange:
        """The batches of one index entry, offsets patched in (cached)."""
        return await self._chunk_bytes(entry)

    async def _chunk_bytes(self, entry: IndexEntry) -> LoadedRange:
        key = entry.cache_key
        data = self.chunks.get(key)
        if data is not None:
            return data
        # Coalesce concurrent misses on the same chunk into one read.
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(entry))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    async def _load(self, entry: IndexEntry) -> LoadedRange:
        loc = entry.location
        if not isinstance(loc, WalLocation):
            if self.load_compacted is None:
                raise RuntimeError(f"{entry.key} is compacted and this broker has no reader for compacted data")
            loaded = await self.load_compacted(entry)
        else:
            data = await self.objects.get_writable(loc.object_key, loc.data_offset,
                                                   loc.data_offset + loc.data_length)
            # The chunk's CRC is checked here, once, as it enters the cache (fetches serve it as it is from then
            # on); its offsets are patched in (outside the batch CRCs) so that no fetch has to.
            wal.verify_chunk_bytes(data, loc.data_length, loc.data_crc)
            patch_base_offsets(data, entry.start, loc.batch_records)
            loaded = LoadedRange(data, loc.batch_records, loc.batch_sizes)
        self.chunks.put(entry.cache_key, loaded)
        return loaded
