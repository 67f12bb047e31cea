"""Kafka record batch v2 (magic 2) headers: parse, validate and patch without touching the records (a compressed
batch is inflated once, as a stream whose output is counted and dropped, to bound its size).

Layout (big-endian): baseOffset i64, batchLength i32, partitionLeaderEpoch i32, magic i8, crc u32,
attributes i16, lastOffsetDelta i32, baseTimestamp i64, maxTimestamp i64, producerId i64, producerEpoch i16,
baseSequence i32, recordCount i32, then the records. The CRC32C covers attributes to the end, so baseOffset and
partitionLeaderEpoch can be patched in place.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from crc32c import crc32c

from dray_broker.records.compression import DecompressError, InflatedTooLarge, inflated_size

HEADER_SIZE = 61
# Bytes before batchLength's coverage starts: baseOffset + batchLength.
LOG_OVERHEAD = 12
CRC_START = 21  # attributes onward

_HEADER = struct.Struct(">qiibIhiqqqhii")
_BASE_OFFSET = struct.Struct(">q")

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_LOG_APPEND = 0x08
TRANSACTIONAL = 0x10
CONTROL = 0x20

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class InvalidBatchError(ValueError):
    """The bytes are not a valid v2 record batch. kafka_error names the Kafka error code to answer with."""

    def __init__(self, message: str, kafka_error: int):
        super().__init__(message)
        self.kafka_error = kafka_error


# Kafka error codes used for batch validation.
CORRUPT_MESSAGE = 2
INVALID_RECORD = 87
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_COMPRESSION_TYPE = 76


class AttributeFlags:
    """What the attributes field of a batch says; for classes with an `attributes` int."""

    __slots__ = ()
    attributes: int

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL)

    @property
    def log_append_time(self) -> bool:
        return bool(self.attributes & TIMESTAMP_TYPE_LOG_APPEND)


@dataclass(frozen=True, slots=True)
class BatchHeader(AttributeFlags):
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        return self.batch_length + LOG_OVERHEAD


def read_header(buf, pos: int = 0) -> BatchHeader:
    return BatchHeader(*_HEADER.unpack_from(buf, pos))


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What the produce path needs to know about the batches of one partition in one request."""

    batch_count: int
    record_count: int
    min_timestamp: int
    max_timestamp: int
    # Records per batch, in order: the index stores these to find a batch by offset.
    batch_records: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    producer_id: int
    producer_epoch: int
    base_sequence: int
    last_sequence: int
    is_transactional: bool


def validate_batches(data, max_batch_bytes: int) -> BatchSummary:
    """Check that data is a whole number of v2 batches with correct CRCs, none larger than max_batch_bytes (the
    topic's max.message.bytes), neither as sent nor with its records decompressed.

    Records are not parsed. A compressed batch is inflated as a stream that stops at the limit, its output dropped
    (snappy states its size up front: nothing is inflated); this is the only per-byte work besides the CRC.
    Raise InvalidBatchError with the Kafka error code to answer for the partition."""
    view = memoryview(data)
    total = len(view)
    if total == 0:
        raise InvalidBatchError("empty records", CORRUPT_MESSAGE)
    pos = 0
    records = []
    sizes = []
    min_ts = None
    max_ts = -1
    first = None
    last_seq = -1
    while pos < total:
        if total - pos < HEADER_SIZE:
            if total - pos >= 17 and view[pos + 16] != 2:
                raise InvalidBatchError(f"magic {view[pos + 16]} is not supported; use magic 2", UNSUPPORTED_FOR_MESSAGE_FORMAT)
            raise InvalidBatchError("truncated record batch header", CORRUPT_MESSAGE)
        h = read_header(view, pos)
        if h.magic != 2:
            raise InvalidBatchError(f"magic {h.magic} is not supported; use magic 2", UNSUPPORTED_FOR_MESSAGE_FORMAT)
        size = h.size
        if h.batch_length < HEADER_SIZE - LOG_OVERHEAD or pos + size > total:
            raise InvalidBatchError("record batch length does not match the data", CORRUPT_MESSAGE)
        if size > max_batch_bytes:
            raise InvalidBatchError(
                f"record batch of {size} bytes exceeds max.message.bytes {max_batch_bytes}", MESSAGE_TOO_LARGE
            )
        if h.compression not in CODECS:
            raise InvalidBatchError(f"unknown compression codec {h.compression}", UNSUPPORTED_COMPRESSION_TYPE)
        if h.record_count <= 0 or h.last_offset_delta != h.record_count - 1:
            raise InvalidBatchError("record count and last offset delta disagree", INVALID_RECORD)
        if crc32c(view[pos + CRC_START : pos + size]) != h.crc:
            raise InvalidBatchError("record batch CRC mismatch", CORRUPT_MESSAGE)
        if h.compression:
            _check_inflated(h.compression, view[pos + HEADER_SIZE : pos + size], max_batch_bytes)
        if first is None:
            first = h
        elif (h.producer_id, h.producer_epoch) != (first.producer_id, first.producer_epoch):
            raise InvalidBatchError("batches of one partition come from different producers", INVALID_RECORD)
        records.append(h.record_count)
        sizes.append(size)
        ts_min = h.base_timestamp
        min_ts = ts_min if min_ts is None else min(min_ts, ts_min)
        max_ts = max(max_ts, h.max_timestamp)
        if h.base_sequence >= 0:
            last_seq = h.base_sequence + h.last_offset_delta
        pos += size
    assert first is not None
    return BatchSummary(
        batch_count=len(records),
        record_count=sum(records),
        min_timestamp=min_ts if min_ts is not None else -1,
        max_timestamp=max_ts,
        batch_records=tuple(records),
        batch_sizes=tuple(sizes),
        producer_id=first.producer_id,
        producer_epoch=first.producer_epoch,
        base_sequence=first.base_sequence,
        last_sequence=last_seq,
        is_transactional=first.is_transactional,
    )


def _check_inflated(codec: int, records, max_batch_bytes: int) -> None:
    """The batch, were it sent uncompressed, must fit in max_batch_bytes too: Kafka answers MESSAGE_TOO_LARGE for
    a batch over max.message.bytes (the Java producer then splits it and retries), and CORRUPT_MESSAGE for records
    it cannot decompress."""
    try:
        inflated_size(codec, records, max_batch_bytes - HEADER_SIZE)
    except InflatedTooLarge:
        raise InvalidBatchError(f"record batch of {HEADER_SIZE + len(records)} bytes inflates to more than "
                                f"max.message.bytes {max_batch_bytes}", MESSAGE_TOO_LARGE) from None
    except DecompressError as e:
        raise InvalidBatchError(str(e), CORRUPT_MESSAGE) from None


def patch_base_offsets(buf: bytearray | memoryview, base_offset: int, batch_records) -> None:
    """Write each batch's baseOffset in place, starting at base_offset (outside the CRC)."""
    pos = 0
    offset = base_offset
    for n in batch_records:
        _BASE_OFFSET.pack_into(buf, pos, offset)
        size = struct.unpack_from(">i", buf, pos + 8)[0] + LOG_OVERHEAD
        pos += size
        offset += n


def iter_batch_positions(buf, start: int = 0, end: int | None = None):
    """(position, header) of each whole batch in buf[start:end]."""
    end = len(buf) if end is None else end
    pos = start
    while pos + HEADER_SIZE <= end:
        h = read_header(buf, pos)
        if pos + h.size > end:
            return
        yield pos, h
        pos += h.size
