"""Bounded caches for the fetch path: committed chunks (offsets already patched in, bounded in bytes) and index
entries (bounded in number)."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from typing import Generic, Sized, TypeVar

from dray_broker.index.offsets import IndexEntry, PartitionRef

Loaded = TypeVar("Loaded", bound=Sized)  # its len() is its size in bytes


class ChunkCache(Generic[Loaded]):
    """Loaded ranges (patched batch bytes) by index entry key, least recently used out first, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Loaded] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Loaded | None:
        data = self._items.get(key)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return data

    def put(self, key: str, data: Loaded) -> None:
        if len(data) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        self._items[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped)


class EntryCache:
    """Recent index entries per partition, sorted by end offset, for lookups without a store round trip.

    Only WAL entries are cached: they never change once committed. A partition keeps its newest per_partition
    entries, and all partitions together at most max_entries (an entry is about a kilobyte): past that, the
    partition looked up least recently is forgotten (its next fetch asks the store again)."""

    def __init__(self, per_partition: int = 1024, max_entries: int = 64 * 1024):
        self.per_partition = per_partition
        self.max_entries = max_entries
        self._ends: OrderedDict[PartitionRef, list[int]] = OrderedDict()  # least recently used first
        self._entries: dict[PartitionRef, list[IndexEntry]] = {}
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
        entries.insert(i, entry)
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
            entry = self._entries[p][i]
            if entry.start <= offset:
                return entry
        return None

    def forget(self, p: PartitionRef) -> None:
        ends = self._ends.pop(p, None)
        if ends is not None:
            self._count -= len(ends)
        self._entries.pop(p, None)

    def __len__(self) -> int:
        return self._count
