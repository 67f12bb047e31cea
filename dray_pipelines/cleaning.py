"""The cleaner of compacted topics (cleanup.policy compact, or compact,delete): Kafka's log compaction over the
topic's Iceberg table and offset index.

What it keeps. A pass cleans the log below a clean point E: of the records in [log start, E) it keeps, per key, the
one with the highest offset below E, at its original offset; earlier records of the key go, and so do records
without a key (as Kafka's cleaner drops them) and records below the log start. A kept tombstone (null value) goes
once delete.retention.ms passed since the first pass that cleaned its offset (Kafka's delete horizon), so that
consumers that read the log within that time see the delete. Records at or above E are never touched: E is at most
the compacted watermark (the WAL tail, where producers append, is never cleaned) and stops before the first data
file holding a record younger than min.compaction.lag.ms.

When. The cleaning sensor asks for a pass when the dirty part (the log between the previous pass's E and the new
one) is at least min.cleanable.dirty.ratio of the cleanable log, when its oldest record is older than
max.compaction.lag.ms, or when a tombstone's delete horizon passed. `dray compact --all` asks for a pass wherever
there is anything dirty or a tombstone.

How (one partition, a clean point E and the pass's time T, both in the run's tags so that every retry computes the
same thing):
1. stage    read the keys and offsets of the live data files below E, find the latest offset per key, and write a
            cleaned file for each data file that loses a record, with one row group per row group of the file it
            replaces (none for a range left empty), named by its range and T. Then a manifest (old file -> new file,
            when the oldest tombstone left may go) at a name made of E and T: its presence says the stage is done.
2. commit   one Iceberg snapshot that removes the replaced files and adds the cleaned ones (a cleaned file with no
            record is not added). The snapshot summary says dray.operation=cleaning.
3. publish  point each Parquet index entry of a replaced file at its range in the cleaned file (one put per entry:
            a reader sees each range whole, before or after its cleaning, both valid views of a compacted log), then
            record the pass in the partition's cleaner state.
Each step re-reads where things stand, so a rerun after a crash anywhere finishes the pass; replaced files stay in
older snapshots (readers that looked an entry up before the switch finish) until table maintenance expires them.

The Iceberg table of a compacted topic therefore holds what a consumer reading from the log start gets: the cleaned
log below the last clean point (latest record per key, tombstones until their horizon) and every record above it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dray_broker import faults
from dray_broker import lake_schema as C
from dray_broker.index.offsets import ParquetLocation
from dray_broker.keyspace import IndexFamily
from dray_broker.topics.catalog import Topic
from dray_pipelines.lake import Lake, now_ms
from dray_pipelines.sql import CONTENTS_PROPERTY
from dray_pipelines.tables import CleanedFileWriter, LiveFile, TopicTable

log = logging.getLogger(__name__)

S_OPERATION = "dray.operation"
S_CLEANED_AT = "dray.cleaned-at"
S_CLEAN_END = "dray.clean-end"
# Table property: what the table of a topic holds, for SQL users (`dray sql` shows it).
P_CONTENTS = CONTENTS_PROPERTY
CLEANED_CONTENTS = ("cleaned log of a compacted topic (cleanup.policy={policy}): below offset {end} of each cleaned "
                    "partition, only the latest record per key (tombstones until delete.retention.ms); every record "
                    "above it")


class CleaningError(Exception):
    """The table, the index and the plan disagree in a way a retry will not fix."""


@dataclass(frozen=True)
class CleanPlan:
    topic: str
    partition: int
    end: int  # the clean point E
    at_ms: int  # the pass's time T
    passes: int  # passes finished before this one (names the pass in its run key)
    reason: str
    dirty_ratio: float

    @property
    def run_key(self) -> str:
        return f"clean:{self.topic}-{self.partition}:{self.end}:{self.passes}"


@dataclass
class CleanResult:
    topic: str
    partition: int
    end: int
    action: str
    files_replaced: int = 0
    records_before: int = 0
    records_after: int = 0
    tombstones_removed: int = 0
    snapshot_id: int | None = None
    entries: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


# --- planning -----------------------------------------------------------------------------------------------------


async def plan_cleaning(lake: Lake, topic: Topic, p: int, *, force: bool = False,
                        at_ms: int | None = None) -> CleanPlan | None:
    """The next pass of a compacted topic's partition, if one is due (force: if anything is dirty or a tombstone
    is left)."""
    if not topic.compacted:
        return None
    at_ms = now_ms() if at_ms is None else at_ms
    ref = topic.partition(p)
    watermark, _ = await lake.index.compacted_watermark(ref)
    log_start = await lake.index.log_start_offset(ref)
    entries = [e for e in await lake.index.entries(ref, IndexFamily.PARQUET) if log_start < e.end <= watermark]
    if not entries:
        return None
    # The clean point: the end of the last data file whose records are all older than min.compaction.lag.ms.
    lag_limit = at_ms - topic.int_config("min.compaction.lag.ms")
    files: dict[tuple[int, int], list] = {}
    for e in entries:
        span = tuple((e.location.extra or {}).get("file", [e.start, e.end]))
        files.setdefault(span, []).append(e)
    end = log_start
    for (_, f_end), group in sorted(files.items()):
        if any(e.location.max_timestamp > lag_limit for e in group):
            break
        end = f_end
    if end <= log_start:
        return None
    state = await lake.cleaner(ref)
    cleaned_end = state["passes"][-1][0] if state["passes"] else 0
    cleanable = [e for e in entries if e.end <= end]
    dirty = [e for e in cleanable if e.end > cleaned_end]
    total_bytes = sum(_bytes(e) for e in cleanable)
    dirty_ratio = sum(_bytes(e) for e in dirty) / total_bytes if total_bytes else 0.0
    oldest_dirty = min((e.location.min_timestamp for e in dirty), default=None)
    tombstones_due = state["tombstones_due_ms"]
    reason = ""
    if dirty and dirty_ratio >= topic.float_config("min.cleanable.dirty.ratio"):
        reason = "dirty ratio"
    elif dirty and oldest_dirty is not None and at_ms - oldest_dirty > topic.int_config("max.compaction.lag.ms"):
        reason = "max.compaction.lag.ms"
    elif tombstones_due is not None and tombstones_due <= at_ms:
        reason = "tombstones due"
    elif force and (dirty or tombstones_due is not None):
        reason = "forced"
    if not reason:
        return None
    return CleanPlan(topic.name, p, end, at_ms, len(state["passes"]), reason, round(dirty_ratio, 4))


def _bytes(e) -> int:
    extra = e.location.extra or {}
    return int(extra.get("bytes") or extra.get("rows") or (e.end - e.start))


async def plan_all_cleaning(lake: Lake, *, force: bool = False, at_ms: int | None = None) -> list[CleanPlan]:
    out = []
    for topic, p in await lake.partitions():
        plan = await plan_cleaning(lake, topic, p, force=force, at_ms=at_ms)
        if plan is not None:
            out.append(plan)
    return out


# --- the manifest of a pass ------------------------------------------------------------------------------------------


def _manifest_path(table: TopicTable, p: int, end: int, at_ms: int) -> str:
    return f"{table.location}/data/partition={p}/{p:05d}-clean-{end:020d}-{at_ms}.json"


def _cleaned_path(table: TopicTable, p: int, f: LiveFile, at_ms: int) -> str:
    return f"{table.location}/data/partition={p}/{p:05d}-{f.start:020d}-{f.end:020d}-c{at_ms}.parquet"


def _read_manifest(table: TopicTable, path: str) -> dict | None:
    io = table.table().io
    try:
        with io.new_input(path).open() as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except OSError as e:
        if "not found" in str(e).lower() or "no such" in str(e).lower():
            return None
        raise


def _write_manifest(table: TopicTable, path: str, doc: dict) -> None:
    with table.table().io.new_output(path).create(overwrite=True) as f:
        f.write(json.dumps(doc, sort_keys=True).encode())


async def _topic(lake: Lake, name: str) -> Topic:
    topic = await lake.topic(name)
    if topic is None:
        raise CleaningError(f"topic {name!r} does not exist")
    return topic


async def _done(lake: Lake, topic: Topic, p: int, end: int, at_ms: int) -> bool:
    return [end, at_ms] in (await lake.cleaner(topic.partition(p)))["passes"]


# --- 1. stage -------------------------------------------------------------------------------------------------------


async def _begin(lake: Lake, topic_name: str, p: int, end: int, at_ms: int) -> tuple[Topic, CleanResult]:
    """Each step's start: the topic, and its result, already 'already cleaned' when the pass is done."""
    topic = await _topic(lake, topic_name)
    result = CleanResult(topic_name, p, end, "")
    if await _done(lake, topic, p, end, at_ms):
        result.action = "already cleaned"
    return topic, result


