"""Garbage collection and retention.

WAL GC: a WAL object holds chunks of many partitions. It is deleted once every index entry that points into it
lies below its partition's dead boundary (max of compacted watermark and log start) and that boundary passed the
entry a grace period ago (readers that looked the entry up just before the swap finish their reads). The entries
themselves go at the same time, except the newest entry of a partition, which anchors the offset sequence: it
stays, pointing at a deleted object, but no reader uses it (it is below the watermark or the log start).
Parquet index entries below the log start go a grace period after the log start passed them.

Orphan GC: an object under wal/ that no index entry points to (written by a broker whose index append failed or
that died in between, or whose entries were collected before the object was) is deleted after a TTL.

Retention (retention.ms / retention.bytes, per topic with cleanup.policy delete): like Kafka's segment deletion, whole units are dropped from
the front of the log: Parquet data files in the compacted part, WAL entries above it. A unit goes while its newest
record is older than retention.ms, or while the log without it is still at least retention.bytes. The log start
offset moves to the end of the last dropped unit (ListOffsets earliest follows it); dropped data files are removed
from the Iceberg table in one snapshot; everything else follows through WAL GC and table maintenance. A log start
moved by DeleteRecords goes the same way: a retention run to the log start as it stands drops the table's whole
data files below it (records of a file that straddles the log start stay in the table until the file is wholly
below it; consumers never see them).

Deleted topics: DeleteTopics leaves a tombstone (dray_broker/topics/catalog.py). A grace period later, the
topic's index, producer state and boundary keys go, and its Iceberg table is purged (with any file left under its
location when the warehouse is in the object store); its WAL objects then have no index entry and go through
orphan GC.

Table maintenance: snapshots older than snapshot_retention_ms are expired (never the current one), then data files
under the table that no remaining snapshot references are deleted if their name says the committed range already
passed them (staged files of runs that never committed, and files removed by retention) and they are older than
the orphan TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field

from dray_broker import faults
from dray_broker.index.offsets import IndexEntry, ParquetLocation
from dray_broker.keyspace import IndexFamily
from dray_broker.produce.producers import purge_producer_states
from dray_broker.topics.catalog import Topic, TopicCatalog
from dray_pipelines.lake import Lake, now_ms, partition_key, wal_object_ms
from dray_pipelines.tables import purge_topic_table, table_location

log = logging.getLogger(__name__)

WAL_PREFIX = "wal/"


def _digest(items) -> str:
    return hashlib.sha1(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


# --- WAL GC --------------------------------------------------------------------------------------------------------


@dataclass
class WalGcPlan:
    entries: list[tuple[str, str]] = field(default_factory=list)  # (partition key, index key) of WAL entries
    parquet_entries: list[tuple[str, str]] = field(default_factory=list)  # (partition key, index key)
    # Per partition key with entries to delete: WAL entries below the first offset go (but the newest), Parquet
    # entries below the second. The run deletes through the offset index, which re-reads the entries.
    below: dict[str, tuple[int, int]] = field(default_factory=dict)
    objects: list[str] = field(default_factory=list)
    unnoted: list[str] = field(default_factory=list)  # partitions whose boundaries moved but are not recorded
    bytes: int = 0

    @property
    def empty(self) -> bool:
        return not (self.entries or self.parquet_entries or self.objects or self.unnoted)

    @property
    def run_key(self) -> str:
        return "wal-gc:" + _digest([self.entries, self.parquet_entries, self.objects, self.unnoted])


async def plan_wal_gc(lake: Lake, grace_ms: int, at_ms: int | None = None) -> WalGcPlan:
    at_ms = now_ms() if at_ms is None else at_ms
    plan = WalGcPlan()
    existing = {o.key: o.size for o in await lake.objects.list(WAL_PREFIX)}
    all_dead: dict[str, bool] = {}
    for topic, p in await lake.partitions():
        ref = topic.partition(p)
        key = partition_key(topic.name, p)
        watermark, _ = await lake.index.compacted_watermark(ref)
        log_start = await lake.index.log_start_offset(ref)
        history, _ = await lake.boundaries(ref)
        dead = max(watermark, log_start)
        if (dead > 0 and (not history["dead"] or history["dead"][-1][0] < dead)) or \
                (log_start > 0 and (not history["start"] or history["start"][-1][0] < log_start)):
            plan.unnoted.append(key)
        dead_expired = min(lake.expired(history["dead"], grace_ms, at_ms), dead)
        trimmed = history["trimmed"][-1][0] if history["trimmed"] else 0
        start_expired = min(lake.expired(history["start"], grace_ms, at_ms), log_start, trimmed)
        planned = len(plan.entries) + len(plan.parquet_entries)
        entries = await lake.index.entries(ref, IndexFamily.WAL)
        for i, e in enumerate(entries):
            gone = e.end <= dead_expired
            obj = e.location.object_key
            all_dead[obj] = all_dead.get(obj, True) and gone
            if gone and i < len(entries) - 1:
                plan.entries.append((key, e.key))
        if start_expired > 0:
            for e in await lake.index.entries(ref, IndexFamily.PARQUET):
                if e.end <= start_expired:
                    plan.parquet_entries.append((key, e.key))
        if len(plan.entries) + len(plan.parquet_entries) > planned:
            plan.below[key] = (dead_expired, start_expired)
    plan.objects = sorted(k for k, gone in all_dead.items() if gone and k in existing)
    plan.bytes = sum(existing[k] for k in plan.objects)
    return plan


async def run_wal_gc(lake: Lake, grace_ms: int) -> dict:
    """Record boundaries not yet recorded, then delete what a fresh plan says is collectable."""
    topics = {t.name: t for t in await lake.topics()}
    by_partition = {partition_key(t.name, p): t.partition(p) for t in topics.values() for p in range(t.partitions)}
    first = await plan_wal_gc(lake, grace_ms)
    for key in first.unnoted:
        ref = by_partition[key]
        watermark, _ = await lake.index.compacted_watermark(ref)
        log_start = await lake.index.log_start_offset(ref)
        await lake.note_boundaries(ref, dead=max(watermark, log_start), start=log_start or None)
    plan = await plan_wal_gc(lake, grace_ms) if first.unnoted else first
    wal_deleted = parquet_deleted = 0
    for key, (wal_below, parquet_below) in plan.below.items():
        ref = by_partition[key]
        wal_deleted += await lake.index.delete_wal_entries_below(ref, wal_below)
        parquet_deleted += await lake.index.delete_parquet_entries_below(ref, parquet_below)
    faults.point("wal_gc.before_objects")
    for obj in plan.objects:
        await lake.objects.delete(obj)
    return {"wal_entries_deleted": wal_deleted, "parquet_entries_deleted": parquet_deleted,
            "objects_deleted": len(plan.objects), "bytes_deleted": plan.bytes,
            "boundaries_noted": len(first.unnoted)}


# --- orphan GC -------------------------------------------------------------------------------------------------------


@dataclass
class OrphanPlan:
    objects: list[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def empty(self) -> bool:
        return not self.objects

    @property
    def run_key(self) -> str:
        return "orphan-gc:" + _digest(self.objects)


async def plan_orphans(lake: Lake, ttl_ms: int, at_ms: int | None = None) -> OrphanPlan:
    at_ms = now_ms() if at_ms is None else at_ms
    # List first, then read the index: an object indexed in between is seen as referenced, and one written after
    # the listing is not considered at all.
    listed = await lake.objects.list(WAL_PREFIX)
    referenced: set[str] = set()
    for topic, p in await lake.partitions():
        for e in await lake.index.entries(topic.partition(p), IndexFamily.WAL):
            referenced.add(e.location.object_key)
    plan = OrphanPlan()
    for o in listed:
        if o.key in referenced:
            continue
        written = max(wal_object_ms(o.key) or 0, int(o.last_modified * 1000))
        if at_ms - written >= ttl_ms:
            plan.objects.append(o.key)
            plan.bytes += o.size
    return plan


async def run_orphan_gc(lake: Lake, ttl_ms: int) -> dict:
    plan = await plan_orphans(lake, ttl_ms)
    for key in plan.objects:
        await lake.objects.delete(key)
    return {"orphans_deleted": len(plan.objects), "bytes_deleted": plan.bytes}


# --- deleted topics --------------------------------------------------------------------------------------------------


async def plan_deleted_topics(lake: Lake, grace_ms: int, at_ms: int | None = None) -> list[Topic]:
    """Deleted topics whose data can go: deleted a grace period ago (readers finish), and not live again under the
    same id (a delete that crashed after its tombstone)."""
    at_ms = now_ms() if at_ms is None else at_ms
    live = {t.id for t in await lake.topics()}
    return [t for t, deleted_ms in await TopicCatalog(lake.store).deleted()
            if t.id not in live and deleted_ms + grace_ms <= at_ms]


async def purge_deleted_topics(lake: Lake, grace_ms: int) -> dict:
    topics = await plan_deleted_topics(lake, grace_ms)
    tables = files = 0
    for t in topics:
        for p in range(t.partitions):
            ref = t.partition(p)
            await lake.index.purge(ref)
            await purge_producer_states(lake.store, ref)
            await lake.forget_partition(ref)
        tables += await asyncio.to_thread(lambda: purge_topic_table(lake.catalog, lake.settings, t.name, t.id))
        prefix = lake.settings.object_key(table_location(lake.settings, t.name, t.id))
        if prefix is not None:
            for o in await lake.objects.list(prefix + "/"):
                await lake.objects.delete(o.key)
                files += 1
        await TopicCatalog(lake.store).forget_deleted(t.id)
    return {"topics_purged": len(topics), "tables_purged": tables, "files_deleted": files}


# --- retention -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A piece of the log retention drops whole: a Parquet data file or a WAL entry."""

    start: int
    end: int
    bytes: int
    max_timestamp: int


