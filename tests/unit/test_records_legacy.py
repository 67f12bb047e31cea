"""Up-conversion of legacy message sets (magic 0 and 1) to v2 batches, against message sets made by a real client
library (kafka-python's LegacyRecordBatchBuilder), read back with the project's decoder and kafka-python's v2 reader.

kafka-python's builder only writes uncompressed messages and the wrappers it compresses itself (xerial snappy,
LZ4 with KAFKA-1493's broken header checksum for magic 0). The other variants (raw snappy as librdkafka writes it,
LogAppendTime, zstd, nested wrappers, ...) are made with the message writer the builder itself uses
(LegacyRecordBatchBuilder._encode_msg) and kafka-python's codec functions."""

from __future__ import annotations

import struct
import zlib

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.codec import gzip_encode, lz4_encode, lz4_encode_old_kafka, snappy_encode, zstd_encode
from kafka.record import MemoryRecords
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from dray_broker.records.batch import (
    CORRUPT_MESSAGE,
    INVALID_RECORD,
    UNSUPPORTED_COMPRESSION_TYPE,
    UNSUPPORTED_FOR_MESSAGE_FORMAT,
    InvalidBatchError,
    read_header,
    validate_batches,
)
from dray_broker.records.decode import RecordDecodeError, decode_batches, decompress
from dray_broker.records.legacy import up_convert

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3}
NOW = 1_800_000_000_000
MAX = 1_048_588  # Kafka's default max.message.bytes
T0 = 1_700_000_000_000

Rec = tuple[bytes | None, bytes | None]


def _records(n: int = 12) -> list[Rec]:
    """Keys and values with a null key, a null value, an empty value and one value large enough for several xerial
    snappy blocks (kafka-python writes 32 KiB blocks)."""
    out: list[Rec] = [(None, b"null key"), (b"null value", None), (b"empty value", b""), (b"big", b"x%d" * 20_000)]
    out += [(b"k%d" % i, b"value %d " % i * (i + 1)) for i in range(n - len(out))]
    return out


def _legacy_set(magic: int, codec: int, records: list[Rec], timestamps: list[int] | None = None) -> bytes:
    builder = LegacyRecordBatchBuilder(magic, codec, 1 << 30)
    for i, (key, value) in enumerate(records):
        assert builder.append(i, timestamps[i] if timestamps else T0 + 7 * i, key, value) is not None
    return bytes(builder.build())


def _message(magic: int, value: bytes | None, *, attributes: int = 0, timestamp: int = T0, key: bytes | None = None,
             offset: int = 0) -> bytes:
    """One message with any attributes, written by kafka-python's own message writer."""
    builder = LegacyRecordBatchBuilder(magic, 0, 1 << 30)
    builder._buffer.extend(bytearray(builder.size_in_bytes(offset, timestamp, key, value)))
    builder._encode_msg(0, offset, timestamp, key, value, attributes=attributes)
    return bytes(builder._buffer)


def _read_ours(out: bytes):
    batches = decode_batches(out, verify_crc=True)
    assert len(batches) == 1
    return batches[0]


def _read_kafka_python(out: bytes):
    records = MemoryRecords(out)
    batch = records.next_batch()
    assert records.next_batch() is None
    assert batch.magic == 2 and batch.validate_crc()
    return batch, list(batch)


def _check(out: bytes, records: list[Rec], timestamps: list[int], codec: int, *, log_append_time: bool = False):
    """out is one v2 batch of records at offsets 0..n-1, as both readers see it."""
    ours = _read_ours(out)
    assert ours.compression == codec
    assert ours.log_append_time == log_append_time
    assert (ours.base_offset, ours.partition_leader_epoch) == (0, -1)
    assert (ours.producer_id, ours.producer_epoch, ours.base_sequence) == (-1, -1, -1)
    assert not ours.is_transactional and not ours.is_control
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in ours.records] == [
        (i, ts, key, value, ()) for i, ((key, value), ts) in enumerate(zip(records, timestamps))
    ]
    batch, theirs = _read_kafka_python(out)
    assert batch.compression_type == codec
    assert batch.timestamp_type == int(log_append_time)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in theirs] == [
        (i, ts, key, value, []) for i, ((key, value), ts) in enumerate(zip(records, timestamps))
    ]
    summary = validate_batches(out, 1 << 20)
    assert (summary.batch_count, summary.record_count) == (1, len(records))
    assert summary.max_timestamp == max(timestamps)


