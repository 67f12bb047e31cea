"""The per-partition offset index in the metadata store (DESIGN.md section 4). Its keys are built and parsed by
dray_broker/keyspace.py: per partition, WAL entries (IndexFamily.WAL, made by put_sequential, the key carrying the
end offset and the bytes appended so far), Parquet entries (IndexFamily.PARQUET, written by compaction), the log
start offset and the compacted watermark (each absent = 0). OffsetIndex is the one place that reads or writes them.

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

from dray_broker import keyspace
from dray_broker.keyspace import IndexFamily
from dray_broker.metadata import (
    Comparison,
    MetadataStore,
    NotificationType,
    SequentialPut,
    VersionMismatchError,
    Watch,
)

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
    cum_bytes: int | None = None  # WAL entries: bytes appended to the partition through this entry

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
    def partition_key(self) -> str:
        return keyspace.partition_key(self.topic_id, self.partition)


@dataclass(frozen=True, slots=True)
class Append:
    """One partition's index append: record_count offsets (byte_count bytes) at location."""

    partition: PartitionRef
    location: WalLocation
    record_count: int
    byte_count: int


@dataclass(frozen=True, slots=True)
class WalTail:
    """A partition's WAL past an offset (OffsetIndex.wal_after): what compaction has left to do."""

    entries: list[IndexEntry]  # the WAL entries ending past the offset, in offset order
    bytes_at: int  # bytes appended to the WAL through the offset
    log_end: int
    bytes_at_end: int  # bytes appended to the WAL through the log end


@dataclass(frozen=True, slots=True)
class IndexChange:
    """A notification of the index watch: a key of this partition's index changed; log_end is the end offset of
    the WAL entry written (None for any other change); log_start / watermark: that key changed."""

    partition: PartitionRef
    log_end: int | None
    log_start: bool = False
    watermark: bool = False


class IndexWatch:
    """The changes of every partition's index, as the store notifies them (OffsetIndex.watch)."""

    def __init__(self, watch: Watch):
        self._watch = watch

    def __aiter__(self) -> "IndexWatch":
        return self

    async def __anext__(self) -> IndexChange:
        while True:
            n = await self._watch.__anext__()
            found = keyspace.parse_index_change(n.key)
            if found is None:
                continue
            written = n.type in (NotificationType.CREATED, NotificationType.MODIFIED)
            return IndexChange(PartitionRef(found.topic_id, found.partition), found.wal_end if written else None,
                               log_start=found.log_start, watermark=found.watermark)

    async def aclose(self) -> None:
        await self._watch.aclose()


def _wal_sequence(p: PartitionRef) -> str:
    return keyspace.wal_sequence(p.topic_id, p.partition)


def _appended(p: PartitionRef, key: str, record_count: int, location: WalLocation) -> IndexEntry:
    end, cum_bytes = _parse_wal_key(p, key)
    return IndexEntry(key, end - record_count, end, location, cum_bytes)


def _parse_wal_key(p: PartitionRef, key: str) -> tuple[int, int]:
    parsed = keyspace.parse_wal_key(p.topic_id, p.partition, key)
    if parsed is None:
        raise ValueError(f"{key!r} is not a WAL index key of {p}")
    return parsed