@dataclass(frozen=True)
class RetentionPlan:
    topic: str
    partition: int
    log_start: int
    new_log_start: int

    @property
    def run_key(self) -> str:
        return f"retention:{self.topic}-{self.partition}:{self.new_log_start}"


async def _units(lake: Lake, topic: Topic, p: int) -> tuple[int, list[Unit]]:
    ref = topic.partition(p)
    watermark, _ = await lake.index.compacted_watermark(ref)
    files: dict[str, list[IndexEntry]] = {}
    for e in await lake.index.entries(ref, IndexFamily.PARQUET):
        if e.end <= watermark:
            files.setdefault(e.location.path, []).append(e)
    units = []
    for entries in files.values():
        loc: ParquetLocation = entries[0].location
        f_start, f_end = (loc.extra or {}).get("file", [entries[0].start, entries[-1].end])
        units.append(Unit(f_start, f_end, sum((e.location.extra or {}).get("bytes", 0) for e in entries),
                          max(e.location.max_timestamp for e in entries)))
    units.sort(key=lambda u: u.start)
    compacted_end = units[-1].end if units else 0
    for e in await lake.index.entries(ref, IndexFamily.WAL):
        if e.end > max(watermark, compacted_end):
            units.append(Unit(e.start, e.end, sum(e.location.batch_sizes), e.location.max_timestamp))
    return watermark, units