async def stage(lake: Lake, topic_name: str, p: int, end: int, at_ms: int) -> CleanResult:
    started = time.perf_counter()
    topic, result = await _begin(lake, topic_name, p, end, at_ms)
    if result.action:
        return result
    table = lake.table(topic)
    manifest_path = _manifest_path(table, p, end, at_ms)
    manifest = await asyncio.to_thread(_read_manifest, table, manifest_path)
    if manifest is not None:
        result.action = "already staged"
        result.files = list(manifest["files"].values())
        return result
    ref = topic.partition(p)
    log_start = await lake.index.log_start_offset(ref)
    passes = (await lake.cleaner(ref))["passes"]
    delete_retention = topic.int_config("delete.retention.ms")
    files = [f for f in await asyncio.to_thread(table.live_files, p, 0, end) if f.end <= end and f.end > log_start]
    latest = await asyncio.to_thread(_latest_offsets, table, files, log_start)
    replaced: dict[str, str | None] = {}
    tombstones_due: int | None = None
    faults.point("clean.stage.before_write")
    for i, f in enumerate(files):
        cleaned, stats = await asyncio.to_thread(_clean_file, table, f, latest, log_start, passes, at_ms,
                                                 delete_retention)
        result.records_before += stats["before"]
        result.records_after += stats["after"]
        result.tombstones_removed += stats["tombstones_removed"]
        if stats["tombstones_due_ms"] is not None:
            tombstones_due = min(tombstones_due or stats["tombstones_due_ms"], stats["tombstones_due_ms"])
        if cleaned is None:
            continue  # nothing to remove from this file
        path = _cleaned_path(table, p, f, at_ms)
        await asyncio.to_thread(_write_cleaned, table, path, f, cleaned)
        replaced[f.path] = path
        if i == 0:
            faults.point("clean.stage.mid_write")
    faults.point("clean.stage.after_write")
    await asyncio.to_thread(_write_manifest, table, manifest_path,
                            {"end": end, "at_ms": at_ms, "files": replaced, "tombstones_due_ms": tombstones_due})
    result.action = "staged"
    result.files_replaced = len(replaced)
    result.files = list(replaced.values())
    result.seconds = time.perf_counter() - started
    return result


