"""Helpers for pipeline tests: write a log without a broker process, read it back (WAL and Parquet alike) through
the broker's PartitionReader with the compacted-data loader, and check that table, index and log agree."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from dray_broker.cluster_identity import ensure_cluster_identity
from dray_broker.config import LakeSettings
from dray_broker.fetch.compacted import CompactedReader
from dray_broker.fetch.reader import PartitionReader
from dray_broker.index.offsets import OffsetIndex
from dray_broker.keyspace import IndexFamily
from dray_broker.metadata import open_metadata_store
from dray_broker.objectstore import open_object_store
from dray_broker.produce.wal_writer import WalWriter
from dray_broker.records.batch import validate_batches
from dray_broker.records.decode import decode_batches
from dray_broker.records.encode import encode_batch
from dray_broker.topics.catalog import TopicCatalog
from dray_pipelines.lake import open_lake

CODECS = (0, 1, 2, 3, 4)

# (offset, timestamp, key, value, headers)
Row = tuple


def make_batch(records: list[tuple], base_ts: int, codec: int, *, log_append: bool = False) -> bytes:
    """records: (key, value, headers, ts_delta). A batch as a producer sends it (base offset 0)."""
    attrs = 0x08 if log_append else 0
    fields = [(i, r[3], r[0], r[1], r[2]) for i, r in enumerate(records)]
    max_ts = base_ts + max(r[3] for r in records)
    return encode_batch(fields, base_offset=0, base_timestamp=base_ts, max_timestamp=max_ts, attributes=attrs,
                        compression=codec)


async def write_log(settings: LakeSettings, topic: str, partitions: int, *, batches: int, records_per_batch: int,
                    seed: int = 0, value_bytes: int = 100, configs: dict | None = None, base_ts: int | None = None,
                    flushes_per_partition: int | None = None) -> dict[int, int]:
    """Append batches to each partition through a WalWriter (one WAL object per flush, shared by partitions);
    codecs rotate over all five. Return records written per partition."""
    rnd = random.Random(seed)
    store = await open_metadata_store(settings.metadata_url)
    objects = open_object_store(settings.object_store_url)
    try:
        await ensure_cluster_identity(store, objects)  # as the broker that would have written it
        catalog = TopicCatalog(store)
        await catalog.start()
        t = await catalog.get(topic) or await catalog.create(topic, partitions, configs or {})
        writer = WalWriter(objects, OffsetIndex(store), broker_id=1, flush_ms=1000, flush_bytes=1 << 30)
        base_ts = int(time.time() * 1000) if base_ts is None else base_ts
        counts = Counter()
        futures = []
        for b in range(batches):
            for p in range(partitions):
                recs = []
                for i in range(records_per_batch):
                    key = None if rnd.random() < 0.05 else b"key-%d-%d" % (p, rnd.randrange(10_000))
                    value = None if rnd.random() < 0.02 else rnd.randbytes(rnd.randrange(0, value_bytes * 2))
                    headers = [(rnd.choice(("a", "trace", "a")), None if rnd.random() < 0.1 else rnd.randbytes(5))
                               for _ in range(rnd.choice((0, 1, 3)))]
                    recs.append((key, value, headers, rnd.randrange(-5, 50)))
                data = make_batch(recs, base_ts + b, CODECS[(b + p) % len(CODECS)], log_append=(b % 7 == 3))
                futures.append(writer.append(t.partition(p), data, validate_batches(data, 1 << 30)))
                counts[p] += records_per_batch
            if flushes_per_partition is None or b % max(1, batches // flushes_per_partition) == 0:
                writer.flush()
        writer.flush()
        await asyncio.gather(*futures)
        await writer.close()
        await catalog.stop()
        return dict(counts)
    finally:
        await objects.close()
        await store.close()


async def read_log(settings: LakeSettings, topic: str, partition: int, *, start: int = 0,
                   max_bytes: int = 64 * 1024) -> list[Row]:
    """Every record from start to the log end, through PartitionReader + CompactedReader (as a broker reads)."""
    async with open_lake(settings) as lake:
        t = await lake.topic(topic)
        ref = t.partition(partition)
        reader = PartitionReader(lake.objects, lake.index, 1 << 26, load_compacted=CompactedReader(lake.objects).load)
        end = await reader.log_end_offset(ref, fresh=True)
        out: list[Row] = []
        offset = start
        while offset < end:
            result = await reader.read(ref, offset, max_bytes)
            batches = decode_batches(result.records, verify_crc=True)
            assert batches, f"nothing read at offset {offset} of [{start}, {end})"
            for b in batches:
                for r in b.records:
                    if r.offset >= offset:
                        out.append((r.offset, r.timestamp, r.key, r.value, tuple(r.headers)))
            offset = batches[-1].next_offset
        return out


def table_rows(settings: LakeSettings, topic: str) -> list[tuple]:
    """(partition, offset, timestamp ms, key, value, headers) of every row of the topic's table, sorted."""
    from dray_pipelines.tables import open_catalog

    catalog = open_catalog(settings)
    table = catalog.load_table((settings.namespace, topic))
    if table.current_snapshot() is None:
        return []
    t = table.scan().to_arrow()
    out = []
    for row in t.to_pylist():
        ts = int(row["timestamp"].timestamp() * 1000)
        out.append((row["partition"], row["offset"], ts, row["key"], row["value"],
                    tuple((h["key"], h["value"]) for h in row["headers"])))
    return sorted(out, key=lambda r: (r[0], r[1]))


