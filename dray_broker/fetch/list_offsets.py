"""The ListOffsets API (v1-11): offsets by sentinel or by timestamp, per partition.

Sentinels, as Kafka's UnifiedLog.fetchOffsetByTimestamp answers them:
    -1 LATEST            the log end offset (fresh from the store: another broker may have appended), timestamp -1
    -2 EARLIEST          the log start offset, timestamp -1
    -3 MAX_TIMESTAMP     (v7+) the first record with the largest timestamp: its offset and timestamp
    -4 EARLIEST_LOCAL    (v8+) = EARLIEST: there is no local/remote split, the object store holds the whole log
    -5 LATEST_TIERED     (v9+) the highest offset in remote storage. Every acknowledged record of Dray is in the
                         object store, so that is the last offset, log end - 1 (-1 for an empty log, as Kafka
                         answers when nothing is tiered). Kafka's offset here is inclusive, unlike LATEST.
    -6 EARLIEST_PENDING_UPLOAD (v11+) the first offset not yet uploaded: nothing is pending, so the log end.
A timestamp >= 0 gives the first offset (in offset order, at or after the log start) whose record timestamp is
>= the target, with that record's timestamp. Like Kafka, "no such record" (and MAX_TIMESTAMP on an empty log) is
error NONE with offset -1 and timestamp -1. A sentinel newer than the request version gets UNSUPPORTED_VERSION, a
partition asked for twice INVALID_REQUEST (both as Kafka does).

Timestamp searches use the index entries' min/max timestamps to find the entry, the batch headers' max timestamps
to find the batch, and decode only that batch (records/decode.py): this is off the produce/fetch hot path.
read_committed is the same as read_uncommitted (no transactions, so the last stable offset is the log end).
Leader epoch: 0 (what Metadata reports) for a found offset, -1 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from kio.schema.errors import ErrorCode

from dray_broker.fetch.reader import OffsetOutOfRange
from dray_broker.index.offsets import IndexEntry, PartitionRef, WalLocation
from dray_broker.keyspace import IndexFamily
from dray_broker.protocol.codec import Request, make, response_module
from dray_broker.records.batch import HEADER_SIZE, BatchHeader, iter_batch_positions
from dray_broker.records.decode import DEFAULT_MAX_INFLATED, Record, decode_batch
from dray_broker.server.handling import RequestContext, Response
from dray_broker.server.services import FetchService
from dray_broker.topics.catalog import Topic

log = logging.getLogger(__name__)

LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
EARLIEST_LOCAL = -4
LATEST_TIERED = -5
EARLIEST_PENDING_UPLOAD = -6
# The first ListOffsets version that may carry each sentinel (Kafka's ListOffsetsRequest).
SENTINEL_MIN_VERSION = {LATEST: 0, EARLIEST: 0, MAX_TIMESTAMP: 7, EARLIEST_LOCAL: 8, LATEST_TIERED: 9,
                        EARLIEST_PENDING_UPLOAD: 11}
UNKNOWN = -1
LEADER_EPOCH = 0
# Bytes read at once from an entry whose size the index does not record (Parquet entries).
_UNSIZED_READ = 8 * 1024 * 1024


async def handle_list_offsets(service: FetchService, ctx: RequestContext, req: Request) -> Response:
    M = response_module(req.api_key, req.version)
    body = req.body
    asked = Counter((t.name, p.partition_index) for t in body.topics for p in t.partitions)
    topics = []
    for t in body.topics:
        try:
            topic = await service.topics.get(t.name)
        except Exception:
            log.exception("ListOffsets: cannot read topic %s", t.name)
            results = [(ErrorCode.unknown_server_error, UNKNOWN, UNKNOWN)] * len(t.partitions)
        else:
            results = await asyncio.gather(*(
                _partition(service, req.version, topic, t.name, p, asked[(t.name, p.partition_index)] > 1)
                for p in t.partitions))
        topics.append(make(M.ListOffsetsTopicResponse, name=t.name, partitions=tuple(
            make(M.ListOffsetsPartitionResponse, partition_index=p.partition_index, error_code=error,
                 timestamp=timestamp, offset=offset, leader_epoch=LEADER_EPOCH if offset >= 0 else -1,
                 old_style_offsets=(offset,) if offset >= 0 else ())
            for p, (error, offset, timestamp) in zip(t.partitions, results)
        )))
    return Response(make(M.ListOffsetsResponse, throttle_time=0, topics=tuple(topics)))


async def _partition(service: FetchService, version: int, topic: Topic | None, name: str, p: Any,
                     duplicate: bool) -> tuple[ErrorCode, int, int]:
    """(error, offset, timestamp) for one partition."""
    if duplicate:
        return ErrorCode.invalid_request, UNKNOWN, UNKNOWN
    if topic is None or not 0 <= p.partition_index < topic.partitions:
        return ErrorCode.unknown_topic_or_partition, UNKNOWN, UNKNOWN
    ts = p.timestamp
    if ts in SENTINEL_MIN_VERSION and version < SENTINEL_MIN_VERSION[ts]:
        return ErrorCode.unsupported_version, UNKNOWN, UNKNOWN
    ref = topic.partition(p.partition_index)
    try:
        offset, timestamp = await offset_for(service, ref, ts)
    except Exception:
        log.exception("ListOffsets %s-%d timestamp %d failed", name, p.partition_index, ts)
        return ErrorCode.unknown_server_error, UNKNOWN, UNKNOWN
    return ErrorCode.none, offset, timestamp


async def offset_for(service: FetchService, ref: PartitionRef, ts: int) -> tuple[int, int]:
    """(offset, timestamp) answering ListOffsets' timestamp ts for one partition; (-1, -1) if none."""
    if ts in (EARLIEST, EARLIEST_LOCAL):
        return await service.index.log_start_offset(ref), UNKNOWN
    if ts in (LATEST, EARLIEST_PENDING_UPLOAD):
        return await service.reader.log_end_offset(ref, fresh=True), UNKNOWN
    if ts == LATEST_TIERED:
        return await service.reader.log_end_offset(ref, fresh=True) - 1, UNKNOWN
    if ts == MAX_TIMESTAMP:
        return await _max_timestamp(service, ref)
    # Any other value (a timestamp >= 0, or a negative one Kafka does not define) is searched as a timestamp, as
    # Kafka does: the first record at or after it.
    return await _first_at_or_after(service, ref, ts)