def _read(table: TopicTable, path: str, columns: list[str] | None = None) -> pa.Table:
    with table.table().io.new_input(path).open() as f:
        return pq.read_table(f, columns=columns)


def _latest_offsets(table: TopicTable, files: list[LiveFile], log_start: int) -> pa.Array:
    """The offset of the latest record of each key among the files' records at or above the log start."""
    parts = []
    for f in files:
        t = _read(table, f.path, [C.OFFSET, C.KEY])
        parts.append(t.filter(pc.and_(pc.greater_equal(t[C.OFFSET], log_start), pc.is_valid(t[C.KEY]))))
    if not parts:
        return pa.array([], pa.int64())
    keyed = pa.concat_tables(parts)
    return keyed.group_by(C.KEY).aggregate([(C.OFFSET, "max")]).column(f"{C.OFFSET}_max").combine_chunks()


def _first_pass_ms(passes: list[list[int]], offset: int, at_ms: int) -> int:
    """When a pass first cleaned offset (this pass's time if none did)."""
    return next((ms for end, ms in passes if end > offset), at_ms)


def _clean_file(table: TopicTable, f: LiveFile, latest: pa.Array, log_start: int, passes: list[list[int]],
                at_ms: int, delete_retention_ms: int) -> tuple[pa.Table | None, dict]:
    """The file's records the pass keeps (None if that is all of them), and counts."""
    data = _read(table, f.path)
    offsets = data[C.OFFSET]
    keep = pc.and_(pc.greater_equal(offsets, log_start), pc.is_in(offsets, value_set=latest))
    tombstones = pc.and_(keep, pc.is_null(data[C.VALUE]))
    removed_tombstones = 0
    due: int | None = None
    if pc.any(tombstones).as_py():
        expired = []
        for o in pc.filter(offsets, tombstones).to_pylist():
            horizon = _first_pass_ms(passes, o, at_ms) + delete_retention_ms
            if horizon <= at_ms:
                expired.append(o)
            else:
                due = horizon if due is None else min(due, horizon)
        if expired:
            keep = pc.and_(keep, pc.invert(pc.is_in(offsets, value_set=pa.array(expired, pa.int64()))))
            removed_tombstones = len(expired)
    kept = data.filter(keep)
    stats = {"before": data.num_rows, "after": kept.num_rows, "tombstones_removed": removed_tombstones,
             "tombstones_due_ms": due}
    return (None if kept.num_rows == data.num_rows else kept), stats


