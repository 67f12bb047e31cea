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
        buf = decompress(h.compression, records, max_inflated) if h.compression else bytes(records)
        delta = _first_keyless(buf, h.record_count)
        if delta is not None:
            return delta
    return None


def _first_keyless(buf: bytes, count: int) -> int | None:
    """Per record: its length (to jump to the next one), then past attributes, timestamp delta and offset delta to
    the key length, a zigzag varint that is -1 (the byte 0x01) for a null key. Single-byte varints, the common
    case, are read inline."""
    at = 0
    for i in range(count):
        b = buf[at]
        if b < 0x80:
            length, at = b >> 1, at + 1
        else:
            length, at = read_varint(buf, at)
        end = at + length
        at += 1  # attributes
        while buf[at] & 0x80:  # timestamp delta: skipped
            at += 1
        at += 1
        if buf[at] < 0x80:
            offset_delta, at = buf[at], at + 1
            offset_delta = (offset_delta >> 1) ^ -(offset_delta & 1)
        else:
            offset_delta, at = read_varint(buf, at)
        if buf[at] == 0x01:  # key length -1
            return offset_delta
        at = end
    return None