# --- every magic and codec ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("magic", [0, 1])
def test_client_message_sets_every_magic_and_codec(magic, codec):
    records = _records()
    timestamps = [T0 + 7 * i for i in range(len(records))] if magic == 1 else [-1] * len(records)
    data = _legacy_set(magic, CODECS[codec], records)
    # kafka-python made what the test means: one wrapper message (or one message per record) of that magic.
    assert data[16] == magic and data[17] & 0x07 == CODECS[codec]
    _check(up_convert(data, now_ms=NOW, max_bytes=MAX), records, timestamps, CODECS[codec])


def test_several_uncompressed_messages_keep_their_order_and_timestamps():
    records = [(b"k%d" % i, b"v%d" % i) for i in range(50)]
    timestamps = [T0 + (i * 37) % 11 for i in range(50)]  # not monotonic: the base is the first, the max the max
    out = up_convert(_legacy_set(1, 0, records, timestamps), now_ms=NOW, max_bytes=MAX)
    assert read_header(out).base_timestamp == timestamps[0]
    _check(out, records, timestamps, 0)


def test_memoryview_and_bytearray_input():
    data = _legacy_set(1, CODECS["gzip"], _records(5))
    assert up_convert(memoryview(data), now_ms=NOW, max_bytes=MAX) == up_convert(data, now_ms=NOW, max_bytes=MAX)
    assert up_convert(memoryview(bytearray(data))[0:], now_ms=NOW, max_bytes=MAX) == up_convert(data, now_ms=NOW, max_bytes=MAX)


def test_wrappers_and_plain_messages_mixed_take_the_first_wrappers_codec():
    a, b, c = [(b"a%d" % i, b"A") for i in range(3)], [(b"b", None)], [(None, b"c%d" % i) for i in range(4)]
    data = _legacy_set(1, 0, b) + _legacy_set(1, CODECS["snappy"], a) + _legacy_set(1, CODECS["gzip"], c)
    timestamps = [T0] + [T0 + 7 * i for i in range(3)] + [T0 + 7 * i for i in range(4)]
    _check(up_convert(data, now_ms=NOW, max_bytes=MAX), b + a + c, timestamps, CODECS["snappy"])


@pytest.mark.parametrize("magic", [0, 1])
def test_raw_snappy_block_like_librdkafka(magic):
    records = _records(6)
    inner = _legacy_set(magic, 0, records)
    data = _message(magic, snappy_encode(inner, xerial_compatible=False), attributes=CODECS["snappy"])
    timestamps = [T0 + 7 * i for i in range(6)] if magic == 1 else [-1] * 6
    _check(up_convert(data, now_ms=NOW, max_bytes=MAX), records, timestamps, CODECS["snappy"])


def test_magic0_lz4_has_kafka_1493_broken_header_checksum_and_still_decodes():
    records = _records(5)
    frame = lz4_encode_old_kafka(_legacy_set(0, 0, records))
    # Really broken: not the checksum of FLG and BD, and a standard LZ4 decoder (cramjam) rejects the frame.
    assert frame[6] != (xxhash.xxh32_intdigest(frame[4:6]) >> 8) & 0xFF
    with pytest.raises(RecordDecodeError, match="headerChecksum"):
        decompress(CODECS["lz4"], frame)
    _check(up_convert(_message(0, frame, attributes=CODECS["lz4"]), now_ms=NOW, max_bytes=MAX), records, [-1] * 5, CODECS["lz4"])


