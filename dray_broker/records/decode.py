"""Record batch v2 -> records: decompression and the per-record format.

This module parses records, so it is for the slow paths only: ListOffsets by timestamp, compaction to Parquet,
tools and tests. The produce and fetch paths never call it (DESIGN.md section 3: records stay raw bytes there).

It returns plain data: a DecodedBatch per batch with its header fields and a list of Record; columns() turns
batches into column lists (for pyarrow). Offsets are absolute: base_offset + offsetDelta, where base_offset is
the one written in the batch (patched by the fetch path) unless the caller gives another.

Per-record layout (all varints are zigzag):
    length varint, attributes int8, timestampDelta varlong, offsetDelta varint,
    keyLength varint (-1 = null), key, valueLength varint (-1 = null), value,
    headerCount varint, then per header: keyLength varint, key (UTF-8), valueLength varint (-1 = null), value.

Codecs (attributes & 0x07): 1 gzip, 2 snappy (a raw block as librdkafka writes it, or xerial framing as the Java
client writes it), 3 lz4 (the frame format), 4 zstd. Decompression is bounded (records/compression.py): a batch
whose records inflate beyond max_inflated bytes raises RecordsTooLarge instead of filling memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from crc32c import crc32c

from dray_broker.records import compression
from dray_broker.records.batch import (
    CRC_START,
    HEADER_SIZE,
    TIMESTAMP_TYPE_LOG_APPEND,
    AttributeFlags,
    BatchHeader,
    read_header,
)
from dray_broker.records.compression import GZIP, LZ4, NONE, SNAPPY, XERIAL_MAGIC, ZSTD  # noqa: F401 (re-exported)

# The most a batch's records may inflate to where the caller gives no limit (tools, tests); the broker and the
# pipeline pass the topic's max.message.bytes.
DEFAULT_MAX_INFLATED = 256 * 1024 * 1024

Header = tuple[str, "bytes | None"]


class RecordDecodeError(ValueError):
    """The bytes are not a well-formed v2 batch (or its compressed records cannot be read)."""


class RecordsTooLarge(RecordDecodeError):
    """A batch's records inflate beyond the limit given."""


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class DecodedBatch(AttributeFlags):
    """One batch: the header fields a consumer of records needs, and its records."""

    base_offset: int
    partition_leader_epoch: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    size: int  # bytes of the whole batch, header included
    records: list[Record] = field(default_factory=list)

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1


# --- decompression ----------------------------------------------------------------------------------------------


def decompress(codec: int, data, limit: int = DEFAULT_MAX_INFLATED) -> bytes:
    """The records section of a batch, uncompressed (at most limit bytes, else RecordsTooLarge)."""
    try:
        return compression.decompress(codec, data, limit)
    except compression.InflatedTooLarge as e:
        raise RecordsTooLarge(str(e)) from None
    except compression.DecompressError as e:
        raise RecordDecodeError(str(e)) from None


# --- records ------------------------------------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (or varlong) at pos: (value, next position)."""
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos
    result = b & 0x7F
    shift = 7
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise RecordDecodeError("varint longer than 10 bytes")


def _bytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    n, pos = read_varint(buf, pos)
    if n < 0:
        return None, pos
    end = pos + n
    if end > len(buf):
        raise RecordDecodeError("record field runs past the records")
    return buf[pos:end], end


def _records(buf: bytes, count: int, base_offset: int, base_timestamp: int,
             log_append_time: int | None) -> list[Record]:
    out = []
    pos = 0
    size = len(buf)
    varint = read_varint
    read_bytes = _bytes
    try:
        for _ in range(count):
            length, pos = varint(buf, pos)
            end = pos + length
            if length < 0 or end > size:
                raise RecordDecodeError("record length runs past the records")
            pos += 1  # attributes: unused in v2
            ts_delta, pos = varint(buf, pos)
            offset_delta, pos = varint(buf, pos)
            key, pos = read_bytes(buf, pos)
            value, pos = read_bytes(buf, pos)
            n_headers, pos = varint(buf, pos)
            headers = ()
            if n_headers > 0:
                hs = []
                for _ in range(n_headers):
                    hkey, pos = read_bytes(buf, pos)
                    if hkey is None:
                        raise RecordDecodeError("record header with a null key")
                    hvalue, pos = read_bytes(buf, pos)
                    hs.append((hkey.decode("utf-8", "replace"), hvalue))
                headers = tuple(hs)
            elif n_headers < 0:
                raise RecordDecodeError("negative record header count")
            if pos != end:
                raise RecordDecodeError("record length does not match its fields")
            timestamp = log_append_time if log_append_time is not None else base_timestamp + ts_delta
            out.append(Record(base_offset + offset_delta, timestamp, key, value, headers))
    except IndexError:
        raise RecordDecodeError("records are truncated") from None
    if pos != size:
        raise RecordDecodeError(f"{size - pos} bytes after the last of {count} records")
    return out


