"""The fetch path's caches stay within their bounds (index entries per partition and in all) and out of the cycle
collector's way."""

from __future__ import annotations

import gc
import uuid

from dray_broker import keyspace
from dray_broker.fetch.cache import ChunkCache, EntryCache, LoadedRange
from dray_broker.index.offsets import IndexEntry, PartitionRef, WalLocation


def _entry(p: PartitionRef, start: int, end: int) -> IndexEntry:
    loc = WalLocation(f"wal/{start}", 0, 100, 0, 0, 0, (end - start,), (100,))
    return IndexEntry(keyspace.wal_key(p.topic_id, p.partition, end, end * 100), start, end, loc, end * 100)


def test_entries_are_bounded_per_partition_and_in_all():
    cache = EntryCache(per_partition=10, max_entries=25)
    parts = [PartitionRef(uuid.uuid4(), i) for i in range(4)]
    for p in parts[:2]:
        for i in range(15):
            cache.add(p, _entry(p, i * 10, i * 10 + 10))
    assert len(cache) == 20  # the newest 10 of each
    assert cache.find(parts[0], 5) is None and cache.find(parts[0], 145).end == 150
    cache.find(parts[1], 145)  # partition 1 is now the most recently used
    cache.add(parts[2], _entry(parts[2], 0, 10))
    assert len(cache) == 21
    for i in range(1, 10):
        cache.add(parts[3], _entry(parts[3], i * 10, i * 10 + 10))
    # 30 > 25: the least recently used partition (0) is forgotten as a whole
    assert len(cache) == 20 and cache.find(parts[0], 145) is None
    assert cache.find(parts[1], 145) is not None and cache.find(parts[3], 95) is not None


def test_cached_chunks_and_entries_are_not_tracked_by_the_cycle_collector():
    """A full collection scans every tracked object: what the caches keep must not be (gc untracks tuples of
    untracked values when it first sees them), however many chunks and entries they hold."""
    p = PartitionRef(uuid.uuid4(), 0)
    entries = EntryCache()
    chunks = ChunkCache(max_bytes=1 << 20)
    for i in range(100):
        entry = _entry(p, i * 10, i * 10 + 10)
        entries.add(p, entry)
        chunks.put(entry.key, LoadedRange(bytearray(100), (10,), (100,)))
    gc.collect()
    gc.collect()  # a tuple holding tuples is untracked once those are
    held = [*chunks._items.values(), *entries._entries[p]]
    assert len(held) == 200 and not any(gc.is_tracked(x) for x in held)
    # What callers get back works as before.
    entry = entries.find(p, 995)
    assert entry is not None and (entry.start, entry.end) == (990, 1000) and entry.location.batch_records == (10,)
    loaded = chunks.get(entry.key)
    assert loaded is not None and bytes(loaded.slice_from(990, 995, 1000, True)[0]) == bytes(100)