def test_magic0_lz4_with_a_correct_header_checksum_also_decodes():
    records = _records(5)
    frame = lz4_encode(_legacy_set(0, 0, records))
    assert frame[4] & 0x08  # with the optional content size, so the checksum is further on
    _check(up_convert(_message(0, frame, attributes=CODECS["lz4"]), now_ms=NOW, max_bytes=MAX), records, [-1] * 5, CODECS["lz4"])


def test_magic1_lz4_with_the_broken_header_checksum_is_corrupt():
    # As in Kafka: only magic 0 ignores the LZ4 header checksum.
    frame = lz4_encode_old_kafka(_legacy_set(1, 0, _records(5)))
    _raises(_message(1, frame, attributes=CODECS["lz4"]), CORRUPT_MESSAGE, "lz4")


@pytest.mark.parametrize("codec", CODECS)
def test_log_append_time_wrapper_or_message_gives_a_log_append_time_batch(codec):
    records = _records(4)
    if codec == "none":
        data = b"".join(_message(1, v, key=k, attributes=0x08, offset=i) for i, (k, v) in enumerate(records))
    else:
        inner = _legacy_set(1, CODECS[codec], records)
        # The wrapper kafka-python built, with the LogAppendTime bit set (and its CRC rewritten).
        data = _patch(inner, attributes=inner[17] | 0x08)
    out = up_convert(data, now_ms=NOW, max_bytes=MAX)
    _check(out, records, [NOW] * 4, CODECS[codec], log_append_time=True)
    assert read_header(out).base_timestamp == NOW


def test_log_append_time_bit_is_ignored_for_magic0():
    records = [(b"k", b"v")]
    data = _message(0, b"v", key=b"k", attributes=0x08)
    _check(up_convert(data, now_ms=NOW, max_bytes=MAX), records, [-1], 0)


# --- errors -------------------------------------------------------------------------------------------------------


def _raises(data: bytes, kafka_error: int, match: str):
    with pytest.raises(InvalidBatchError, match=match) as e:
        up_convert(data, now_ms=NOW, max_bytes=MAX)
    assert e.value.kafka_error == kafka_error


def _patch(message: bytes, *, magic: int | None = None, attributes: int | None = None, size: int | None = None,
           tail: bytes = b"") -> bytes:
    """One message with fields changed (and bytes appended) and its CRC recomputed."""
    data = bytearray(message + tail)
    if magic is not None:
        data[16] = magic
    if attributes is not None:
        data[17] = attributes
    struct.pack_into(">i", data, 8, len(data) - 12 if size is None else size)
    struct.pack_into(">I", data, 12, zlib.crc32(data[16:]))
    return bytes(data)


def test_empty():
    _raises(b"", CORRUPT_MESSAGE, "empty")


@pytest.mark.parametrize("cut", [1, 5, 30])
def test_truncated_message_set(cut):
    data = _legacy_set(1, 0, [(b"k%d" % i, b"v" * 40) for i in range(3)])
    _raises(data[:-cut], CORRUPT_MESSAGE, "runs past|truncated")


def test_partial_trailing_message_is_an_error_for_a_producer():
    data = _legacy_set(0, 0, [(b"k", b"v")]) + _legacy_set(0, 0, [(b"k2", b"v2")])[:10]
    _raises(data, CORRUPT_MESSAGE, "truncated")


@pytest.mark.parametrize("size", [1 << 30, -5])
def test_size_field_that_does_not_fit(size):
    data = bytearray(_legacy_set(1, 0, [(b"k", b"v")]))
    struct.pack_into(">i", data, 8, size)
    _raises(bytes(data), CORRUPT_MESSAGE, f"message size {size}")


def test_size_below_the_minimum():
    _raises(_patch(_message(0, b"v"), size=4), CORRUPT_MESSAGE, "below the minimum")
    one = _message(1, None, key=None)  # 22 bytes: the smallest magic 1 message
    _raises(_patch(one, size=20), CORRUPT_MESSAGE, "below the minimum for magic 1")


def test_bytes_after_the_value():
    _raises(_patch(_message(1, b"v"), tail=b"junk"), CORRUPT_MESSAGE, "after its value")