# --- searching the log -----------------------------------------------------------------------------------------


async def _entries(service: FetchService, ref: PartitionRef) -> tuple[int, list[IndexEntry]]:
    """(log start, the index entries covering [log start, log end) in offset order). WAL entries where they
    exist; below them, compacted (Parquet) entries."""
    start = await service.index.log_start_offset(ref)
    wal = await service.index.entries(ref, IndexFamily.WAL)
    first_wal = wal[0].start if wal else None
    covered = []
    if first_wal is None or first_wal > start:
        for e in await service.index.entries(ref, IndexFamily.PARQUET):
            if e.end > start and (first_wal is None or e.end <= first_wal):
                covered.append(e)
    covered.extend(e for e in wal if e.end > start)
    return start, covered


async def _batches(service: FetchService, ref: PartitionRef, entry: IndexEntry,
                   log_start: int) -> list[tuple[BatchHeader, int, memoryview | bytes]]:
    """(header, position, data) of each batch of entry, reading its bytes through the fetch reader (cached)."""
    loc = entry.location
    budget = sum(loc.batch_sizes) if isinstance(loc, WalLocation) else _UNSIZED_READ
    offset = max(entry.start, log_start)
    try:
        result = await service.reader.read(ref, offset, budget)
    except OffsetOutOfRange:  # retention moved the log start meanwhile
        return []
    data = result.records
    out = []
    for pos, h in iter_batch_positions(data):
        if h.base_offset >= entry.end:
            break
        out.append((h, pos, data))
    return out


def _records(service: FetchService, ref: PartitionRef, data: memoryview | bytes, pos: int) -> list[Record]:
    """The records of the batch at data[pos:], inflated no further than its topic's max.message.bytes allows."""
    topic = service.topics.by_id(ref.topic_id)
    limit = topic.int_config("max.message.bytes") - HEADER_SIZE if topic is not None else DEFAULT_MAX_INFLATED
    return decode_batch(data, pos, max_inflated=limit).records


async def _first_at_or_after(service: FetchService, ref: PartitionRef, target: int) -> tuple[int, int]:
    start, entries = await _entries(service, ref)
    for entry in entries:
        if entry.location.max_timestamp < target:
            continue
        for h, pos, data in await _batches(service, ref, entry, start):
            if h.max_timestamp < target:
                continue
            for r in _records(service, ref, data, pos):
                if r.offset >= start and r.timestamp >= target:
                    return r.offset, r.timestamp
    return UNKNOWN, UNKNOWN


async def _max_timestamp(service: FetchService, ref: PartitionRef) -> tuple[int, int]:
    """The first record (lowest offset) among those with the largest timestamp, as Kafka (KIP-734)."""
    start, entries = await _entries(service, ref)
    best: tuple[int, int] | None = None  # (timestamp, offset)
    # Entries by max timestamp, descending (earlier first among equals); stop once none can beat the best.
    for entry in sorted(entries, key=lambda e: (-e.location.max_timestamp, e.start)):
        max_ts = entry.location.max_timestamp
        if best is not None and (max_ts < best[0] or (max_ts == best[0] and entry.start > best[1])):
            continue
        batches = await _batches(service, ref, entry, start)
        for h, pos, data in sorted(batches, key=lambda b: (-b[0].max_timestamp, b[0].base_offset)):
            if best is not None and (h.max_timestamp < best[0] or
                                     (h.max_timestamp == best[0] and h.base_offset > best[1])):
                continue
            for r in _records(service, ref, data, pos):
                if r.offset < start:
                    continue
                if best is None or r.timestamp > best[0] or (r.timestamp == best[0] and r.offset < best[1]):
                    best = (r.timestamp, r.offset)
    if best is None:
        return UNKNOWN, UNKNOWN
    return best[1], best[0]
