"""Recompression to a topic's codec (records/recompress.py) against batches made by a real client library
(kafka-python), every codec to every codec: the client reads the same records back, every header field but the
codec, length and CRC is kept, and batches already in the codec are passed through as they are."""

from __future__ import annotations

import pytest
from kafka.record.default_records import DefaultRecordBatch

from dray_broker.records.batch import HEADER_SIZE, iter_batch_positions, validate_batches
from dray_broker.records.decode import RecordDecodeError
from dray_broker.records.recompress import TOPIC_CODECS, needs_recompression, recompress
from tests.batches import CODEC_IDS, make_batch

CODECS = list(CODEC_IDS)


def _records(n: int):
    return [(None if i % 4 == 0 else b"k%d" % i, None if i % 9 == 5 else b"value-%d-" % i * (i % 50))
            for i in range(n)]


def _client_view(data: bytes):
    """(header fields but codec, length and CRC, records) of each batch, as the client library reads them."""
    out = []
    for pos, h in iter_batch_positions(data):
        batch = DefaultRecordBatch(data[pos : pos + h.size])
        assert batch.validate_crc()
        records = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in batch]
        out.append(((h.base_offset, h.last_offset_delta, h.base_timestamp, h.max_timestamp, h.producer_id,
                     h.producer_epoch, h.base_sequence, h.record_count, h.attributes & ~0x07), records))
    return out


@pytest.mark.parametrize("source", CODECS)
@pytest.mark.parametrize("target", CODECS)
def test_every_codec_to_every_codec(source, target):
    data = make_batch(_records(30), codec=source, producer_id=7, producer_epoch=2, base_sequence=40) + \
        make_batch(_records(12), codec=source, producer_id=7, producer_epoch=2, base_sequence=70)
    codec = CODEC_IDS[target]
    assert {h.compression for _, h in iter_batch_positions(data)} == {CODEC_IDS[source]}
    assert needs_recompression(data, codec) == (source != target)
    out = recompress(data, codec)
    assert {h.compression for _, h in iter_batch_positions(out)} == {codec}
    assert _client_view(out) == _client_view(data)
    summary = validate_batches(out, 1 << 20)
    assert summary.batch_records == (30, 12) and (summary.base_sequence, summary.last_sequence) == (40, 81)
    if source == target:
        assert out == data  # kept as sent


def test_only_batches_in_another_codec_change():
    kept = make_batch(_records(5), codec="zstd")
    changed = make_batch(_records(5), codec="gzip")
    out = recompress(kept + changed, CODEC_IDS["zstd"])
    assert out[: len(kept)] == kept
    assert _client_view(out) == _client_view(kept + changed)


def test_corrupt_compressed_records_raise():
    data = bytearray(make_batch(_records(10), codec="gzip"))
    data[HEADER_SIZE + 12 : HEADER_SIZE + 20] = b"\xff" * 8  # inside the gzip stream (the CRC is not checked here)
    with pytest.raises(RecordDecodeError):
        recompress(bytes(data), CODEC_IDS["zstd"])


def test_kafka_compression_type_values():
    assert TOPIC_CODECS == {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4, "producer": None}