@dataclass
class LogState:
    watermark: int
    log_start: int
    log_end: int
    committed: int
    pq_ranges: list[tuple[int, int]] = field(default_factory=list)


async def log_state(settings: LakeSettings, topic: str, partition: int) -> LogState:
    async with open_lake(settings) as lake:
        t = await lake.topic(topic)
        ref = t.partition(partition)
        w, _ = await lake.index.compacted_watermark(ref)
        start = await lake.index.log_start_offset(ref)
        end = await lake.index.log_end_offset(ref)
        committed = lake.table(t).committed_end(partition)
        pq = [(e.start, e.end) for e in await lake.index.entries(ref, IndexFamily.PARQUET)]
        return LogState(w, start, end, committed, pq)


def assert_agree(settings: LakeSettings, topic: str, expected: dict[int, list[Row]], *, fully_compacted: bool) -> None:
    """Table, index and log agree with what was written: every offset exactly once, same records; the Parquet
    entries tile [log start, watermark); the table holds each partition's records below its committed end."""
    rows = table_rows(settings, topic)
    keys = [(r[0], r[1]) for r in rows]
    assert len(keys) == len(set(keys)), "the table holds a record twice"
    by_partition: dict[int, list] = {}
    for r in rows:
        by_partition.setdefault(r[0], []).append(r[1:])
    for p, want in expected.items():
        state = asyncio.run(log_state(settings, topic, p))
        assert state.log_end == len(want)
        if fully_compacted:
            assert state.watermark == state.committed == len(want), state
        assert state.watermark <= state.committed, state
        # the table holds exactly the records below the committed end
        assert by_partition.get(p, []) == [w for w in want if w[0] < state.committed], f"table partition {p}"
        # index: Parquet entries tile [.., watermark) without gaps or overlaps
        below = [(s, e) for s, e in state.pq_ranges if e <= state.watermark]
        if state.watermark:
            assert below and below[0][0] <= state.log_start and below[-1][1] == state.watermark, state
            assert all(a[1] == b[0] for a, b in zip(below, below[1:])), state
        # a reader from offset 0 sees every offset once, with the records as written
        assert asyncio.run(read_log(settings, topic, p)) == want, f"log partition {p}"




async def append_batches(settings: LakeSettings, topic: str, partition: int, batches: list[bytes]) -> int:
    """Append batches to one partition straight through a WalWriter, below the produce path's checks (only their
    framing and CRC are checked here); return the offset of the first."""
    store = await open_metadata_store(settings.metadata_url)
    objects = open_object_store(settings.object_store_url)
    try:
        catalog = TopicCatalog(store)
        await catalog.start()
        t = await catalog.get(topic)
        writer = WalWriter(objects, OffsetIndex(store), broker_id=1, flush_ms=1000, flush_bytes=1 << 30)
        futures = [writer.append(t.partition(partition), data, validate_batches(data, 1 << 31)) for data in batches]
        writer.flush()
        offsets = await asyncio.gather(*futures)
        await writer.close()
        await catalog.stop()
        return offsets[0]
    finally:
        await objects.close()
        await store.close()