async def plan_retention(lake: Lake, topic: Topic, p: int, at_ms: int | None = None) -> RetentionPlan | None:
    retention_ms = topic.int_config("retention.ms")
    retention_bytes = topic.int_config("retention.bytes")
    if "delete" not in topic.cleanup_policies:
        retention_ms = retention_bytes = -1  # compact only: records go by key, never by age or size
    at_ms = now_ms() if at_ms is None else at_ms
    ref = topic.partition(p)
    log_start = await lake.index.log_start_offset(ref)
    watermark, units = await _units(lake, topic, p)
    if log_start > 0 and any(u.end <= min(log_start, watermark) for u in units):
        # The log start moved past whole data files the table still holds (DeleteRecords, or a retention run
        # that stopped before its trim): trim the table there.
        history, _ = await lake.boundaries(ref)
        if not history["trimmed"] or history["trimmed"][-1][0] < log_start:
            return RetentionPlan(topic.name, p, log_start, log_start)
    units = [u for u in units if u.end > log_start]
    total = sum(u.bytes for u in units)
    new_start = log_start
    for u in units if retention_ms >= 0 or retention_bytes >= 0 else ():
        too_old = retention_ms >= 0 and u.max_timestamp < at_ms - retention_ms
        too_big = retention_bytes >= 0 and total - u.bytes >= retention_bytes
        if not (too_old or too_big):
            break
        new_start = u.end
        total -= u.bytes
    if new_start <= log_start:
        return None
    return RetentionPlan(topic.name, p, log_start, new_start)