def test_key_length_past_the_message():
    data = bytearray(_message(0, b"value", key=b"k"))
    struct.pack_into(">i", data, 18, 1000)
    _raises(_patch(bytes(data)), CORRUPT_MESSAGE, "runs past the message")


@pytest.mark.parametrize("magic", [0, 1])
def test_flipped_byte_is_a_crc_mismatch(magic):
    data = bytearray(_legacy_set(magic, 0, [(b"key", b"some value")]))
    data[-3] ^= 0x20
    _raises(bytes(data), CORRUPT_MESSAGE, "CRC mismatch")


def test_crc_is_plain_crc32_not_crc32c():
    data = bytearray(_legacy_set(1, 0, [(b"key", b"v")]))
    assert struct.unpack_from(">I", data, 12)[0] == zlib.crc32(data[16:])


@pytest.mark.parametrize("magic", [2, 5, 0xFF])
def test_unknown_magic(magic):
    data = _patch(_legacy_set(1, 0, [(b"k", b"v")]), magic=magic)
    _raises(data, UNSUPPORTED_FOR_MESSAGE_FORMAT, f"magic {magic}")
    # Also after a good message.
    _raises(_legacy_set(1, 0, [(b"k", b"v")]) + data, UNSUPPORTED_FOR_MESSAGE_FORMAT, f"magic {magic}")


@pytest.mark.parametrize("magic", [0, 1])
def test_zstd_is_not_allowed_in_legacy_messages(magic):
    data = _message(magic, zstd_encode(_legacy_set(magic, 0, [(b"k", b"v")])), attributes=4)
    _raises(data, UNSUPPORTED_COMPRESSION_TYPE, "zstd")


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_unknown_codec(codec):
    _raises(_message(1, b"whatever", attributes=codec), UNSUPPORTED_COMPRESSION_TYPE, f"codec {codec}")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4"])
def test_decompression_failure(codec):
    garbage = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x05abc" if codec == "snappy" else b"nope"
    _raises(_message(1, garbage, attributes=CODECS[codec]), CORRUPT_MESSAGE, "cannot decompress|snappy")


def test_nested_wrapper():
    inner_wrapper = _legacy_set(1, CODECS["gzip"], [(b"k", b"v")])
    _raises(_message(1, gzip_encode(inner_wrapper), attributes=CODECS["gzip"]), INVALID_RECORD, "nested")


def test_inner_magic_must_match_the_wrapper():
    inner = _legacy_set(0, 0, [(b"k", b"v")])
    _raises(_message(1, gzip_encode(inner), attributes=CODECS["gzip"]), INVALID_RECORD, "differs")


def test_wrapper_with_null_value_or_no_messages():
    _raises(_message(1, None, attributes=CODECS["gzip"]), INVALID_RECORD, "null value")
    _raises(_message(1, gzip_encode(b""), attributes=CODECS["gzip"]), INVALID_RECORD, "no messages")


def test_corrupt_inner_message():
    inner = bytearray(_legacy_set(1, 0, [(b"k", b"v"), (b"k2", b"v2")]))
    inner[-1] ^= 1
    _raises(_message(1, gzip_encode(bytes(inner)), attributes=CODECS["gzip"]), CORRUPT_MESSAGE, "CRC mismatch")
    _raises(_message(1, gzip_encode(bytes(inner[:-4])), attributes=CODECS["gzip"]), CORRUPT_MESSAGE, "runs past")


# --- property -----------------------------------------------------------------------------------------------------

_maybe_bytes = st.one_of(st.none(), st.binary(max_size=300))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.tuples(_maybe_bytes, _maybe_bytes), min_size=1, max_size=30),
    timestamps=st.lists(st.integers(min_value=-1, max_value=1 << 45), min_size=30, max_size=30),
    codec=st.sampled_from(["none", "gzip"]),
)
def test_round_trip_magic1(records, timestamps, codec):
    timestamps = timestamps[: len(records)]
    out = up_convert(_legacy_set(1, CODECS[codec], records, timestamps), now_ms=NOW, max_bytes=MAX)
    _check(out, records, timestamps, CODECS[codec])
