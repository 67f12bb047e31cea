"""Storage core figures on this machine: offset index appends/s and lookups/s on SQLite and Oxia, and object
puts MB/s on file:// and S3 (MinIO). Starts its own Oxia and MinIO servers (built by tests/services.py).

    .venv/bin/python -m bench.storage [--appends 5000] [--tasks 8]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid

from bench.storage_objectstore import bench_object_puts
from dray_broker.index.offsets import OffsetIndex, PartitionRef, WalLocation
from dray_broker.metadata import open_metadata_store
from dray_broker.objectstore import open_object_store
from tests import services


async def bench_index(url: str, appends: int, tasks: int, partitions: int = 16) -> tuple[float, float]:
    """(appends/s, lookups/s) with `tasks` concurrent callers spread over `partitions` partitions."""
    store = await open_metadata_store(url)
    try:
        index = OffsetIndex(store)
        topic = uuid.uuid4()
        refs = [PartitionRef(topic, i) for i in range(partitions)]
        location = WalLocation("wal/01BENCH", 0, 10_240, 0, 0, 0, (10,), (10_240,))
        per_task = appends // tasks

        async def appender(t: int) -> None:
            for i in range(per_task):
                await index.append(refs[(t + i) % partitions], location, 10, 10_240)

        start = time.perf_counter()
        await asyncio.gather(*(appender(t) for t in range(tasks)))
        append_rate = per_task * tasks / (time.perf_counter() - start)

        async def looker(t: int) -> None:
            for i in range(per_task):
                ref = refs[(t + i) % partitions]
                assert await index.lookup(ref, (i * 7) % 100) is not None

        start = time.perf_counter()
        await asyncio.gather(*(looker(t) for t in range(tasks)))
        lookup_rate = per_task * tasks / (time.perf_counter() - start)
        return append_rate, lookup_rate
    finally:
        await store.close()


async def main(args) -> None:
    oxia = services.start_oxia()
    minio = services.start_minio()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, url in [("sqlite", f"sqlite://{tmp}/meta.db"), ("oxia", f"oxia://{oxia.address}")]:
                appends, lookups = await bench_index(url, args.appends, args.tasks)
                print(f"index {name:7s}: {appends:9.0f} appends/s  {lookups:9.0f} lookups/s  ({args.tasks} tasks)")
            for name, url in [("file://", f"file://{tmp}/objects"), ("s3://", minio.url("bench"))]:
                store = open_object_store(url)
                try:
                    mbs = await bench_object_puts(store, count=args.objects)
                finally:
                    await store.close()
                print(f"objects {name:7s}: {mbs:9.1f} MB/s of 4 MiB create-only puts (2 in flight)")
    finally:
        oxia.stop()
        minio.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--appends", type=int, default=5000)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--objects", type=int, default=32)
    asyncio.run(main(p.parse_args()))
