"""Object store put throughput, for bench/storage.py: create-only puts of WAL-sized objects."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from dray_broker.objectstore import ObjectStore


async def bench_object_puts(
    store: ObjectStore, size: int = 4 * 1024 * 1024, count: int = 32, concurrency: int = 2, cleanup: bool = True
) -> float:
    """Put `count` objects of `size` bytes (create-only, `concurrency` in flight, as the WAL writer does) and
    return the throughput in MB/s (10^6 bytes). The objects are deleted afterwards unless cleanup is False."""
    payload = os.urandom(size)
    prefix = f"bench/{uuid.uuid4().hex}/"
    keys = [f"{prefix}{i:06d}" for i in range(count)]
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(key: str) -> None:
        async with sem:
            await store.put(key, payload)

    await store.put(f"{prefix}warmup", payload[:1024])  # connection set-up, directory creation
    start = time.perf_counter()
    await asyncio.gather(*(one(k) for k in keys))
    elapsed = time.perf_counter() - start
    if cleanup:
        for key in [f"{prefix}warmup", *keys]:
            await store.delete(key)
    return size * count / elapsed / 1e6


if __name__ == "__main__":  # python -m bench.storage_objectstore [URL]
    import sys

    from dray_broker.objectstore import open_object_store

    async def main() -> None:
        url = sys.argv[1] if len(sys.argv) > 1 else "file:///tmp/dray-bench-objects"
        store = open_object_store(url)
        try:
            print(f"{url}: {await bench_object_puts(store):.0f} MB/s")
        finally:
            await store.close()

    asyncio.run(main())
