"""The batch encoder and the compacted-range reader: batches rebuilt from Parquet hold the records of the WAL,
for every codec, on the local object store and on S3 (MinIO) with Oxia, and DuckDB reads the tables on both."""

from __future__ import annotations

import asyncio
import uuid

import pyarrow as pa
import pytest
from kafka.record.default_records import DefaultRecordBatch

from dray_broker.fetch.compacted import CompactedReader, batches_from_table
from dray_broker.keyspace import IndexFamily
from dray_broker.records.decode import decode_batch
from dray_broker.records.encode import encode_batch, varint
from dray_pipelines import compaction, sql
from dray_pipelines.convert import RowGroupBuilder
from dray_pipelines.lake import open_lake
from tests import services
from tests.pipelines.conftest import lake_settings
from tests.pipelines.helpers import assert_agree, read_log, write_log

RECORDS = [
    (0, 0, b"k0", b"v" * 3000, [("h", b"x"), ("h", None), ("other", b"")]),
    (1, -7, None, b"", []),
    (2, 1 << 40, b"", None, [("\u00e9t\u00e9", b"\x00\xff")]),
    (3, 5, b"k" * 20000, b"v", []),
]


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4])
def test_encoded_batches_decode_with_a_client_library_and_ours(codec):
    data = encode_batch(RECORDS, base_offset=1000, base_timestamp=1_700_000_000_000, max_timestamp=1_700_000_000_005,
                        attributes=0, producer_id=7, producer_epoch=2, base_sequence=40, compression=codec)
    ours = decode_batch(data, verify_crc=True)
    assert ours.compression == codec and (ours.producer_id, ours.producer_epoch, ours.base_sequence) == (7, 2, 40)
    assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in ours.records] == [
        (1000 + o, 1_700_000_000_000 + t, k, v, h) for o, t, k, v, h in RECORDS]
    theirs = DefaultRecordBatch(data)
    assert theirs.validate_crc() and theirs.compression_type == codec
    assert [(r.offset, r.key, r.value, list(r.headers)) for r in theirs] == [
        (1000 + o, k, v, h) for o, _, k, v, h in RECORDS]


def test_varints():
    for n in (0, 1, -1, 63, -64, 64, 1 << 14, -(1 << 14), (1 << 31) - 1, -(1 << 31), (1 << 62), -(1 << 63)):
        data = varint(n)
        from dray_pipelines.convert import _varint

        assert _varint(data, 0) == (n, len(data))


def test_rows_round_trip_through_the_table_schema():
    """Batches -> rows (convert.py) -> batches (compacted.py): same batches, boundaries and producer fields."""
    batches = []
    for i, codec in enumerate((0, 1, 2, 3, 4)):
        records = [(j, j * 3 - 1, b"k%d" % j, b"v%d" % (i * 10 + j), [("i", b"%d" % i)]) for j in range(i + 1)]
        batches.append(encode_batch(records, base_offset=0, base_timestamp=1_000 + i, max_timestamp=2_000,
                                    attributes=0x08 if i == 3 else 0, producer_id=9, producer_epoch=1,
                                    base_sequence=i * 10, compression=codec))
    builder = RowGroupBuilder(partition=3)
    builder.add_batches(b"".join(batches), base_offset=500)
    table, info = builder.build()
    assert (info["start"], info["end"], info["rows"]) == (500, 515, 15)
    loaded = batches_from_table(table, 500, 515)
    assert loaded.batch_records == (1, 2, 3, 4, 5)
    offset = 500
    pos = 0
    for original, size in zip(batches, loaded.batch_sizes):
        a = decode_batch(original, base_offset=offset)
        b = decode_batch(bytes(loaded.data[pos:pos + size]), verify_crc=True)
        assert a.records == b.records
        assert (a.attributes, a.producer_id, a.producer_epoch, a.base_sequence) == (
            b.attributes, b.producer_id, b.producer_epoch, b.base_sequence)
        offset += len(a.records)
        pos += size
    # A range that starts and ends inside batches: the cut batches start at the first row asked for.
    part = batches_from_table(table, 502, 508)
    assert sum(part.batch_records) == 6 and part.batch_records == (1, 3, 2)
    first = decode_batch(bytes(part.data[:part.batch_sizes[0]]))
    assert first.base_offset == 502 and first.base_sequence == 11


