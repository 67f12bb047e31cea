"""Does every record of these batches have a key? Asked of batches produced to a compacted topic only (Kafka refuses
a keyless record there: a cleaner keeps the latest record per key, and a record without one has no place).

This is per-record work, so it is not on the produce path of other topics. Per record it reads three varints and
the key length and jumps to the next record (no objects made); a compressed batch is inflated once, bounded by the
topic's max.message.bytes (validate_batches checked that bound already).
"""

from __future__ import annotations

from dray_broker.records.batch import HEADER_SIZE, iter_batch_positions
from dray_broker.records.decode import decompress, read_varint


def keyless_record(data, max_inflated: int) -> int | None:
    """The offset delta of the first record without a key (null key), or None if every record has one. The data
    passed validate_batches (whole v2 batches, CRCs checked); a malformed records section raises
    RecordDecodeError or IndexError."""
    view = memoryview(data)
    for pos, h in iter_batch_positions(view):
        if h.is_control:
            continue
        records = view[pos + HEADER_SIZE: pos + h.size]
        buf = decompress(h.compression, records, max_inflated) if h.compression else records
        at = 0
        for _ in range(h.record_count):
            length, at = read_varint(buf, at)
            end = at + length
            at += 1  # attributes
            _, at = read_varint(buf, at)  # timestamp delta
            offset_delta, at = read_varint(buf, at)
            key_length, _ = read_varint(buf, at)
            if key_length < 0:
                return offset_delta
            at = end
    return None