def decode_batch(buf, pos: int = 0, *, base_offset: int | None = None, verify_crc: bool = False,
                 max_inflated: int = DEFAULT_MAX_INFLATED) -> DecodedBatch:
    """Decode the batch at buf[pos:]. base_offset overrides the one in the batch (e.g. an unpatched WAL chunk);
    max_inflated bounds the size of its records once decompressed."""
    view = memoryview(buf)
    if len(view) - pos < HEADER_SIZE:
        raise RecordDecodeError("truncated record batch header")
    h: BatchHeader = read_header(view, pos)
    if h.magic != 2:
        raise RecordDecodeError(f"magic {h.magic} is not a v2 record batch")
    size = h.size
    if h.batch_length < HEADER_SIZE - 12 or pos + size > len(view):
        raise RecordDecodeError("record batch length runs past the data")
    if verify_crc and crc32c(view[pos + CRC_START : pos + size]) != h.crc:
        raise RecordDecodeError("record batch CRC mismatch")
    if h.record_count < 0:
        raise RecordDecodeError("negative record count")
    base = h.base_offset if base_offset is None else base_offset
    raw = decompress(h.compression, view[pos + HEADER_SIZE : pos + size], max_inflated)
    append_time = h.max_timestamp if h.attributes & TIMESTAMP_TYPE_LOG_APPEND else None
    records = _records(raw, h.record_count, base, h.base_timestamp, append_time)
    return DecodedBatch(
        base_offset=base, partition_leader_epoch=h.partition_leader_epoch, attributes=h.attributes,
        last_offset_delta=h.last_offset_delta, base_timestamp=h.base_timestamp, max_timestamp=h.max_timestamp,
        producer_id=h.producer_id, producer_epoch=h.producer_epoch, base_sequence=h.base_sequence, size=size,
        records=records,
    )


def iter_batches(buf, *, base_offset: int | None = None, verify_crc: bool = False,
                 allow_partial: bool = False, max_inflated: int = DEFAULT_MAX_INFLATED) -> Iterator[DecodedBatch]:
    """Decode every batch of buf in order. base_offset, if given, is the first batch's offset and the following
    batches continue from it. A truncated last batch raises, unless allow_partial (as in a Fetch response)."""
    view = memoryview(buf)
    pos = 0
    total = len(view)
    next_base = base_offset
    while pos < total:
        if total - pos < HEADER_SIZE or pos + read_header(view, pos).size > total:
            if allow_partial:
                return
            raise RecordDecodeError(f"truncated record batch at byte {pos}")
        batch = decode_batch(view, pos, base_offset=next_base, verify_crc=verify_crc, max_inflated=max_inflated)
        yield batch
        pos += batch.size
        if next_base is not None:
            next_base = batch.next_offset


def decode_batches(buf, **kwargs) -> list[DecodedBatch]:
    return list(iter_batches(buf, **kwargs))


def iter_records(buf, *, skip_control: bool = True, **kwargs) -> Iterator[Record]:
    """Every record of every batch in buf (control batches skipped unless skip_control is False)."""
    for batch in iter_batches(buf, **kwargs):
        if skip_control and batch.is_control:
            continue
        yield from batch.records


def columns(batches: Iterable[DecodedBatch], *, skip_control: bool = True) -> dict[str, list]:
    """Records as columns (offset, timestamp, key, value, headers, plus batch attributes), for pyarrow tables."""
    cols: dict[str, list] = {k: [] for k in ("offset", "timestamp", "key", "value", "headers", "attributes",
                                             "producer_id", "producer_epoch")}
    for b in batches:
        if skip_control and b.is_control:
            continue
        for r in b.records:
            cols["offset"].append(r.offset)
            cols["timestamp"].append(r.timestamp)
            cols["key"].append(r.key)
            cols["value"].append(r.value)
            cols["headers"].append(list(r.headers))
            cols["attributes"].append(b.attributes)
            cols["producer_id"].append(b.producer_id)
            cols["producer_epoch"].append(b.producer_epoch)
    return cols
