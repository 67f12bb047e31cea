"""Legacy message sets (magic 0 and 1) -> one v2 record batch, as Kafka's LogValidator up-converts them.

Produce v0-v2 from old clients carries these; the broker stores only v2 batches. Each message (big-endian):
    offset i64, message_size i32, then crc u32 (plain CRC32 of magic..end), magic i8, attributes i8,
    timestamp i64 (magic 1 only), key (i32 length, -1 = null), value (i32 length, -1 = null).
Attributes: bits 0-2 codec (0 none, 1 gzip, 2 snappy, 3 lz4; zstd needs magic 2), bit 3 LogAppendTime (magic 1).
A compressed "wrapper" message's value is a compressed message set of uncompressed inner messages of the same
magic. Snappy may be xerial-framed (Java) or a raw block (librdkafka); decode.decompress reads both. Magic 0 LZ4
frames carry a wrong header checksum (KAFKA-1493: computed over the frame magic too), which Kafka ignores for
magic 0; here it is rewritten so that the standard decoder accepts the frame.

The output batch has offset deltas 0..n-1 over all messages in order (inner messages in place of their wrapper),
no producer id, sequence or leader epoch, CreateTime timestamps as given (-1 for magic 0, which has none) or
LogAppendTime = now_ms if any magic 1 message asks for it, and the codec of the first wrapper (else none).
Inner offsets are ignored: the broker assigns offsets anyway. The wrappers of one message set may inflate to
max_bytes in all (the topic's max.message.bytes): beyond it, the message set is refused with MESSAGE_TOO_LARGE
before anything more is inflated.
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterator

import xxhash

from dray_broker.records.batch import (
    CORRUPT_MESSAGE,
    INVALID_RECORD,
    MESSAGE_TOO_LARGE,
    TIMESTAMP_TYPE_LOG_APPEND,
    UNSUPPORTED_COMPRESSION_TYPE,
    UNSUPPORTED_FOR_MESSAGE_FORMAT,
    InvalidBatchError,
)
from dray_broker.records.decode import LZ4, NONE, ZSTD, RecordDecodeError, RecordsTooLarge, decompress
from dray_broker.records.encode import encode_batch

_LOG_OVERHEAD = 12  # offset + message_size
_MAGIC_AT = 16  # offset + message_size + crc
_MIN_SIZE = {0: 14, 1: 22}  # crc, magic, attributes, [timestamp], key and value lengths
_HEAD = struct.Struct(">qiI")  # offset, message_size, crc
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"

# (magic, attributes, timestamp, key, value) of one message
Message = tuple[int, int, int, "bytes | None", "bytes | None"]


def up_convert(data: bytes | memoryview, *, now_ms: int, max_bytes: int) -> bytes:
    """A legacy message set (magic 0 or 1, possibly with compressed wrapper messages) as v2 record batch bytes;
    its wrappers may inflate to max_bytes in all."""
    records: list[tuple[int, bytes | None, bytes | None]] = []  # (timestamp, key, value)
    codec = None
    log_append_time = False
    inflated = 0
    for magic, attributes, timestamp, key, value in _messages(memoryview(data), "message set"):
        log_append_time |= magic == 1 and bool(attributes & TIMESTAMP_TYPE_LOG_APPEND)
        message_codec = attributes & 0x07
        if message_codec == NONE:
            records.append((timestamp, key, value))
            continue
        if codec is None:
            codec = message_codec
        inner, size = _inner(magic, message_codec, value, max_bytes - inflated, max_bytes)
        records += inner
        inflated += size

    if log_append_time:
        base_timestamp = max_timestamp = now_ms
        fields = [(i, 0, key, value, ()) for i, (_, key, value) in enumerate(records)]
    else:
        base_timestamp = records[0][0]
        max_timestamp = max(ts for ts, _, _ in records)
        fields = [(i, ts - base_timestamp, key, value, ()) for i, (ts, key, value) in enumerate(records)]
    return encode_batch(fields, base_offset=0, base_timestamp=base_timestamp, max_timestamp=max_timestamp,
                        attributes=TIMESTAMP_TYPE_LOG_APPEND if log_append_time else 0,
                        partition_leader_epoch=-1, compression=codec or NONE)


def _inner(magic: int, codec: int, value: bytes | None, limit: int,
           max_bytes: int) -> tuple[list[tuple[int, bytes | None, bytes | None]], int]:
    """(timestamp, key, value) of each inner message of a wrapper message, and the size they inflated to (at most
    limit)."""
    if codec == ZSTD:
        raise InvalidBatchError(f"zstd compression needs magic 2, not magic {magic}", UNSUPPORTED_COMPRESSION_TYPE)
    if codec > ZSTD:
        raise InvalidBatchError(f"unknown compression codec {codec}", UNSUPPORTED_COMPRESSION_TYPE)
    if value is None:
        raise InvalidBatchError("compressed wrapper message has a null value", INVALID_RECORD)
    if codec == LZ4 and magic == 0:
        value = _fix_lz4_header_checksum(value)
    try:
        raw = decompress(codec, value, limit)
    except RecordsTooLarge:
        raise InvalidBatchError(f"compressed messages inflate to more than max.message.bytes {max_bytes}",
                                MESSAGE_TOO_LARGE) from None
    except RecordDecodeError as e:
        raise InvalidBatchError(str(e), CORRUPT_MESSAGE) from None
    if not raw:
        raise InvalidBatchError("compressed wrapper message holds no messages", INVALID_RECORD)
    out = []
    for inner_magic, attributes, timestamp, key, inner_value in _messages(memoryview(raw), "compressed wrapper"):
        if inner_magic != magic:
            raise InvalidBatchError(f"inner message magic {inner_magic} differs from its wrapper's {magic}",
                                    INVALID_RECORD)
        if attributes & 0x07:
            raise InvalidBatchError("a compressed message is nested inside a compressed wrapper", INVALID_RECORD)
        out.append((timestamp, key, inner_value))
    return out, len(raw)


def _messages(view: memoryview, where: str) -> Iterator[Message]:
    """Parse and check (size, magic, CRC, key and value lengths) each message of a message set."""
    total = len(view)
    if total == 0:
        raise InvalidBatchError(f"empty {where}", CORRUPT_MESSAGE)
    pos = 0
    while pos < total:
        if total - pos <= _MAGIC_AT:
            raise InvalidBatchError(f"truncated message at byte {pos} of the {where}", CORRUPT_MESSAGE)
        _, size, crc = _HEAD.unpack_from(view, pos)
        end = pos + _LOG_OVERHEAD + size
        if size < 0 or end > total:
            raise InvalidBatchError(f"message size {size} at byte {pos} runs past the {total}-byte {where}",
                                    CORRUPT_MESSAGE)
        if size < _MIN_SIZE[0]:
            raise InvalidBatchError(f"message size {size} at byte {pos} is below the minimum", CORRUPT_MESSAGE)
        magic = view[pos + _MAGIC_AT]
        if magic not in _MIN_SIZE:
            raise InvalidBatchError(f"magic {magic} at byte {pos} is not a legacy message (magic 0 or 1)",
                                    UNSUPPORTED_FOR_MESSAGE_FORMAT)
        if size < _MIN_SIZE[magic]:
            raise InvalidBatchError(f"message size {size} at byte {pos} is below the minimum for magic {magic}",
                                    CORRUPT_MESSAGE)
        if zlib.crc32(view[pos + _MAGIC_AT : end]) != crc:
            raise InvalidBatchError(f"message CRC mismatch at byte {pos} of the {where}", CORRUPT_MESSAGE)
        attributes = view[pos + _MAGIC_AT + 1]
        p = pos + _MAGIC_AT + 2
        timestamp = -1
        if magic == 1:
            (timestamp,) = _INT64.unpack_from(view, p)
            p += 8
        key, p = _bytes(view, p, end, pos)
        value, p = _bytes(view, p, end, pos)
        if p != end:
            raise InvalidBatchError(f"message at byte {pos} has {end - p} bytes after its value", CORRUPT_MESSAGE)
        yield magic, attributes, timestamp, key, value
        pos = end


def _bytes(view: memoryview, p: int, end: int, pos: int) -> tuple[bytes | None, int]:
    """A key or value (i32 length, -1 = null) at p, within the message that ends at end."""
    if p + 4 > end:
        raise InvalidBatchError(f"message at byte {pos} is truncated", CORRUPT_MESSAGE)
    (n,) = _INT32.unpack_from(view, p)
    p += 4
    if n == -1:
        return None, p
    if n < 0 or p + n > end:
        raise InvalidBatchError(f"key or value length {n} runs past the message at byte {pos}", CORRUPT_MESSAGE)
    return bytes(view[p : p + n]), p + n


def _fix_lz4_header_checksum(frame: bytes) -> bytes:
    """Rewrite an LZ4 frame's header checksum byte: (xxh32(descriptor) >> 8) & 0xFF, the descriptor being FLG, BD
    and the optional content size and dictionary id. Anything that is not an LZ4 frame is left to the decoder."""
    if len(frame) < 7 or frame[:4] != _LZ4_FRAME_MAGIC:
        return frame
    flg = frame[4]
    hc_at = 6 + (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0)
    if len(frame) <= hc_at:
        return frame
    hc = (xxhash.xxh32_intdigest(frame[4:hc_at]) >> 8) & 0xFF
    return b"".join((frame[:hc_at], bytes((hc,)), frame[hc_at + 1 :]))
