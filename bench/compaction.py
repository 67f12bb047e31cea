"""Compaction throughput, WAL -> Iceberg, for 1 KiB records: records/s and MB/s (of WAL bytes) of the three steps
(stage: read WAL chunks + decode + write Parquet; commit: Iceberg snapshot; publish: index entries + swap), and of
reading the compacted range back as record batches (what a broker does for a consumer below the watermark).

    .venv/bin/python -m bench.compaction [--records 200000] [--codec none] [--partitions 1] [--dagster]

The log is written first with a WalWriter (batches of 100 records as a producer sends them, ~4 MiB WAL objects),
on the embedded stores in a temporary directory (local disk, SQLite metadata, SQLite Iceberg catalog).
--dagster runs the compaction through the Dagster job in process (what `dray compact --all` does), adding
Dagster's own per-run overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from dray_broker.cluster_identity import ensure_cluster_identity
from dray_broker.config import LakeSettings
from dray_broker.fetch.compacted import CompactedReader
from dray_broker.index.offsets import OffsetIndex
from dray_broker.keyspace import IndexFamily
from dray_broker.metadata import open_metadata_store
from dray_broker.objectstore import open_object_store
from dray_broker.produce.wal_writer import WalWriter
from dray_broker.records.batch import validate_batches
from dray_broker.records.encode import encode_batch
from dray_broker.topics.catalog import TopicCatalog
from dray_pipelines import compaction
from dray_pipelines.lake import open_lake

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
RECORD_BYTES = 1024
BATCH_RECORDS = 100


async def write_wal(settings, topic: str, partitions: int, records: int, codec: int) -> int:
    """Write the log; return its WAL bytes."""
    store = await open_metadata_store(settings.metadata_url)
    objects = open_object_store(settings.object_store_url)
    try:
        await ensure_cluster_identity(store, objects)  # as a broker would (the pipelines need a cluster's stores)
        catalog = TopicCatalog(store)
        await catalog.start()
        t = await catalog.create(topic, partitions, {"retention.ms": "-1"})
        writer = WalWriter(objects, OffsetIndex(store), broker_id=1, flush_ms=1000, flush_bytes=4 << 20)
        rnd = os.urandom(RECORD_BYTES * 64)
        now = int(time.time() * 1000)
        futures = []
        total = 0
        for b in range(records // BATCH_RECORDS):
            fields = []
            for i in range(BATCH_RECORDS):
                n = b * BATCH_RECORDS + i
                start = (n * 977) % (len(rnd) - RECORD_BYTES)
                fields.append((i, i, b"key-%08d" % n, rnd[start:start + RECORD_BYTES], [("source", b"bench")]))
            data = encode_batch(fields, base_offset=0, base_timestamp=now + b, max_timestamp=now + b + BATCH_RECORDS,
                                compression=codec)
            total += len(data)
            futures.append(writer.append(t.partition(b % partitions), data, validate_batches(data, 1 << 30)))
            if len(futures) >= 256:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        await writer.close()
        await catalog.stop()
        return total
    finally:
        await objects.close()
        await store.close()


async def compact(settings, topic: str, partitions: int) -> dict[str, float]:
    seconds = {"stage": 0.0, "commit": 0.0, "publish": 0.0}
    async with open_lake(settings) as lake:
        t = await lake.topic(topic)
        lake.table(t).table()  # create the table outside the timing
        for p in range(partitions):
            while True:
                state = await lake.state(t, p)
                plan = compaction.plan_compaction(state, min_bytes=0, min_age_ms=0,
                                                  max_bytes=settings.compact_max_bytes, force=True)
                if plan is None:
                    break
                for name, step in (("stage", compaction.stage), ("commit", compaction.commit),
                                   ("publish", compaction.publish)):
                    started = time.perf_counter()
                    await step(lake, topic, p, plan.end)
                    seconds[name] += time.perf_counter() - started
    return seconds


async def read_back(settings, topic: str, partitions: int) -> tuple[float, int]:
    """Seconds and bytes to load every Parquet entry as record batches (no cache)."""
    async with open_lake(settings) as lake:
        t = await lake.topic(topic)
        reader = CompactedReader(lake.objects)
        total = 0
        started = time.perf_counter()
        for p in range(partitions):
            for entry in await lake.index.entries(t.partition(p), IndexFamily.PARQUET):
                total += len((await reader.load(entry)).data)
        return time.perf_counter() - started, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--codec", choices=CODECS, default="none", help="codec of the produced batches")
    parser.add_argument("--dagster", action="store_true", help="run the compaction through the Dagster job")
    parser.add_argument("--dir", type=Path, default=None, help="data directory (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        settings = LakeSettings.load({"data_dir": Path(tmp), "compact_max_bytes": 1 << 40})
        topic = "bench"
        wal_bytes = asyncio.run(write_wal(settings, topic, args.partitions, args.records, CODECS[args.codec]))
        mb = wal_bytes / 1e6
        print(f"WAL: {args.records} records of {RECORD_BYTES} B in {args.partitions} partition(s), "
              f"codec {args.codec}: {mb:.1f} MB")
        if args.dagster:
            import warnings

            warnings.filterwarnings("ignore")
            from dagster import DagsterInstance

            from dray_pipelines.runner import Runner

            runner = Runner(settings, instance=DagsterInstance.ephemeral())
            started = time.perf_counter()
            result = runner.run_sensor("compaction_sensor", force=True, repeat=True)
            elapsed = time.perf_counter() - started
            assert not result.failed, result.failed
            print(f"compaction through Dagster ({len(result.runs)} runs): {args.records / elapsed:,.0f} records/s, "
                  f"{mb / elapsed:,.1f} MB/s ({elapsed:.2f} s)")
        else:
            seconds = asyncio.run(compact(settings, topic, args.partitions))
            elapsed = sum(seconds.values())
            print(f"compaction WAL -> Iceberg: {args.records / elapsed:,.0f} records/s, {mb / elapsed:,.1f} MB/s "
                  f"({elapsed:.2f} s: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()) + ")")
        elapsed, out_bytes = asyncio.run(read_back(settings, topic, args.partitions))
        print(f"read back as record batches: {args.records / elapsed:,.0f} records/s, {out_bytes / 1e6 / elapsed:,.1f} "
              f"MB/s ({elapsed:.2f} s)")


if __name__ == "__main__":
    main()