def _write_cleaned(table: TopicTable, path: str, f: LiveFile, kept: pa.Table) -> None:
    writer = CleanedFileWriter(table.table(), path)
    offsets = kept[C.OFFSET]
    try:
        for g in f.row_groups:
            part = kept.filter(pc.and_(pc.greater_equal(offsets, g.start), pc.less(offsets, g.end)))
            writer.write_range(part, g.start, g.end, part.nbytes if part.num_rows else 0, g.min_timestamp,
                               g.max_timestamp)
        writer.close()
    except BaseException:
        writer.abort()
        raise


# --- 2. commit ------------------------------------------------------------------------------------------------------


async def _manifest(lake: Lake, table: TopicTable, topic: Topic, p: int, end: int, at_ms: int) -> dict:
    path = _manifest_path(table, p, end, at_ms)
    manifest = await asyncio.to_thread(_read_manifest, table, path)
    if manifest is None:
        await stage(lake, topic.name, p, end, at_ms)
        manifest = await asyncio.to_thread(_read_manifest, table, path)
    return manifest


async def commit(lake: Lake, topic_name: str, p: int, end: int, at_ms: int) -> CleanResult:
    started = time.perf_counter()
    topic, result = await _begin(lake, topic_name, p, end, at_ms)
    if result.action:
        return result
    table = lake.table(topic)
    manifest = await _manifest(lake, table, topic, p, end, at_ms)
    replaced = {old: (new if await asyncio.to_thread(_has_records, table, new) else None)
                for old, new in manifest["files"].items()}
    faults.point("clean.commit.before")
    result.snapshot_id = await asyncio.to_thread(
        table.replace_files, p, replaced,
        {S_OPERATION: "cleaning", S_CLEAN_END: str(end), S_CLEANED_AT: str(at_ms)})
    faults.point("clean.commit.after")
    await asyncio.to_thread(table.set_properties, **{
        P_CONTENTS: CLEANED_CONTENTS.format(policy=topic.config("cleanup.policy"), end=end)})
    result.action = "committed" if result.snapshot_id is not None else "already committed"
    result.files_replaced = len(replaced)
    result.files = [n for n in replaced.values() if n]
    result.seconds = time.perf_counter() - started
    return result


def _has_records(table: TopicTable, path: str) -> bool:
    with table.table().io.new_input(path).open() as f:
        return pq.read_metadata(f).num_rows > 0


# --- 3. publish -----------------------------------------------------------------------------------------------------


async def publish(lake: Lake, topic_name: str, p: int, end: int, at_ms: int) -> CleanResult:
    started = time.perf_counter()
    topic, result = await _begin(lake, topic_name, p, end, at_ms)
    if result.action:
        return result
    table = lake.table(topic)
    manifest = await _manifest(lake, table, topic, p, end, at_ms)
    live = {f.path for f in await asyncio.to_thread(table.live_files, p, 0, end)}
    still = [old for old in manifest["files"] if old in live]
    if still:
        raise CleaningError(f"{topic_name}-{p}: {len(still)} replaced files are still in the table: commit first")
    ref = topic.partition(p)
    log_start = await lake.index.log_start_offset(ref)
    for old, new in manifest["files"].items():
        f = await asyncio.to_thread(table.describe_file, new)
        if f.end <= log_start:
            continue  # retention dropped the range meanwhile
        key = lake.settings.object_key(new)
        for g in f.row_groups:
            extra = {"rg": g.index, "footer": list(f.footer), "size": f.size, "file": [f.start, f.end],
                     "bytes": g.wal_bytes, "rows": g.end - g.start, "ms": now_ms(), "cleaned": True}
            if key is not None:
                extra["key"] = key
            if g.index < 0:
                extra["empty"] = True
            await lake.index.put_parquet_entry(ref, g.start, g.end,
                                               ParquetLocation(new, g.min_timestamp, g.max_timestamp, extra))
            result.entries += 1
            if result.entries == 1:
                faults.point("clean.publish.mid_entries")
    faults.point("clean.publish.before_note")
    await lake.note_cleaned(ref, end, at_ms, manifest["tombstones_due_ms"])
    result.action = "published"
    result.files_replaced = len(manifest["files"])
    result.seconds = time.perf_counter() - started
    return result


async def clean_once(lake: Lake, topic_name: str, p: int, end: int, at_ms: int) -> list[CleanResult]:
    """The three steps in order (for scripts and tests; Dagster runs them as separate steps)."""
    return [await stage(lake, topic_name, p, end, at_ms), await commit(lake, topic_name, p, end, at_ms),
            await publish(lake, topic_name, p, end, at_ms)]
