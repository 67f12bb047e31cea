"""Record batches made by a real client library (kafka-python's v2 batch builder), for unit tests."""

from __future__ import annotations

from kafka.record.default_records import DefaultRecordBatchBuilder, DefaultRecordBatch

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def make_batch(records: list[tuple[bytes | None, bytes | None]], *, codec: str = "none", timestamp: int = 1_700_000_000_000,
               producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=CODEC_IDS[codec], is_transactional=False, producer_id=producer_id,
        producer_epoch=producer_epoch, base_sequence=base_sequence, batch_size=1 << 30,
    )
    for i, (key, value) in enumerate(records):
        builder.append(i, timestamp + i, key, value, [("h", b"%d" % i)])
    return bytes(builder.build())


def read_batch(data: bytes) -> list[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of each record, decoded by the client library."""
    return [(r.offset, r.key, r.value) for r in DefaultRecordBatch(data)]
