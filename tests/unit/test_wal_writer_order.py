"""The WAL writer commits an idempotent producer's appends in order, never one after an append that failed, and
never one whose guard refuses (produce/producers.py), over real stores."""

import uuid

import pytest

from dray_broker.index.offsets import OffsetIndex, PartitionRef
from dray_broker.metadata import open_metadata_store
from dray_broker.objectstore import ObjectStoreError
from dray_broker.objectstore.local import LocalObjectStore
from dray_broker.produce.wal_writer import FlushError, WalWriter
from dray_broker.records.batch import validate_batches
from tests.batches import make_batch


class RefusingStore(LocalObjectStore):
    """A local store that refuses its next `refuse` puts (a full disk, an unreachable S3)."""

    refuse = 0

    async def put(self, key, data, *, create_only=True):
        if self.refuse:
            self.refuse -= 1
            raise ObjectStoreError("the disk is full")
        await super().put(key, data, create_only=create_only)


@pytest.fixture
async def stores(tmp_path):
    meta = await open_metadata_store(f"sqlite://{tmp_path}/meta.db")
    objects = RefusingStore(tmp_path / "objects")
    yield OffsetIndex(meta), objects
    await meta.close()
    await objects.close()


def _append(writer: WalWriter, p: PartitionRef, seq: int, **kw):
    data = make_batch([(b"k", b"%d" % seq)], producer_id=7, producer_epoch=0, base_sequence=seq)
    return writer.append(p, data, validate_batches(data, 1 << 20), **kw)


async def _outcome(future):
    try:
        return await future
    except FlushError as e:
        return str(e)


async def test_an_append_after_a_failed_one_is_not_committed(stores):
    index, objects = stores
    writer = WalWriter(objects, index, broker_id=1, flush_ms=1000, flush_bytes=1 << 30)
    objects.refuse = 1
    p = PartitionRef(uuid.uuid4(), 0)
    first = _append(writer, p, 0)
    writer.flush()  # its object write fails
    second = _append(writer, p, 1, after=first)
    other = _append(writer, PartitionRef(uuid.uuid4(), 0), 0)  # another partition in the same flush
    writer.flush()
    assert "WAL write failed" in await _outcome(first)
    assert "earlier batch" in await _outcome(second)
    assert await _outcome(other) == 0
    assert await index.log_end_offset(p) == 0

    again = _append(writer, p, 0)  # the producer retries both, in order
    then = _append(writer, p, 1, after=again)
    writer.flush()
    assert (await again, await then) == (0, 1)
    await writer.close()


async def test_appends_chained_in_one_flush_and_across_flushes_commit_in_order(stores):
    index, objects = stores
    writer = WalWriter(objects, index, broker_id=1, flush_ms=1000, flush_bytes=1 << 30)
    p = PartitionRef(uuid.uuid4(), 0)
    a = _append(writer, p, 0)
    b = _append(writer, p, 1, after=a)  # same index entry as a
    writer.flush()
    c = _append(writer, p, 2, after=b)  # the next entry
    writer.flush()
    assert [await f for f in (a, b, c)] == [0, 1, 2]
    await writer.close()


async def test_a_guard_that_refuses_fails_the_entry(stores):
    index, objects = stores
    writer = WalWriter(objects, index, broker_id=1, flush_ms=1000, flush_bytes=1 << 30)
    p = PartitionRef(uuid.uuid4(), 0)
    refused = _append(writer, p, 0, guard=lambda: "the reservation expired")
    writer.flush()
    assert await _outcome(refused) == "the reservation expired"
    assert await index.log_end_offset(p) == 0
    await writer.close()
