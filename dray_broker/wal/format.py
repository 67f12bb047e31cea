"""WAL object v1: one object per broker flush, holding record batches of many partitions.

    header   magic 'DRAYWAL1', header_crc u32, chunk_count u32, created_ms i64, broker_id i32
    table    chunk_count x (topic_id 16s, partition i32, data_offset u64, data_length u32, batch_count u32,
                            record_count u32, min_timestamp i64, max_timestamp i64, data_crc u32)
    data     each chunk's record batches, as the producers sent them, contiguous per partition

header_crc is the CRC32C of everything in header and table after it. Each chunk has its own CRC32C so that a
fetch that range-reads one chunk can verify it. Offsets are not in the object: the offset index assigns them.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Sequence

from crc32c import crc32c

MAGIC = b"DRAYWAL1"
_HEADER = struct.Struct(">8sIIqi")  # magic, header_crc, chunk_count, created_ms, broker_id
_CHUNK = struct.Struct(">16siQIIIqqI")
HEADER_SIZE = _HEADER.size
CHUNK_ENTRY_SIZE = _CHUNK.size


class CorruptWalError(ValueError):
    """A WAL object or chunk failed its checks."""


@dataclass(frozen=True, slots=True)
class Chunk:
    topic_id: uuid.UUID
    partition: int
    data_offset: int  # from the start of the object
    data_length: int
    batch_count: int
    record_count: int
    min_timestamp: int
    max_timestamp: int
    data_crc: int


@dataclass(frozen=True, slots=True)
class ChunkInput:
    """One partition's batches for a WAL object: a list of buffers written back to back."""

    topic_id: uuid.UUID
    partition: int
    buffers: Sequence[bytes | memoryview]
    batch_count: int
    record_count: int
    min_timestamp: int
    max_timestamp: int


def encode(chunks: Sequence[ChunkInput], *, created_ms: int, broker_id: int) -> tuple[list, list[Chunk]]:
    """The object as a list of buffers (no copy of the batches) and its chunk table."""
    data_start = HEADER_SIZE + CHUNK_ENTRY_SIZE * len(chunks)
    table = bytearray(CHUNK_ENTRY_SIZE * len(chunks))
    entries = []
    pos = data_start
    body: list = []
    for i, c in enumerate(chunks):
        length = 0
        crc = 0
        for b in c.buffers:
            crc = crc32c(b, crc)
            length += len(b)
            body.append(b)
        entry = Chunk(
            c.topic_id, c.partition, pos, length, c.batch_count, c.record_count, c.min_timestamp, c.max_timestamp, crc
        )
        _CHUNK.pack_into(
            table, i * CHUNK_ENTRY_SIZE, c.topic_id.bytes, c.partition, pos, length, c.batch_count,
            c.record_count, c.min_timestamp, c.max_timestamp, crc,
        )
        entries.append(entry)
        pos += length
    tail = struct.pack(">Iqi", len(chunks), created_ms, broker_id)
    header_crc = crc32c(bytes(table), crc32c(tail))
    header = _HEADER.pack(MAGIC, header_crc, len(chunks), created_ms, broker_id)
    return [header, bytes(table), *body], entries


@dataclass(frozen=True)
class WalObject:
    created_ms: int
    broker_id: int
    chunks: list[Chunk]


def decode_table(data: bytes | memoryview) -> WalObject:
    """Parse and verify the header and chunk table (data may be just the object's first bytes)."""
    if len(data) < HEADER_SIZE:
        raise CorruptWalError("WAL object is shorter than its header")
    magic, header_crc, count, created_ms, broker_id = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptWalError(f"not a WAL v1 object (magic {magic!r})")
    end = HEADER_SIZE + count * CHUNK_ENTRY_SIZE
    if len(data) < end:
        raise CorruptWalError("WAL object is truncated inside its chunk table")
    table = memoryview(data)[HEADER_SIZE:end]
    if crc32c(table, crc32c(struct.pack(">Iqi", count, created_ms, broker_id))) != header_crc:
        raise CorruptWalError("WAL header CRC mismatch")
    chunks = []
    for i in range(count):
        tid, *rest = _CHUNK.unpack_from(table, i * CHUNK_ENTRY_SIZE)
        chunks.append(Chunk(uuid.UUID(bytes=tid), *rest))
    return WalObject(created_ms, broker_id, chunks)


def decode(data: bytes | memoryview) -> tuple[WalObject, list[memoryview]]:
    """Parse a whole object and verify every chunk; return the table and each chunk's bytes."""
    obj = decode_table(data)
    view = memoryview(data)
    out = []
    for c in obj.chunks:
        if c.data_offset + c.data_length > len(view):
            raise CorruptWalError("WAL object is truncated inside its data")
        out.append(verify_chunk(c, view[c.data_offset : c.data_offset + c.data_length]))
    return obj, out


def verify_chunk(chunk: Chunk, data: bytes | bytearray | memoryview) -> memoryview:
    """Check a chunk's bytes (e.g. from a range read) against its table entry."""
    return verify_chunk_bytes(data, chunk.data_length, chunk.data_crc)


def verify_chunk_bytes(data: bytes | bytearray | memoryview, data_length: int, data_crc: int) -> memoryview:
    """Check a chunk's bytes against the length and CRC32C of its table entry (as an index entry keeps them)."""
    if len(data) != data_length:
        raise CorruptWalError(f"chunk has {len(data)} bytes, expected {data_length}")
    if crc32c(data) != data_crc:
        raise CorruptWalError("WAL chunk CRC mismatch")
    return memoryview(data)