async def plan_all_retention(lake: Lake, at_ms: int | None = None) -> list[RetentionPlan]:
    out = []
    for topic, p in await lake.partitions():
        plan = await plan_retention(lake, topic, p, at_ms)
        if plan is not None:
            out.append(plan)
    return out


async def apply_retention(lake: Lake, topic_name: str, p: int, new_start: int) -> dict:
    """Move the log start to new_start, then drop the table's data files below it (whole files only)."""
    topic = await lake.topic(topic_name)
    if topic is None:
        return {"skipped": "topic is gone"}
    ref = topic.partition(p)
    start = await lake.index.advance_log_start_offset(ref, new_start)
    watermark, _ = await lake.index.compacted_watermark(ref)
    await lake.note_boundaries(ref, dead=max(watermark, start), start=start)
    faults.point("retention.after_log_start")
    table = lake.table(topic)
    snapshot_id = None
    dropped = []
    if watermark > 0:
        files = await asyncio.to_thread(table.live_files, p, 0, start)
        dropped = [f for f in files if f.end <= start]
        snapshot_id = await asyncio.to_thread(table.delete_files, p, dropped, start)
    faults.point("retention.after_trim")
    await lake.note_boundaries(ref, trimmed=start)
    return {"log_start": start, "files_dropped": len(dropped), "records_dropped_from_table":
            sum(f.record_count for f in dropped), "snapshot_id": snapshot_id}


# --- table maintenance -----------------------------------------------------------------------------------------------

_STAGED = re.compile(r"(\d{5})-(\d{20})-(\d{20})\.parquet$")


async def maintain_tables(lake: Lake, snapshot_retention_ms: int, ttl_ms: int) -> dict:
    """Expire old snapshots, then delete unreferenced data files that are dead (see the module doc)."""
    expired = deleted = 0
    at_ms = now_ms()
    for topic in await lake.topics():
        table = lake.table(topic)
        expired += await asyncio.to_thread(table.expire_snapshots, snapshot_retention_ms)
        prefix = lake.settings.object_key(table.location)
        if prefix is None:
            continue  # the warehouse is not in the object store: nothing listed here
        referenced = {lake.settings.object_key(p) for p in await asyncio.to_thread(table.referenced_files)}
        committed = await asyncio.to_thread(table.committed, False)
        for o in await lake.objects.list(prefix + "/data/"):
            if o.key in referenced or at_ms - int(o.last_modified * 1000) < ttl_ms:
                continue
            m = _STAGED.search(o.key)
            if m and int(m.group(3)) > committed.get(int(m.group(1)), 0):
                continue  # a staged range not committed yet: a run may still commit it
            await lake.objects.delete(o.key)
            deleted += 1
    return {"snapshots_expired": expired, "data_files_deleted": deleted}
