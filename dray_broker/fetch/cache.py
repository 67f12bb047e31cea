"""Bounded caches for the fetch path: committed chunks (offsets already patched in, bounded in bytes) and index
entries (bounded in number).

Both keep what they hold as tuples of bytes, ints and strings, which Python's cycle collector stops tracking after
it has seen them once: a full collection scans every tracked object, and a cache of tens of thousands of objects
(several per chunk) made those pauses 50-120 ms, the broker's worst produce latencies (measured with gc.callbacks).
What callers get back are LoadedRange and IndexEntry objects, made again on each hit."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from itertools import accumulate

from dray_broker.index.offsets import IndexEntry, PartitionRef, WalLocation


class LoadedRange:
    """The batches of one index entry, with their offsets patched in, ready to return to consumers. Fetches return
    views of `data`: the bytes are never copied again while the range is cached."""

    __slots__ = ("data", "batch_records", "batch_sizes", "_record_ends", "_positions")

    def __init__(self, data: bytearray, batch_records: tuple[int, ...], batch_sizes: tuple[int, ...]):
        self.data = data
        self.batch_records = batch_records
        self.batch_sizes = batch_sizes
        self._record_ends = tuple(accumulate(batch_records))  # offsets from the entry's start past each batch
        self._positions = (0, *accumulate(batch_sizes))  # where each batch starts, and the end

    def __len__(self) -> int:
        return len(self.data)

    def slice_from(self, first_offset: int, offset: int, budget: int, first: bool) -> tuple[memoryview, bool]:
        """The whole batches from the one holding offset (the range starts at first_offset), within budget bytes
        (one batch at least if first), and whether they reach the end of the range."""
        positions = self._positions
        i = bisect.bisect_right(self._record_ends, offset - first_offset)
        begin = positions[i]
        j = max(bisect.bisect_right(positions, begin + budget, i) - 1, i)  # batches i..j-1 fit in the budget
        if j == i and first and i < len(self.batch_sizes):
            j = i + 1
        return memoryview(self.data)[begin:positions[j]], j == len(self.batch_sizes)

    def _stored(self) -> tuple:
        return self.data, self.batch_records, self.batch_sizes, self._record_ends, self._positions

    @classmethod
    def _restored(cls, stored: tuple) -> LoadedRange:
        loaded = cls.__new__(cls)
        loaded.data, loaded.batch_records, loaded.batch_sizes, loaded._record_ends, loaded._positions = stored
        return loaded


class ChunkCache:
    """Loaded ranges (patched batch bytes) by index entry key, least recently used out first, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple] = OrderedDict()  # LoadedRange._stored() forms
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> LoadedRange | None:
        stored = self._items.get(key)
        if stored is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return LoadedRange._restored(stored)

    def put(self, key: str, loaded: LoadedRange) -> None:
        if len(loaded) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0])
        self._items[key] = loaded._stored()
        self._bytes += len(loaded)
        while self._bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped[0])


def _stored_entry(entry: IndexEntry) -> tuple:
    loc = entry.location
    if not isinstance(loc, WalLocation):  # only WAL entries are cached: they never change once committed
        raise TypeError(f"{entry.key} is not a WAL entry")
    return (entry.key, entry.start, entry.end, entry.cum_bytes, loc.object_key, loc.data_offset, loc.data_length,
            loc.data_crc, loc.min_timestamp, loc.max_timestamp, loc.batch_records, loc.batch_sizes)


def _restored_entry(stored: tuple) -> IndexEntry:
    key, start, end, cum_bytes, *location = stored
    return IndexEntry(key, start, end, WalLocation(*location), cum_bytes)


class EntryCache:
    """Recent index entries per partition, sorted by end offset, for lookups without a store round trip.

    Only WAL entries are cached: they never change once committed. A partition keeps its newest per_partition
    entries, and all partitions together at most max_entries (an entry is about a kilobyte): past that, the
    partition looked up least recently is forgotten (its next fetch asks the store again)."""

    def __init__(self, per_partition: int = 1024, max_entries: int = 64 * 1024):
        self.per_partition = per_partition
        self.max_entries = max_entries
        self._ends: OrderedDict[PartitionRef, list[int]] = OrderedDict()  # least recently used first
        self._entries: dict[PartitionRef, list[tuple]] = {}  # _stored_entry() forms
        self._count = 0

    def add(self, p: PartitionRef, entry: IndexEntry) -> None:
        ends = self._ends.get(p)
        if ends is None:
            ends = self._ends[p] = []
            self._entries[p] = []
        else:
            self._ends.move_to_end(p)
        entries = self._entries[p]
        i = bisect.bisect_left(ends, entry.end)
        if i < len(ends) and ends[i] == entry.end:
            return
        ends.insert(i, entry.end)
        entries.insert(i, _stored_entry(entry))
        self._count += 1
        if len(ends) > self.per_partition:
            del ends[0], entries[0]
            self._count -= 1
        while self._count > self.max_entries and len(self._ends) > 1:
            self.forget(next(iter(self._ends)))

    def find(self, p: PartitionRef, offset: int) -> IndexEntry | None:
        ends = self._ends.get(p)
        if not ends:
            return None
        self._ends.move_to_end(p)
        i = bisect.bisect_right(ends, offset)
        if i < len(ends):
            stored = self._entries[p][i]
            if stored[1] <= offset:  # its start
                return _restored_entry(stored)
        return None

    def forget(self, p: PartitionRef) -> None:
        ends = self._ends.pop(p, None)
        if ends is not None:
            self._count -= len(ends)
        self._entries.pop(p, None)

    def __len__(self) -> int:
        return self._count
