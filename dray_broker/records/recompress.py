"""Recompression on the way in, as Kafka's LogValidator does it: a topic whose compression.type names a codec
stores every batch with that codec; a batch that arrives with another one is recompressed.

The common cases cost nothing: a topic on `producer` (the default) or a batch already in the topic's codec is
stored as sent. Recompression itself does no per-record work: v2 records are the same bytes whatever the codec,
so each batch's records section is decompressed and compressed again whole, under a new header (length, codec
bits, CRC) that keeps every other field (offset delta, timestamps, producer id, epoch and sequence). It runs on
the event loop (cramjam holds the GIL, so a thread would not help): a topic pays for it only when its producers
send another codec than the one it asks for, as with Kafka.
"""

from __future__ import annotations

from dray_broker.records.batch import COMPRESSION_MASK, HEADER_SIZE, iter_batch_positions
from dray_broker.records.decode import GZIP, LZ4, NONE, SNAPPY, ZSTD, decompress
from dray_broker.records.encode import compress, frame_batch

PRODUCER = "producer"
# Kafka's compression.type values (BrokerCompressionType) and the codec each stores batches with.
TOPIC_CODECS: dict[str, int | None] = {
    "uncompressed": NONE, "gzip": GZIP, "snappy": SNAPPY, "lz4": LZ4, "zstd": ZSTD, PRODUCER: None,
}


def needs_recompression(data, codec: int) -> bool:
    """Whether any batch of data is compressed otherwise than with codec."""
    return any(h.compression != codec for _, h in iter_batch_positions(data))


def recompress(data, codec: int) -> bytes:
    """The batches of data (validated: whole v2 batches with good CRCs), each with its records compressed with
    codec. Raises RecordDecodeError if a batch's records cannot be decompressed."""
    view = memoryview(data)
    out = []
    for pos, h in iter_batch_positions(view):
        if h.compression == codec:
            out.append(view[pos : pos + h.size])
            continue
        records = decompress(h.compression, view[pos + HEADER_SIZE : pos + h.size])
        out.append(frame_batch(
            compress(codec, records), base_offset=h.base_offset, partition_leader_epoch=h.partition_leader_epoch,
            attributes=(h.attributes & ~COMPRESSION_MASK) | codec, last_offset_delta=h.last_offset_delta,
            base_timestamp=h.base_timestamp, max_timestamp=h.max_timestamp, producer_id=h.producer_id,
            producer_epoch=h.producer_epoch, base_sequence=h.base_sequence, record_count=h.record_count,
        ))
    return b"".join(out)
