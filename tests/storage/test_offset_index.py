"""The offset index on both metadata backends: concurrent appenders and a compaction swap in the middle.

Properties: offsets are dense and strictly increasing, each appender gets disjoint ranges, every offset below
the log end resolves to exactly one entry that holds it (Parquet below the watermark, WAL above), and nothing
acked is lost when WAL entries below the watermark are deleted."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dray_broker.index.offsets import (
    IndexChange,
    OffsetIndex,
    ParquetLocation,
    PartitionRef,
    WalLocation,
    WalTail,
)
from dray_broker.keyspace import IndexFamily
from dray_broker.metadata import open_metadata_store

BACKENDS = ["sqlite", pytest.param("oxia", marks=pytest.mark.oxia)]


@pytest.fixture(params=BACKENDS)
def metadata_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path_factory.mktemp('idx')}/meta.db"
    return f"oxia://{request.getfixturevalue('oxia_service').address}"


def _location(tag: str, counts: list[int]) -> WalLocation:
    return WalLocation(f"wal/{tag}", 0, sum(counts) * 10, 0, 1, 2, tuple(counts), tuple(c * 10 for c in counts))


async def _append_all(index: OffsetIndex, p: PartitionRef, writer: int, appends: list[list[int]]):
    got = []
    for i, counts in enumerate(appends):
        entry = await index.append(p, _location(f"{writer}-{i}", counts), sum(counts), sum(counts) * 10)
        got.append((entry.start, entry.end, sum(counts)))
    return got


async def _compact(index: OffsetIndex, p: PartitionRef) -> int:
    """What the compaction job does: Parquet entries for every WAL entry so far, then the watermark CAS."""
    entries = await index.entries(p, IndexFamily.WAL)
    if not entries:
        return 0
    watermark, version = await index.compacted_watermark(p)
    # One Parquet file per two WAL entries, to check ranges that span entries.
    for pair in (entries[i : i + 2] for i in range(0, len(entries), 2)):
        await index.put_parquet_entry(p, pair[0].start, pair[-1].end, ParquetLocation(f"pq/{pair[0].start}", 0, 0))
    new_watermark = entries[-1].end
    await index.swap(p, new_watermark, version)
    return new_watermark


async def _check(index: OffsetIndex, p: PartitionRef, results, watermark: int) -> None:
    ranges = sorted(r for writer in results for r in writer)
    # Each append got its own range of exactly its size; together they are dense from 0.
    assert [(s, e) for s, e, _ in ranges] == [(s, s + n) for s, _, n in ranges]
    assert [s for s, _, _ in ranges] == [0] + [e for _, e, _ in ranges[:-1]]
    # Each writer's ranges increase in the order it appended (commit order).
    for writer in results:
        assert writer == sorted(writer)
    log_end = ranges[-1][1] if ranges else 0
    assert await index.log_end_offset(p) == log_end
    for offset in range(log_end):
        entry = await index.lookup(p, offset)
        assert entry is not None and entry.start <= offset < entry.end
        assert entry.is_wal == (offset >= watermark)
    assert await index.lookup(p, log_end) is None
    # From any offset, entries_from lists what readers use up to the log end, contiguous, in offset order.
    for offset in sorted({0, watermark // 2, watermark, (watermark + log_end) // 2, log_end}):
        entries = await index.entries_from(p, offset)
        if offset == log_end:
            assert entries == []
            continue
        assert entries[0].start <= offset < entries[0].end and entries[-1].end == log_end
        assert all(a.end == b.start for a, b in zip(entries, entries[1:]))
        assert all(e.is_wal == (e.start >= watermark) for e in entries)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    writers=st.lists(st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=1, max_size=6),
                     min_size=1, max_size=4),
    swap_after=st.integers(0, 6),
)
def test_concurrent_appends_with_a_swap(metadata_url, writers, swap_after):
    async def scenario():
        stores = [await open_metadata_store(metadata_url) for _ in range(2)]
        try:
            p = PartitionRef(uuid.uuid4(), 0)
            # Appenders on two store instances (two brokers), racing; compaction runs part way through.
            first = [w[:swap_after] for w in writers]
            rest = [w[swap_after:] for w in writers]
            results = await asyncio.gather(*(_append_all(OffsetIndex(stores[i % 2]), p, i, a) for i, a in enumerate(first)))
            swap = asyncio.create_task(_compact(OffsetIndex(stores[0]), p))
            later = await asyncio.gather(*(_append_all(OffsetIndex(stores[i % 2]), p, i, a) for i, a in enumerate(rest)))
            watermark = await swap
            results = [a + b for a, b in zip(results, later)]
            index = OffsetIndex(stores[1])
            await _check(index, p, results, watermark)
            # GC of WAL entries below the watermark keeps every offset readable and the sequence intact.
            await index.delete_wal_entries_below(p, watermark)
            await _check(index, p, results, watermark)
            end = await index.log_end_offset(p)
            again = await index.append(p, _location("after-gc", [2]), 2, 20)
            assert (again.start, again.end) == (end, end + 2)
        finally:
            for s in stores:
                await s.close()

    asyncio.run(scenario())


async def test_log_start_offset_moves_forward_only(metadata_url):
    store = await open_metadata_store(metadata_url)
    try:
        index = OffsetIndex(store)
        p = PartitionRef(uuid.uuid4(), 3)
        assert await index.log_start_offset(p) == 0
        assert await index.advance_log_start_offset(p, 10) == 10
        assert await index.advance_log_start_offset(p, 4) == 10
        assert await index.log_start_offset(p) == 10
    finally:
        await store.close()


async def test_a_stale_swap_is_refused(metadata_url):
    from dray_broker.metadata import MetadataError

    store = await open_metadata_store(metadata_url)
    try:
        index = OffsetIndex(store)
        p = PartitionRef(uuid.uuid4(), 0)
        await index.append(p, _location("a", [3]), 3, 30)
        _, version = await index.compacted_watermark(p)
        await index.swap(p, 3, version)
        with pytest.raises(MetadataError):
            await index.swap(p, 3, version)  # a rerun with the old version must not move the watermark
        assert (await index.compacted_watermark(p))[0] == 3
    finally:
        await store.close()


async def test_what_the_pipelines_and_gc_do_through_the_index(metadata_url):
    """Entries from an offset, the log end with its bytes, deleting below a point, the purge of a partition."""
    store = await open_metadata_store(metadata_url)
    try:
        index = OffsetIndex(store)
        p, neighbour = PartitionRef(uuid.uuid4(), 0), PartitionRef(uuid.uuid4(), 0)
        assert await index.log_end_and_bytes(p) == (0, 0)
        for i in range(6):
            await index.append(p, _location(f"p{i}", [2]), 2, 20)
        await index.append(neighbour, _location("n", [5]), 5, 50)
        assert await index.log_end_and_bytes(p) == (12, 120)
        wal = await index.entries(p, IndexFamily.WAL)
        assert [(e.start, e.end, e.cum_bytes) for e in wal] == [(2 * i, 2 * i + 2, 20 * i + 20) for i in range(6)]
        assert [e.end for e in await index.entries(p, IndexFamily.WAL, min_end=6)] == [6, 8, 10, 12]
        for start in (0, 4):
            await index.put_parquet_entry(p, start, start + 4, ParquetLocation(f"pq/{start}", 0, 0))
        _, version = await index.compacted_watermark(p)
        await index.swap(p, 8, version)
        assert [e.end for e in await index.entries(p, IndexFamily.PARQUET, min_end=5)] == [8]

        await index.advance_log_start_offset(p, 4)
        assert await index.delete_parquet_entries_below(p, 4) == 1
        assert [e.end for e in await index.entries(p, IndexFamily.PARQUET)] == [8]
        assert await index.delete_wal_entries_below(p, 100) == 5  # all but the newest, which anchors the sequence
        assert [e.end for e in await index.entries(p, IndexFamily.WAL)] == [12]
        assert (await index.lookup(p, 5)).location.path == "pq/4"
        assert (await index.lookup(p, 10)).end == 12

        await index.purge(p)
        assert await index.entries(p, IndexFamily.WAL) == [] and await index.entries(p, IndexFamily.PARQUET) == []
        assert (await index.log_end_offset(p), await index.log_start_offset(p)) == (0, 0)
        assert await index.compacted_watermark(p) == (0, -1)
        assert await index.log_end_and_bytes(neighbour) == (5, 50)
    finally:
        await store.close()


async def test_the_wal_past_the_watermark_with_its_bytes(metadata_url):
    """What compaction has left to do: the WAL entries past an entry boundary, the bytes appended through it and
    through the log end, also once GC deleted the entries below it."""
    store = await open_metadata_store(metadata_url)
    try:
        index = OffsetIndex(store)
        p = PartitionRef(uuid.uuid4(), 2)
        assert await index.wal_after(p, 0) == WalTail([], 0, 0, 0)
        for i in range(4):
            await index.append(p, _location(f"t{i}", [1, 2]), 3, 30)

        def seen(tail: WalTail):
            return [e.end for e in tail.entries], tail.bytes_at, tail.log_end, tail.bytes_at_end

        assert seen(await index.wal_after(p, 0)) == ([3, 6, 9, 12], 0, 12, 120)
        assert seen(await index.wal_after(p, 6)) == ([9, 12], 60, 12, 120)
        assert seen(await index.wal_after(p, 12)) == ([], 120, 12, 120)
        assert await index.delete_wal_entries_below(p, 6) == 2
        assert seen(await index.wal_after(p, 6)) == ([9, 12], 60, 12, 120)
        assert await index.delete_wal_entries_below(p, 12) == 1  # the newest stays
        assert seen(await index.wal_after(p, 12)) == ([], 120, 12, 120)
    finally:
        await store.close()


async def test_the_index_watch_says_which_partition_and_what_changed(metadata_url):
    writer, watcher = await open_metadata_store(metadata_url), await open_metadata_store(metadata_url)
    try:
        watch = await OffsetIndex(watcher).watch()
        index = OffsetIndex(writer)
        a, b = PartitionRef(uuid.uuid4(), 1), PartitionRef(uuid.uuid4(), 7)

        async def next_change_of(p: PartitionRef):
            async for change in watch:
                if change.partition == p:
                    return change

        await index.append(a, _location("a", [3]), 3, 30)
        assert await asyncio.wait_for(next_change_of(a), 10) == IndexChange(a, 3)
        await index.append(b, _location("b", [4]), 4, 40)
        await index.append(b, _location("b2", [1]), 1, 10)
        assert await asyncio.wait_for(next_change_of(b), 10) == IndexChange(b, 4)
        assert await asyncio.wait_for(next_change_of(b), 10) == IndexChange(b, 5)
        await index.swap(b, 5, -1)  # not a WAL append: the partition, no log end, the watermark moved
        assert await asyncio.wait_for(next_change_of(b), 10) == IndexChange(b, None, watermark=True)
        await index.advance_log_start_offset(a, 2)  # DeleteRecords or retention
        assert await asyncio.wait_for(next_change_of(a), 10) == IndexChange(a, None, log_start=True)
        await watch.aclose()
    finally:
        await writer.close()
        await watcher.close()
