"""The fetch reader over real stores: every offset is returned once, whatever the byte budget."""

import uuid

import pytest

from dray_broker.fetch.cache import LoadedRange
from dray_broker.fetch.reader import OffsetOutOfRange, PartitionReader
from dray_broker.index.offsets import OffsetIndex, PartitionRef
from dray_broker.metadata import open_metadata_store
from dray_broker.objectstore import open_object_store
from dray_broker.produce.wal_writer import WalWriter
from dray_broker.records.batch import validate_batches
from tests.batches import make_batch, read_batch


@pytest.fixture
async def stores(tmp_path):
    meta = await open_metadata_store(f"sqlite://{tmp_path}/meta.db")
    objects = open_object_store(f"file://{tmp_path}/objects")
    yield meta, objects
    await meta.close()
    await objects.close()


async def _produce(writer, p, flushes):
    """flushes: list of flushes, each a list of batches (each a list of values)."""
    for batches in flushes:
        futures = []
        for values in batches:
            data = make_batch([(None, v) for v in values])
            futures.append(writer.append(p, data, validate_batches(data, 1 << 20)))
        writer.flush()
        for f in futures:
            await f


@pytest.mark.parametrize("budget", [1, 150, 400, 10_000])
@pytest.mark.parametrize("cold_cache", [False, True])
async def test_read_returns_each_offset_once(stores, budget, cold_cache):
    meta, objects = stores
    index = OffsetIndex(meta)
    warm = PartitionReader(objects, index, 1 << 20)
    writer = WalWriter(objects, index, broker_id=1, flush_ms=1000, flush_bytes=1 << 30, on_commit=warm.committed)
    p = PartitionRef(uuid.uuid4(), 0)
    flushes = [[[b"a%d" % i for i in range(3)], [b"b"], [b"c%d" % i for i in range(5)]], [[b"d"]], [[b"e%d" % i for i in range(4)], [b"f"]]]
    await _produce(writer, p, flushes)
    expected = [v for batches in flushes for values in batches for v in values]
    reader = PartitionReader(objects, index, 1 << 20) if cold_cache else warm
    seen = []
    offset = 0
    while offset < len(expected):
        result = await reader.read(p, offset, budget)
        assert result.high_watermark == len(expected)
        records = [r for r in read_batch_all(bytes(result.records)) if r[0] >= offset]
        assert records, f"no progress at offset {offset}"
        assert [o for o, _, _ in records] == list(range(offset, offset + len(records)))
        seen += [v for _, _, v in records]
        offset += len(records)
    assert seen == expected
    assert len((await reader.read(p, len(expected), budget)).records) == 0
    with pytest.raises(OffsetOutOfRange):
        await reader.read(p, len(expected) + 1, budget)


def read_batch_all(data: bytes):
    out = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos + 8 : pos + 12], "big") + 12
        out += read_batch(data[pos : pos + size])
        pos += size
    return out


def test_slice_from_keeps_whole_batches_within_the_budget():
    """Batches of 3, 1 and 2 records (10, 20 and 30 bytes) of a range starting at offset 100."""
    loaded = LoadedRange(bytearray(range(60)), (3, 1, 2), (10, 20, 30))

    def sliced(offset, budget, first=False):
        view, complete = loaded.slice_from(100, offset, budget, first)
        assert view.obj is loaded.data  # a view of the cached bytes, not a copy
        return bytes(view), complete

    data = bytes(range(60))
    assert sliced(100, 1000) == (data, True)
    assert sliced(102, 1000) == (data, True)  # from the batch holding offset 102
    assert sliced(103, 1000) == (data[10:], True)
    assert sliced(105, 1000) == (data[30:], True)
    assert sliced(100, 30) == (data[:30], False)  # exactly two batches
    assert sliced(100, 29) == (data[:10], False)
    assert sliced(103, 5) == (b"", False)  # nothing fits
    assert sliced(103, 5, first=True) == (data[10:30], False)  # but the first batch comes whole
    assert sliced(104, 0, first=True) == (data[30:], True)
    assert sliced(104, -5, first=True) == (data[30:], True)
    assert sliced(104, -5) == (b"", False)
