"""The WAL writer's group commit over real stores (SQLite index, local directory): a flush starts at once when
nothing is being written, flushes are written in parallel but indexed in flush order, and a failed write fails
only its own appends."""

import asyncio
import uuid

import pytest

from dray_broker.index.offsets import OffsetIndex, PartitionRef
from dray_broker.metadata import open_metadata_store
from dray_broker.objectstore import ObjectStoreError
from dray_broker.objectstore.local import LocalObjectStore
from dray_broker.produce.wal_writer import WAL_PREFIX, FlushError, WalWriter
from dray_broker.records.batch import validate_batches
from tests.batches import make_batch


class HeldStore(LocalObjectStore):
    """A local store whose next put waits until released (then writes, or fails if told to)."""

    def __init__(self, root):
        super().__init__(root)
        self.hold_next = False
        self.release = asyncio.Event()
        self.fail_held = False
        self.held = asyncio.Event()

    async def put(self, key, data, *, create_only=True):
        if self.hold_next:
            self.hold_next = False
            self.held.set()
            await self.release.wait()
            if self.fail_held:
                raise ObjectStoreError("the disk is gone")
        await super().put(key, data, create_only=create_only)


@pytest.fixture
async def stores(tmp_path):
    meta = await open_metadata_store(f"sqlite://{tmp_path}/meta.db")
    objects = HeldStore(tmp_path / "objects")
    yield meta, objects
    await meta.close()
    await objects.close()


def _batch(value: bytes):
    data = make_batch([(None, value)])
    return data, validate_batches(data, 1 << 20)


async def _wal_objects(objects) -> int:
    return len(await objects.list(WAL_PREFIX))


async def test_an_idle_writer_flushes_at_once(stores):
    meta, objects = stores
    writer = WalWriter(objects, OffsetIndex(meta), broker_id=1, flush_ms=600_000, flush_bytes=1 << 30)
    p = PartitionRef(uuid.uuid4(), 0)
    # Acked long before flush_ms: the flush did not wait for the timer.
    assert await asyncio.wait_for(writer.append(p, *_batch(b"a")), 20) == 0
    assert await asyncio.wait_for(writer.append(p, *_batch(b"b")), 20) == 1
    await writer.close()


@pytest.mark.parametrize("first_write_fails", [False, True])
async def test_parallel_flushes_are_indexed_in_flush_order(stores, first_write_fails):
    meta, objects = stores
    index = OffsetIndex(meta)
    writer = WalWriter(objects, index, broker_id=1, flush_ms=20, flush_bytes=1 << 30)
    p, q = PartitionRef(uuid.uuid4(), 0), PartitionRef(uuid.uuid4(), 0)

    objects.hold_next, objects.fail_held = True, first_write_fails
    first = writer.append(p, *_batch(b"first"))  # flushed at once; its write is held
    await objects.held.wait()
    second = writer.append(p, *_batch(b"second"))  # waits flush_ms, then a second flush is written beside it
    other = writer.append(q, *_batch(b"other"))
    while await _wal_objects(objects) < 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not second.done() and not other.done(), "indexed before the flush ahead of it"

    objects.release.set()
    if first_write_fails:
        with pytest.raises(FlushError):
            await first
        assert (await second, await other) == (0, 0)
    else:
        assert (await first, await second, await other) == (0, 1, 0)
    entries = await index.entries(p)
    assert [(e.start, e.end) for e in entries] == ([(0, 1)] if first_write_fails else [(0, 1), (1, 2)])
    assert len({e.location.object_key for e in entries}) == len(entries)  # one object per flush
    await writer.close()
    assert await _wal_objects(objects) == (1 if first_write_fails else 2)
