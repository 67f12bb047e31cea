"""Bounded decompression (records/compression.py) against data compressed by a real client library's codecs
(kafka-python's kafka.codec: what its producer sends), and the produce path's check of a batch's inflated size
(validate_batches) on batches built by kafka-python's batch builder."""

from __future__ import annotations

import tracemalloc

import pytest
from kafka.codec import gzip_encode, lz4_encode, snappy_encode, zstd_encode

from dray_broker.records import compression as c
from dray_broker.records import decode as rd
from dray_broker.records.batch import (
    CORRUPT_MESSAGE,
    HEADER_SIZE,
    MESSAGE_TOO_LARGE,
    InvalidBatchError,
    validate_batches,
)
from tests.batches import make_batch

MiB = 1024 * 1024
ENCODERS = {
    c.GZIP: gzip_encode,
    c.SNAPPY: lambda data: snappy_encode(data, xerial_compatible=False),  # a raw block, as librdkafka sends
    "xerial": lambda data: snappy_encode(data, xerial_compatible=True),  # as the Java client sends
    c.LZ4: lz4_encode,
    c.ZSTD: zstd_encode,
}
CODEC = {c.GZIP: c.GZIP, c.SNAPPY: c.SNAPPY, "xerial": c.SNAPPY, c.LZ4: c.LZ4, c.ZSTD: c.ZSTD}


def _text(n: int) -> bytes:
    return b"".join(b"record %d of some text; " % i for i in range(n // 20 + 1))[:n]


def _peak_bytes(f) -> int:
    """The most memory Python objects took while f ran (decompressed output is made of bytes objects)."""
    tracemalloc.start()
    try:
        f()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("codec", list(ENCODERS))
def test_round_trip_within_the_limit(codec):
    raw = _text(300_000)
    data = ENCODERS[codec](raw)
    assert c.decompress(CODEC[codec], data, len(raw)) == raw
    assert c.inflated_size(CODEC[codec], data, len(raw)) == len(raw)
    with pytest.raises(c.InflatedTooLarge):
        c.decompress(CODEC[codec], data, len(raw) - 1)
    with pytest.raises(c.InflatedTooLarge):
        c.inflated_size(CODEC[codec], data, len(raw) - 1)


@pytest.mark.parametrize("codec", list(ENCODERS))
def test_a_bomb_stops_at_the_limit_without_inflating(codec):
    """256 MiB of zeros compress to a few hundred KiB (snappy: about 12 MiB); checking them against a 1 MiB limit
    holds no more than the limit and a step."""
    data = ENCODERS[codec](bytes(256 * MiB))

    def check():
        with pytest.raises(c.InflatedTooLarge, match=f"more than {MiB} bytes"):
            c.inflated_size(CODEC[codec], data, MiB)
        with pytest.raises(c.InflatedTooLarge):
            c.decompress(CODEC[codec], data, MiB)

    assert _peak_bytes(check) < 4 * MiB


@pytest.mark.parametrize("codec", list(ENCODERS))
def test_truncated_and_garbage_data_are_errors(codec):
    data = ENCODERS[codec](_text(300_000))
    with pytest.raises(c.DecompressError):
        c.decompress(CODEC[codec], data[: len(data) // 2], 1 << 30)
    with pytest.raises(c.DecompressError):
        c.decompress(CODEC[codec], b"\x01\x02 this is not compressed data", 1 << 30)
    with pytest.raises(c.DecompressError):
        c.decompress(CODEC[codec], b"", 1 << 30)


def test_gzip_members_one_after_another():
    a, b = _text(1000), _text(2000)
    assert c.decompress(c.GZIP, gzip_encode(a) + gzip_encode(b), 3000) == a + b
    with pytest.raises(c.InflatedTooLarge):
        c.decompress(c.GZIP, gzip_encode(a) + gzip_encode(b), 2999)


def test_decode_batch_is_bounded():
    data = make_batch([(b"k", bytes(4 * MiB))], codec="gzip")
    assert len(rd.decode_batch(data, max_inflated=5 * MiB).records[0].value) == 4 * MiB
    with pytest.raises(rd.RecordsTooLarge):
        rd.decode_batch(data, max_inflated=MiB)


# --- the produce path's check ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_validate_refuses_a_batch_that_inflates_beyond_max_message_bytes(codec):
    """A compressed batch far below max.message.bytes whose records inflate beyond it: MESSAGE_TOO_LARGE, as
    Kafka answers a batch over max.message.bytes."""
    data = make_batch([(b"k%d" % i, bytes(256 * 1024)) for i in range(64)], codec=codec)  # 16 MiB of records
    assert len(data) < 1_048_588
    with pytest.raises(InvalidBatchError, match="inflates to more than max.message.bytes") as e:
        validate_batches(data, 1_048_588)
    assert e.value.kafka_error == MESSAGE_TOO_LARGE
    assert validate_batches(data, 17 * MiB).record_count == 64


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_validate_takes_a_batch_exactly_at_the_limit(codec):
    """The limit is the size the batch would have uncompressed: header plus records."""
    plain = make_batch([(b"k%d" % i, _text(5000)) for i in range(20)])
    data = make_batch([(b"k%d" % i, _text(5000)) for i in range(20)], codec=codec)
    assert validate_batches(data, len(plain)).record_count == 20
    with pytest.raises(InvalidBatchError) as e:
        validate_batches(data, len(plain) - 1)
    assert e.value.kafka_error == MESSAGE_TOO_LARGE
    assert len(plain) - HEADER_SIZE == len(rd.decompress(rd.NONE, plain[HEADER_SIZE:]))


def test_validate_answers_corrupt_message_for_undecodable_records():
    from tests.unit.test_records_decode import _rebuild

    plain = make_batch([(b"k", b"v" * 100)])
    bad = _rebuild(plain, c.GZIP, b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(InvalidBatchError) as e:
        validate_batches(bad, 1_048_588)
    assert e.value.kafka_error == CORRUPT_MESSAGE