def _roundtrip(settings, topic="reader"):
    asyncio.run(write_log(settings, topic, 2, batches=15, records_per_batch=30, flushes_per_partition=5))
    expected = {p: asyncio.run(read_log(settings, topic, p)) for p in (0, 1)}

    async def compact_all():
        async with open_lake(settings) as lake:
            t = await lake.topic(topic)
            for p in (0, 1):
                state = await lake.state(t, p)
                for r in await compaction.compact_once(lake, topic, p, state.log_end):
                    assert r.action in ("staged", "committed", "swapped"), r

    asyncio.run(compact_all())
    assert_agree(settings, topic, expected, fully_compacted=True)
    return expected


def test_reader_on_the_local_store(settings):
    expected = _roundtrip(settings)
    # Several row groups, each its own index entry, read with range reads of the file.
    from tests.pipelines.helpers import log_state

    assert len(asyncio.run(log_state(settings, "reader", 0)).pq_ranges) > 3
    # Every fetch size ends somewhere else inside the rebuilt data; the records are the same.
    assert asyncio.run(read_log(settings, "reader", 1, max_bytes=1)) == expected[1]
    assert asyncio.run(read_log(settings, "reader", 1, start=77, max_bytes=3000)) == [r for r in expected[1]
                                                                                      if r[0] >= 77]


def test_reader_codec_option(settings):
    _roundtrip(settings)

    async def read_first(codec):
        async with open_lake(settings) as lake:
            t = await lake.topic("reader")
            entry = (await lake.index.entries(t.partition(0), IndexFamily.PARQUET))[0]
            return await CompactedReader(lake.objects, codec=codec).load(entry)

    original = asyncio.run(read_first("original"))
    plain = asyncio.run(read_first("none"))
    codecs = {decode_batch(bytes(original.data), 0).compression}
    assert codecs and plain.batch_records == original.batch_records
    assert decode_batch(bytes(plain.data)).compression == 0


@pytest.mark.s3
@pytest.mark.oxia
def test_on_s3_and_oxia(tmp_path, s3_service, oxia_service):
    # An Oxia of its own: the session's server holds other tests' clusters, whose topics dray sql would also read.
    oxia = services.start_oxia()
    try:
        settings = lake_settings(tmp_path / "data", object_store=s3_service.url(f"lake-{uuid.uuid4().hex[:8]}"),
                                 metadata=f"oxia://{oxia.address}")
        topic = f"s3-{uuid.uuid4().hex[:8]}"
        expected = _roundtrip(settings, topic)
        con = sql.connect(settings)
        got = con.execute(f'SELECT partition, count(*) FROM {sql.quote(topic)} GROUP BY ALL ORDER BY 1').fetchall()
        assert got == [(p, len(expected[p])) for p in (0, 1)]
        con.close()
    finally:
        oxia.stop()


def test_arrow_schema_matches_the_table(settings):
    """Data files are written with the field ids of the table as the catalog holds it (DuckDB maps by id)."""
    expected = _roundtrip(settings)
    con = sql.connect(settings)
    rows = con.execute('SELECT "offset", key, value, headers FROM reader WHERE partition = 0 ORDER BY "offset"').fetchall()
    assert [(o, k, v, tuple((h["key"], h["value"]) for h in hs)) for o, k, v, hs in rows] == [
        (r[0], r[2], r[3], r[4]) for r in expected[0]]
    con.close()
    assert isinstance(pa.table({"x": [1]}), pa.Table)
