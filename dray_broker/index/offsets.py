"""The per-partition offset index in the metadata store (DESIGN.md section 4).

Keys of one partition (all at one depth, so they sort bytewise within the directory):

    /dray/idx/<topic_id>/<partition>/wal-<offsetEnd>-<cumBytes>   WAL entries, made by put_sequential
    /dray/idx/<topic_id>/<partition>/pq-<offsetEnd>                Parquet entries, written by compaction
    /dray/idx/<topic_id>/<partition>/start                         log start offset (absent = 0)
    /dray/idx/<topic_id>/<partition>/watermark                     compacted watermark (absent = 0)

Offsets are half-open [start, end). The store assigns offsets: put_sequential adds the record count to the
newest WAL key, so brokers never race. Below the watermark readers use Parquet entries, above it WAL entries;
advancing the watermark with one CAS is the atomic compaction swap. WAL entries below the watermark may be
deleted after a grace period, but never the newest one (that would rewind the sequence).
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass, field

from dray_broker.metadata import Comparison, MetadataStore, SequentialPut, VersionMismatchError, parse_sequence_key

_WAL_TAG = b"W"
_PQ_TAG = b"P"
_WAL_FIXED = struct.Struct(">QIIqqI")  # data_offset, data_length, data_crc, min_ts, max_ts, batch_count


@dataclass(frozen=True, slots=True)
class WalLocation:
    """Where one index entry's batches are: a chunk of a WAL object, and the batches inside it."""

    object_key: str
    data_offset: int
    data_length: int
    data_crc: int
    min_timestamp: int
    max_timestamp: int
    batch_records: tuple[int, ...]
    batch_sizes: tuple[int, ...]

    def encode(self) -> bytes:
        key = self.object_key.encode()
        n = len(self.batch_records)
        return b"".join(
            (
                _WAL_TAG,
                struct.pack(">H", len(key)),
                key,
                _WAL_FIXED.pack(
                    self.data_offset, self.data_length, self.data_crc, self.min_timestamp, self.max_timestamp, n
                ),
                struct.pack(f">{n}I", *self.batch_records),
                struct.pack(f">{n}I", *self.batch_sizes),
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> "WalLocation":
        (klen,) = struct.unpack_from(">H", data, 1)
        key = data[3 : 3 + klen].decode()
        pos = 3 + klen
        off, length, crc, min_ts, max_ts, n = _WAL_FIXED.unpack_from(data, pos)
        pos += _WAL_FIXED.size
        records = struct.unpack_from(f">{n}I", data, pos)
        sizes = struct.unpack_from(f">{n}I", data, pos + 4 * n)
        return cls(key, off, length, crc, min_ts, max_ts, records, sizes)


@dataclass(frozen=True, slots=True)
class ParquetLocation:
    """Where compacted offsets are: a Parquet data file of the topic's Iceberg table."""

    path: str
    min_timestamp: int
    max_timestamp: int
    extra: dict = field(default_factory=dict)

    def encode(self, start: int, end: int) -> bytes:
        doc = {"path": self.path, "start": start, "end": end, "min_ts": self.min_timestamp,
               "max_ts": self.max_timestamp, "extra": self.extra}
        return _PQ_TAG + json.dumps(doc, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> tuple[int, "ParquetLocation"]:
        doc = json.loads(data[1:])
        return doc["start"], ParquetLocation(doc["path"], doc["min_ts"], doc["max_ts"], doc.get("extra", {}))


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One contiguous offset range [start, end) and where its records are."""

    key: str
    start: int
    end: int
    location: WalLocation | ParquetLocation

    @property
    def is_wal(self) -> bool:
        return isinstance(self.location, WalLocation)

    @property
    def cache_key(self) -> str:
        """What a reader caches this entry's batches under. A Parquet entry's key stays when the cleaner of a
        compacted topic points it at a cleaned file: the file and row group tell the versions apart."""
        loc = self.location
        if isinstance(loc, WalLocation):
            return self.key
        return f"{self.key}@{loc.path}#{(loc.extra or {}).get('rg', 0)}"


@dataclass(frozen=True, slots=True)
class PartitionRef:
    topic_id: uuid.UUID
    partition: int

    @property
    def dir(self) -> str:
        return f"/dray/idx/{self.topic_id}/{self.partition}/"

    @property
    def partition_key(self) -> str:
        return f"{self.topic_id}-{self.partition}"


@dataclass(frozen=True, slots=True)
class Append:
    """One partition's index append: record_count offsets (byte_count bytes) at location."""

    partition: PartitionRef
    location: WalLocation
    record_count: int
    byte_count: int


def _appended(p: PartitionRef, key: str, record_count: int, location: WalLocation) -> IndexEntry:
    end, _cum_bytes = parse_sequence_key(p.dir + "wal", key)
    return IndexEntry(key, end - record_count, end, location)


def _offset(n: int) -> str:
    return f"{n:020d}"


class OffsetIndex:
    def __init__(self, store: MetadataStore):
        self.store = store

    # --- the produce side -------------------------------------------------------------------------------------

    async def append(self, p: PartitionRef, location: WalLocation, record_count: int, byte_count: int) -> IndexEntry:
        """Commit the next record_count offsets of p to location; the store picks the offsets."""
        entry = await self.store.put_sequential(
            p.dir + "wal", location.encode(), [record_count, byte_count], partition_key=p.partition_key
        )
        return _appended(p, entry.key, record_count, location)

    async def append_batch(self, appends: list[Append]) -> list[IndexEntry | Exception]:
        """Several appends as one store write where the store can; a partition's appends get their offsets in
        the order given. Each commits or fails by itself: its IndexEntry or its exception, in order."""
        results = await self.store.put_sequential_batch([
            SequentialPut(a.partition.dir + "wal", a.location.encode(), [a.record_count, a.byte_count],
                          a.partition.partition_key)
            for a in appends
        ])
        return [r if isinstance(r, Exception) else _appended(a.partition, r.key, a.record_count, a.location)
                for a, r in zip(appends, results)]

    # --- the fetch side ---------------------------------------------------------------------------------------

    async def lookup(self, p: PartitionRef, offset: int) -> IndexEntry | None:
        """The entry holding offset, or None if offset is at or past the log end."""
        watermark, _ = await self.compacted_watermark(p)
        if offset < watermark:
            entry = await self._ceiling(p, "pq-", _offset(offset + 1))
            if entry is not None:
                return entry
            # No Parquet entry (retention removed it): fall through to the WAL family.
        return await self._ceiling(p, "wal-", _offset(offset + 1))

    async def _ceiling(self, p: PartitionRef, family: str, bound: str) -> IndexEntry | None:
        found = await self.store.get(p.dir + family + bound, Comparison.CEILING, partition_key=p.partition_key)
        if found is None or not found.key.startswith(p.dir + family):
            return None
        return decode_entry(p, found.key, found.value)

    async def log_end_offset(self, p: PartitionRef) -> int:
        found = await self.store.get(p.dir + "wal-~", Comparison.LOWER, partition_key=p.partition_key)
        if found is None or not found.key.startswith(p.dir + "wal-"):
            return 0
        return parse_sequence_key(p.dir + "wal", found.key)[0]

    async def log_start_offset(self, p: PartitionRef) -> int:
        found = await self.store.get(p.dir + "start", partition_key=p.partition_key)
        return int(found.value) if found else 0

    @staticmethod
    def is_log_start_key(p: PartitionRef, key: str) -> bool:
        return key == p.dir + "start"

    @staticmethod
    def is_watermark_key(p: PartitionRef, key: str) -> bool:
        return key == p.dir + "watermark"

    async def advance_log_start_offset(self, p: PartitionRef, offset: int) -> int:
        """Move the log start offset forward to offset (never back); return the new value."""
        while True:
            found = await self.store.get(p.dir + "start", partition_key=p.partition_key)
            current = int(found.value) if found else 0
            if offset <= current:
                return current
            try:
                await self.store.put(
                    p.dir + "start", str(offset).encode(),
                    expected_version=found.version if found else -1, partition_key=p.partition_key,
                )
                return offset
            except VersionMismatchError:
                continue

    async def entries(self, p: PartitionRef, family: str = "wal-") -> list[IndexEntry]:
        """Every entry of one family ('wal-' or 'pq-'), in offset order. For compaction and tools, not fetch."""
        found = await self.store.range_scan(
            p.dir + family, p.dir + family + "~", partition_key=p.partition_key
        )
        return [decode_entry(p, e.key, e.value) for e in found]

    async def entries_from(self, p: PartitionRef, offset: int) -> list[IndexEntry]:
        """The entries readers use for the offsets from offset to the log end, in offset order: Parquet entries
        below the compacted watermark, WAL entries above it (idempotent producers look for a batch appended after
        a known log end). The watermark is read before and after the scans: WAL entries are collected only a grace
        period after the watermark passed them, so an unchanged watermark means nothing was missed."""
        while True:
            watermark, _ = await self.compacted_watermark(p)
            out = []
            if offset < watermark:
                compacted = await self.store.range_scan(
                    p.dir + "pq-" + _offset(offset + 1), p.dir + "pq-~", partition_key=p.partition_key
                )
                out = [e for e in (decode_entry(p, c.key, c.value) for c in compacted) if e.end <= watermark]
            found = await self.store.range_scan(
                p.dir + "wal-" + _offset(max(offset, watermark) + 1), p.dir + "wal-~", partition_key=p.partition_key
            )
            out += [decode_entry(p, e.key, e.value) for e in found]
            if (await self.compacted_watermark(p))[0] == watermark:
                return out

    # --- the compaction side ----------------------------------------------------------------------------------

    async def compacted_watermark(self, p: PartitionRef) -> tuple[int, int]:
        """(watermark, version) where version is -1 while no watermark was ever set."""
        found = await self.store.get(p.dir + "watermark", partition_key=p.partition_key)
        return (int(found.value), found.version) if found else (0, -1)

    async def put_parquet_entry(self, p: PartitionRef, start: int, end: int, location: ParquetLocation) -> None:
        """Record that [start, end) is in a Parquet file. Idempotent: a rerun writes the same key and value."""
        await self.store.put(p.dir + "pq-" + _offset(end), location.encode(start, end), partition_key=p.partition_key)

    async def swap(self, p: PartitionRef, new_watermark: int, expected_version: int) -> None:
        """The atomic switch: readers use Parquet entries below new_watermark. Raises VersionMismatchError."""
        await self.store.put(
            p.dir + "watermark", str(new_watermark).encode(),
            expected_version=expected_version, partition_key=p.partition_key,
        )

    async def delete_wal_entries_below(self, p: PartitionRef, offset: int) -> int:
        """Delete WAL entries whose whole range is below offset, keeping the newest entry. Return the count."""
        entries = await self.entries(p, "wal-")
        doomed = [e for e in entries[:-1] if e.end <= offset]
        for e in doomed:
            await self.store.delete(e.key, partition_key=p.partition_key)
        return len(doomed)


def decode_entry(p: PartitionRef, key: str, value: bytes) -> IndexEntry:
    tag = value[:1]
    if tag == _WAL_TAG:
        loc = WalLocation.decode(value)
        end = parse_sequence_key(p.dir + "wal", key)[0]
        return IndexEntry(key, end - sum(loc.batch_records), end, loc)
    if tag == _PQ_TAG:
        start, loc = ParquetLocation.decode(value)
        end = int(key.rsplit("-", 1)[1])
        return IndexEntry(key, start, end, loc)
    raise ValueError(f"unknown index entry {key!r}")
