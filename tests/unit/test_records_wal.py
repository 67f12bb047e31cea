import uuid

import pytest
from hypothesis import given, strategies as st

from dray_broker.records.batch import (
    CORRUPT_MESSAGE,
    MESSAGE_TOO_LARGE,
    UNSUPPORTED_FOR_MESSAGE_FORMAT,
    InvalidBatchError,
    patch_base_offsets,
    validate_batches,
)
from dray_broker.wal import format as wal
from tests.batches import make_batch, read_batch


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_validate_real_batches(codec):
    a = make_batch([(b"k%d" % i, b"v" * 50) for i in range(7)], codec=codec)
    b = make_batch([(None, b"x")] * 3, codec=codec, timestamp=5)
    s = validate_batches(a + b, 1 << 20)
    assert (s.batch_count, s.record_count, s.batch_records) == (2, 10, (7, 3))
    assert s.batch_sizes == (len(a), len(b))
    assert (s.min_timestamp, s.max_timestamp) == (5, 1_700_000_000_006)


def test_patch_base_offsets_keeps_crc_valid():
    a = make_batch([(b"a", b"1"), (b"b", b"2")])
    b = make_batch([(b"c", b"3")])
    buf = bytearray(a + b)
    patch_base_offsets(buf, 40, (2, 1))
    validate_batches(buf, 1 << 20)  # CRCs still hold
    assert [o for o, *_ in read_batch(bytes(buf[: len(a)]))] == [40, 41]
    assert read_batch(bytes(buf[len(a) :])) == [(42, b"c", b"3")]


def test_bad_batches_get_kafka_errors():
    good = bytearray(make_batch([(b"k", b"v")]))
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    with pytest.raises(InvalidBatchError) as e:
        validate_batches(flipped, 1 << 20)
    assert e.value.kafka_error == CORRUPT_MESSAGE
    old_magic = bytearray(good)
    old_magic[16] = 1
    with pytest.raises(InvalidBatchError) as e:
        validate_batches(old_magic, 1 << 20)
    assert e.value.kafka_error == UNSUPPORTED_FOR_MESSAGE_FORMAT
    with pytest.raises(InvalidBatchError) as e:
        validate_batches(good[:-3], 1 << 20)
    assert e.value.kafka_error == CORRUPT_MESSAGE
    with pytest.raises(InvalidBatchError) as e:
        validate_batches(good, 10)
    assert e.value.kafka_error == MESSAGE_TOO_LARGE


def _chunks(payloads):
    out = []
    for i, batches in enumerate(payloads):
        s = validate_batches(b"".join(batches), 1 << 30)
        out.append(wal.ChunkInput(uuid.UUID(int=i + 1), i, batches, s.batch_count, s.record_count,
                                  s.min_timestamp, s.max_timestamp))
    return out


def test_wal_roundtrip_with_real_batches():
    payloads = [[make_batch([(b"k", b"v" * i)] * (i + 1), codec=c)] for i, c in enumerate(["gzip", "zstd", "lz4"])]
    buffers, table = wal.encode(_chunks(payloads), created_ms=123, broker_id=7)
    blob = b"".join(buffers)
    obj, datas = wal.decode(blob)
    assert (obj.created_ms, obj.broker_id, obj.chunks) == (123, 7, table)
    for c, data, batches in zip(obj.chunks, datas, payloads):
        assert bytes(data) == b"".join(batches)
        # A range read of one chunk verifies on its own.
        wal.verify_chunk(c, blob[c.data_offset : c.data_offset + c.data_length])


def test_wal_corruption_is_refused():
    blob = b"".join(wal.encode(_chunks([[make_batch([(b"k", b"v")])]]), created_ms=1, broker_id=1)[0])
    with pytest.raises(wal.CorruptWalError, match="magic"):
        wal.decode(b"X" + blob[1:])
    with pytest.raises(wal.CorruptWalError, match="truncated"):
        wal.decode(blob[:-5])
    with pytest.raises(wal.CorruptWalError, match="header CRC"):
        wal.decode(blob[:20] + bytes([blob[20] ^ 1]) + blob[21:])
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    with pytest.raises(wal.CorruptWalError, match="chunk CRC"):
        wal.decode(bytes(damaged))


@given(st.lists(st.lists(st.binary(max_size=64), min_size=1, max_size=5), min_size=0, max_size=6))
def test_wal_roundtrip_property(parts):
    payloads = [[make_batch([(None, v) for v in values])] for values in parts]
    buffers, _ = wal.encode(_chunks(payloads), created_ms=0, broker_id=0)
    obj, datas = wal.decode(b"".join(buffers))
    assert [bytes(d) for d in datas] == [b"".join(p) for p in payloads]
    for data, values in zip(datas, parts):
        assert [v for _, _, v in read_batch(bytes(data))] == values