class OffsetIndex:
    def __init__(self, store: MetadataStore):
        self.store = store

    # --- the produce side -------------------------------------------------------------------------------------

    async def append(self, p: PartitionRef, location: WalLocation, record_count: int, byte_count: int) -> IndexEntry:
        """Commit the next record_count offsets of p to location; the store picks the offsets."""
        entry = await self.store.put_sequential(
            _wal_sequence(p), location.encode(), [record_count, byte_count], partition_key=p.partition_key
        )
        return _appended(p, entry.key, record_count, location)

    async def append_batch(self, appends: list[Append]) -> list[IndexEntry | Exception]:
        """Several appends as one store write where the store can; a partition's appends get their offsets in
        the order given. Each commits or fails by itself: its IndexEntry or its exception, in order."""
        results = await self.store.put_sequential_batch([
            SequentialPut(_wal_sequence(a.partition), a.location.encode(), [a.record_count, a.byte_count],
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
            entry = await self._ceiling(p, IndexFamily.PARQUET, offset + 1)
            if entry is not None:
                return entry
            # No Parquet entry (retention removed it): fall through to the WAL family.
        return await self._ceiling(p, IndexFamily.WAL, offset + 1)

    async def _ceiling(self, p: PartitionRef, family: IndexFamily, min_end: int) -> IndexEntry | None:
        """The entry of family with the smallest end >= min_end."""
        start, _ = keyspace.index_entries_range(p.topic_id, p.partition, family, min_end)
        found = await self.store.get(start, Comparison.CEILING, partition_key=p.partition_key)
        if found is None or keyspace.index_entry_end(p.topic_id, p.partition, family, found.key) is None:
            return None  # past the family's last entry
        return decode_entry(p, found.key, found.value, family)

    async def watch(self) -> IndexWatch:
        """Follow every partition's index: which partition changed, and the log end a WAL append reached."""
        return IndexWatch(await self.store.watch(keyspace.INDEX_ROOT))

    async def log_end_offset(self, p: PartitionRef) -> int:
        return (await self.log_end_and_bytes(p))[0]

    async def log_end_and_bytes(self, p: PartitionRef) -> tuple[int, int]:
        """The log end offset and the bytes appended to the WAL through it, from the newest WAL key ((0, 0) when
        nothing was ever appended)."""
        _, bound = keyspace.index_entries_range(p.topic_id, p.partition, IndexFamily.WAL)
        found = await self.store.get(bound, Comparison.LOWER, partition_key=p.partition_key)
        if found is None:
            return 0, 0
        return keyspace.parse_wal_key(p.topic_id, p.partition, found.key) or (0, 0)

    async def wal_after(self, p: PartitionRef, offset: int) -> WalTail:
        """The WAL entries past offset (an entry boundary: the compacted watermark), the bytes appended through
        offset and through the log end."""
        entries = await self.entries(p, IndexFamily.WAL, min_end=offset)
        bytes_at = 0
        if entries and entries[0].end == offset:
            bytes_at = entries[0].cum_bytes or 0
            entries = entries[1:]
        elif offset > 0 and entries and isinstance(entries[0].location, WalLocation):
            # The entry ending at offset was collected: the bytes through offset are those through the first
            # remaining entry minus that entry's own.
            bytes_at = (entries[0].cum_bytes or 0) - sum(entries[0].location.batch_sizes)
        if entries:
            return WalTail(entries, bytes_at, entries[-1].end, entries[-1].cum_bytes or 0)
        log_end, bytes_at_end = await self.log_end_and_bytes(p)
        return WalTail([], bytes_at_end if log_end <= offset else bytes_at, log_end, bytes_at_end)

    async def log_start_offset(self, p: PartitionRef) -> int:
        found = await self.store.get(keyspace.log_start_key(p.topic_id, p.partition), partition_key=p.partition_key)
        return int(found.value) if found else 0

    async def advance_log_start_offset(self, p: PartitionRef, offset: int) -> int:
        """Move the log start offset forward to offset (never back); return the new value."""
        key = keyspace.log_start_key(p.topic_id, p.partition)
        while True:
            found = await self.store.get(key, partition_key=p.partition_key)
            current = int(found.value) if found else 0
            if offset <= current:
                return current
            try:
                await self.store.put(
                    key, str(offset).encode(),
                    expected_version=found.version if found else -1, partition_key=p.partition_key,
                )
                return offset
            except VersionMismatchError:
                continue

    async def entries(self, p: PartitionRef, family: IndexFamily = IndexFamily.WAL, *,
                      min_end: int = 0) -> list[IndexEntry]:
        """The entries of one family whose end is at least min_end, in offset order. For compaction, GC and tools,
        not fetch."""
        start, end = keyspace.index_entries_range(p.topic_id, p.partition, family, min_end)
        found = await self.store.range_scan(start, end, partition_key=p.partition_key)
        return [decode_entry(p, e.key, e.value, family) for e in found]

    async def entries_from(self, p: PartitionRef, offset: int) -> list[IndexEntry]:
        """The entries readers use for the offsets from offset to the log end, in offset order: Parquet entries
        below the compacted watermark, WAL entries above it (idempotent producers look for a batch appended after
        a known log end). The watermark is read before and after the scans: WAL entries are collected only a grace
        period after the watermark passed them, so an unchanged watermark means nothing was missed."""
        while True:
            watermark, _ = await self.compacted_watermark(p)
            out = []
            if offset < watermark:
                compacted = await self.entries(p, IndexFamily.PARQUET, min_end=offset + 1)
                out = [e for e in compacted if e.end <= watermark]
            out += await self.entries(p, IndexFamily.WAL, min_end=max(offset, watermark) + 1)
            if (await self.compacted_watermark(p))[0] == watermark:
                return out

    # --- the compaction side ----------------------------------------------------------------------------------

    async def compacted_watermark(self, p: PartitionRef) -> tuple[int, int]:
        """(watermark, version) where version is -1 while no watermark was ever set."""
        found = await self.store.get(keyspace.watermark_key(p.topic_id, p.partition), partition_key=p.partition_key)
        return (int(found.value), found.version) if found else (0, -1)

    async def put_parquet_entry(self, p: PartitionRef, start: int, end: int, location: ParquetLocation) -> None:
        """Record that [start, end) is in a Parquet file. Idempotent: a rerun writes the same key and value."""
        await self.store.put(keyspace.parquet_key(p.topic_id, p.partition, end), location.encode(start, end),
                             partition_key=p.partition_key)

    async def swap(self, p: PartitionRef, new_watermark: int, expected_version: int) -> None:
        """The atomic switch: readers use Parquet entries below new_watermark. Raises VersionMismatchError."""
        await self.store.put(
            keyspace.watermark_key(p.topic_id, p.partition), str(new_watermark).encode(),
            expected_version=expected_version, partition_key=p.partition_key,
        )

    # --- garbage collection -----------------------------------------------------------------------------------

    async def delete_wal_entries_below(self, p: PartitionRef, offset: int) -> int:
        """Delete WAL entries whose whole range is below offset, keeping the newest entry. Return the count."""
        entries = await self.entries(p, IndexFamily.WAL)
        doomed = [e for e in entries[:-1] if e.end <= offset]
        for e in doomed:
            await self.store.delete(e.key, partition_key=p.partition_key)
        return len(doomed)

    async def delete_parquet_entries_below(self, p: PartitionRef, offset: int) -> int:
        """Delete Parquet entries whose whole range is below offset (the log start moved past them). Return the
        count."""
        doomed = [e for e in await self.entries(p, IndexFamily.PARQUET) if e.end <= offset]
        for e in doomed:
            await self.store.delete(e.key, partition_key=p.partition_key)
        return len(doomed)

    async def purge(self, p: PartitionRef) -> None:
        """Delete every index key of p: the partition of a deleted topic, once no reader can need it."""
        d = keyspace.index_dir(p.topic_id, p.partition)
        await self.store.delete_range(d.prefix, d.end, partition_key=d.partition_key)


def decode_entry(p: PartitionRef, key: str, value: bytes, family: IndexFamily | None = None) -> IndexEntry:
    """The entry stored at key; family: the family key must be of (ValueError otherwise)."""
    tag = value[:1]
    if tag == _WAL_TAG and family is not IndexFamily.PARQUET:
        parsed = keyspace.parse_wal_key(p.topic_id, p.partition, key)
        if parsed is not None:
            loc = WalLocation.decode(value)
            return IndexEntry(key, parsed[0] - sum(loc.batch_records), parsed[0], loc, parsed[1])
    if tag == _PQ_TAG and family is not IndexFamily.WAL:
        end = keyspace.parse_parquet_key(p.topic_id, p.partition, key)
        if end is not None:
            start, pq = ParquetLocation.decode(value)
            return IndexEntry(key, start, end, pq)
    raise ValueError(f"{key!r} is not an index entry of {p}{f' of the {family.name} family' if family else ''}")
