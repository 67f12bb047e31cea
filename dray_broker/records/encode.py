"""Record batch v2 encoder: records -> a batch with its CRC32C, optionally compressed.

The produce and fetch paths never build batches (producers do). This is for batches rebuilt from compacted
(Parquet) data, so that a consumer reading compacted offsets gets the same records, offsets, timestamps, keys,
values and headers it would have read from the WAL; and for tools and tests.

Layout as in batch.py: baseOffset i64, batchLength i32, partitionLeaderEpoch i32, magic i8 (2), crc u32 (CRC32C
of attributes..end), attributes i16, lastOffsetDelta i32, baseTimestamp i64, maxTimestamp i64, producerId i64,
producerEpoch i16, baseSequence i32, recordCount i32, records. Each record: length varint, attributes int8 (0),
timestampDelta varlong, offsetDelta varint, key, value (varint length, -1 = null), header count varint, headers
(key varint length + UTF-8 bytes, value varint length (-1 = null) + bytes). All varints are zigzag.

Codecs: 0 none, 1 gzip, 2 snappy (xerial framing, as the Java client writes it; librdkafka reads it too),
3 lz4 (frame format with independent blocks, as Kafka requires), 4 zstd.
"""

from __future__ import annotations

import struct
from typing import Iterable, Sequence

import cramjam
from crc32c import crc32c

from dray_broker.records.batch import COMPRESSION_MASK, CRC_START, HEADER_SIZE, LOG_OVERHEAD

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
_XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
_XERIAL_BLOCK = 32 * 1024

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc | attributes, lastOffsetDelta, baseTimestamp,
# maxTimestamp, producerId, producerEpoch, baseSequence, recordCount
_PREFIX = struct.Struct(">qiibI")
_AFTER_CRC = struct.Struct(">hiqqqhii")

# One record's fields: (offset_delta, timestamp_delta, key, value, headers)
RecordFields = tuple[int, int, "bytes | None", "bytes | None", Sequence[tuple[str, "bytes | None"]]]


def _zigzag_bytes(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# Varints of small numbers (lengths, deltas, counts) come from a table; others are computed.
_SMALL_MIN, _SMALL_MAX = -1, 1 << 14
_SMALL = [_zigzag_bytes(n) for n in range(_SMALL_MIN, _SMALL_MAX)]


def varint(n: int) -> bytes:
    """The zigzag varint (or varlong) encoding of n."""
    if _SMALL_MIN <= n < _SMALL_MAX:
        return _SMALL[n - _SMALL_MIN]
    return _zigzag_bytes(n)


def encode_records(records: Iterable[RecordFields]) -> bytearray:
    """The records section of a batch, uncompressed."""
    out = bytearray()
    small, lo, hi = _SMALL, _SMALL_MIN, _SMALL_MAX
    v = varint
    for offset_delta, ts_delta, key, value, headers in records:
        body = bytearray(b"\x00")  # record attributes
        body += small[ts_delta - lo] if lo <= ts_delta < hi else v(ts_delta)
        body += small[offset_delta - lo] if lo <= offset_delta < hi else v(offset_delta)
        if key is None:
            body += b"\x01"  # -1
        else:
            body += v(len(key))
            body += key
        if value is None:
            body += b"\x01"
        else:
            body += v(len(value))
            body += value
        if headers:
            body += v(len(headers))
            for hkey, hvalue in headers:
                kb = hkey.encode() if isinstance(hkey, str) else hkey
                body += v(len(kb))
                body += kb
                if hvalue is None:
                    body += b"\x01"
                else:
                    body += v(len(hvalue))
                    body += hvalue
        else:
            body += b"\x00"
        out += v(len(body))
        out += body
    return out


def compress(codec: int, data: bytes | bytearray, level: int | None = None) -> bytes:
    """Compress a records section with a Kafka codec (level: gzip, lz4 and zstd; None = a default)."""
    if codec == NONE:
        return bytes(data)
    if codec == GZIP:
        return bytes(cramjam.gzip.compress(bytes(data), level=6 if level is None else level))
    if codec == SNAPPY:
        view = memoryview(data)
        parts = [_XERIAL_HEADER]
        for i in range(0, len(view), _XERIAL_BLOCK):
            block = bytes(cramjam.snappy.compress_raw(bytes(view[i : i + _XERIAL_BLOCK])))
            parts.append(struct.pack(">i", len(block)))
            parts.append(block)
        return b"".join(parts)
    if codec == LZ4:
        # cramjam's default level is LZ4-HC (~40 MB/s here); level 1 is LZ4's fast mode (~800 MB/s).
        c = cramjam.lz4.Compressor(level=1 if level is None else level, block_linked=False)
        c.compress(bytes(data))
        return bytes(c.finish())
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(bytes(data)) if level is None else cramjam.zstd.compress(bytes(data), level))
    raise ValueError(f"unknown compression codec {codec}")


def encode_batch(records: Sequence[RecordFields], *, base_offset: int, base_timestamp: int, max_timestamp: int,
                 attributes: int = 0, producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
                 partition_leader_epoch: int = 0, compression: int | None = None,
                 compression_level: int | None = None, last_offset_delta: int | None = None) -> bytes:
    """One v2 batch of records (offset and timestamp deltas relative to base_offset and base_timestamp).

    attributes are the batch attributes (timestamp type, transactional, control bits); its codec bits are replaced
    by compression when given (None = keep the codec named in attributes); compression_level for gzip and zstd.
    last_offset_delta (default: the last record's) may reach past the last record, as in a batch of a compacted
    topic whose last records the cleaner removed (Kafka's cleaner keeps the original last offset): consumers go on
    from base_offset + last_offset_delta + 1. With it, records may be empty (a batch the cleaner emptied)."""
    if not records and last_offset_delta is None:
        raise ValueError("a record batch needs at least one record")
    codec = attributes & COMPRESSION_MASK if compression is None else compression
    attributes = (attributes & ~COMPRESSION_MASK) | codec
    raw = encode_records(records)
    payload = compress(codec, raw, compression_level) if codec else raw
    return frame_batch(payload, base_offset=base_offset, partition_leader_epoch=partition_leader_epoch,
                       attributes=attributes,
                       last_offset_delta=records[-1][0] if last_offset_delta is None else last_offset_delta,
                       base_timestamp=base_timestamp,
                       max_timestamp=max_timestamp, producer_id=producer_id, producer_epoch=producer_epoch,
                       base_sequence=base_sequence, record_count=len(records))


def frame_batch(payload, *, base_offset: int, partition_leader_epoch: int, attributes: int, last_offset_delta: int,
                base_timestamp: int, max_timestamp: int, producer_id: int, producer_epoch: int, base_sequence: int,
                record_count: int) -> bytes:
    """A batch around an already encoded (and compressed, as attributes say) records section: header and CRC."""
    tail = _AFTER_CRC.pack(attributes, last_offset_delta, base_timestamp, max_timestamp, producer_id,
                           producer_epoch, base_sequence, record_count)
    crc = crc32c(payload, crc32c(tail))
    batch_length = HEADER_SIZE - LOG_OVERHEAD + len(payload)
    return b"".join((_PREFIX.pack(base_offset, batch_length, partition_leader_epoch, 2, crc), tail, payload))


assert _PREFIX.size + _AFTER_CRC.size == HEADER_SIZE and _PREFIX.size == CRC_START
