"""The compaction saga for one topic-partition and one target end offset E (a WAL entry boundary):

1. stage    read the WAL chunks of [begin, E), decode every batch (all codecs), write one Parquet data file at a
            path named by the range (row groups of whole batches, zstd, statistics, row group ranges in the footer).
2. commit   append that file to the topic's Iceberg table in one snapshot whose summary records the range and the
            new committed end of the partition (the table's own progress marker).
3. publish  write a Parquet index entry per row group, then advance the compacted watermark with one CAS (the atomic
            swap: from then on readers below it read Parquet), and note when the WAL below became dead.

Each step starts by reading where things stand (index watermark W, log start S, the table's committed end C), so
each is idempotent and a rerun after a crash anywhere finishes the work: nothing is written twice (a range is
committed only when C says it is not), nothing is lost (the swap happens only after the table holds the range and
the index entries point at it). begin = max(W, C, the start of the WAL entry holding S): data below the log start
is not compacted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from dray_broker import faults
from dray_broker.index.offsets import IndexEntry, ParquetLocation
from dray_broker.metadata import VersionMismatchError
from dray_broker.records.batch import HEADER_SIZE, iter_batch_positions
from dray_broker.records.decode import RecordDecodeError, RecordsTooLarge
from dray_broker.topics.catalog import Topic
from dray_broker.wal import format as wal
from dray_pipelines.convert import RowGroupBuilder
from dray_pipelines.lake import Lake, PartitionState, now_ms
from dray_pipelines.tables import LiveFile, TopicTable

log = logging.getLogger(__name__)


class CompactionError(Exception):
    """The log, the index and the table disagree in a way a retry will not fix by itself."""


@dataclass(frozen=True)
class Plan:
    topic: str
    partition: int
    start: int
    end: int
    bytes: int
    records: int
    entries: int

    @property
    def run_key(self) -> str:
        return f"compact:{self.topic}-{self.partition}:{self.start}-{self.end}"


def plan_compaction(state: PartitionState, *, min_bytes: int, min_age_ms: int, max_bytes: int,
                    force: bool = False, at_ms: int | None = None) -> Plan | None:
    """The next range to compact, when the partition's uncompacted WAL passes a threshold (or force)."""
    entries = [e for e in state.uncompacted if e.end > state.log_start]
    if not entries:
        return None
    size = sum(sum(e.location.batch_sizes) for e in entries)
    oldest = state.oldest_uncompacted_ms()
    at_ms = now_ms() if at_ms is None else at_ms
    due = force or size >= min_bytes or (oldest is not None and at_ms - oldest >= min_age_ms)
    if not due:
        return None
    taken: list[IndexEntry] = []
    taken_bytes = 0
    for e in entries:
        b = sum(e.location.batch_sizes)
        if taken and taken_bytes + b > max_bytes:
            break
        taken.append(e)
        taken_bytes += b
    start = max(state.watermark, taken[0].start)
    return Plan(state.topic.name, state.partition, start, taken[-1].end, taken_bytes,
                taken[-1].end - start, len(taken))


@dataclass
class StepResult:
    """What a step did, for the asset materialization's metadata."""

    topic: str
    partition: int
    start: int
    end: int
    action: str  # what happened: "staged", "already staged", "committed", "swapped", "already ..." etc.
    records: int = 0
    wal_bytes: int = 0
    file_bytes: int = 0
    files: list[str] = field(default_factory=list)
    row_groups: int = 0
    snapshot_id: int | None = None
    watermark: int | None = None
    log_end: int | None = None
    seconds: float = 0.0

    @property
    def lag(self) -> int | None:
        if self.log_end is None or self.watermark is None:
            return None
        return self.log_end - self.watermark


async def _begin(lake: Lake, table: TopicTable, state: PartitionState) -> tuple[int, int]:
    """(begin, committed end): where the next range to commit starts."""
    committed = await asyncio.to_thread(table.committed_end, state.partition)
    begin = max(state.watermark, committed)
    if state.log_start > begin:
        holding = next((e for e in state.uncompacted if e.end > state.log_start), None)
        begin = max(begin, holding.start if holding else state.log_start)
    return begin, committed


async def _topic(lake: Lake, name: str) -> Topic:
    topic = await lake.topic(name)
    if topic is None:
        raise CompactionError(f"topic {name!r} does not exist")
    return topic


# --- 1. stage ---------------------------------------------------------------------------------------------------


async def stage(lake: Lake, topic_name: str, partition: int, end: int) -> StepResult:
    started = time.perf_counter()
    topic = await _topic(lake, topic_name)
    state = await lake.state(topic, partition)
    result = StepResult(topic_name, partition, state.watermark, end, "", watermark=state.watermark,
                        log_end=state.log_end)
    if state.watermark >= end:
        result.action = "already swapped"
        return result
    table = lake.table(topic)
    begin, committed = await _begin(lake, table, state)
    result.start = begin
    if committed >= end or begin >= end:
        result.action = "already committed"
        return result
    path = table.data_path(partition, begin, end)
    result.files = [path]
    info = await asyncio.to_thread(table.staged_file, path, begin, end)
    if info is not None:
        result.action = "already staged"
        result.records = info.record_count
        result.file_bytes = info.size
        result.row_groups = len(info.row_groups)
        result.wal_bytes = sum(g.wal_bytes for g in info.row_groups)
        return result
    await write_range(lake, table, state, begin, end, path, result)
    result.action = "staged"
    result.seconds = time.perf_counter() - started
    return result


async def write_range(lake: Lake, table: TopicTable, state: PartitionState, begin: int, end: int, path: str,
                      result: StepResult) -> None:
    entries = [e for e in state.uncompacted if e.end > begin and e.start < end]
    if not entries or entries[0].start > begin or entries[-1].end != end:
        have = f"[{entries[0].start}, {entries[-1].end})" if entries else "none"
        raise CompactionError(f"{state.key}: WAL entries for [{begin}, {end}) are missing (have {have})")
    for a, b in zip(entries, entries[1:]):
        if a.end != b.start:
            raise CompactionError(f"{state.key}: WAL entries have a gap at {a.end}")
    target = lake.settings.row_group_bytes
    max_rows = lake.settings.row_group_records
    # A batch may not inflate beyond max.message.bytes (as the produce path checks): one written past that check
    # fails this partition's run, naming the batch, instead of taking the compactor's memory.
    builder = RowGroupBuilder(state.partition, state.topic.int_config("max.message.bytes") - HEADER_SIZE)
    writer = table.open_writer(path)
    faults.point("stage.before_write")
    records = 0

    writing: asyncio.Future | None = None

    async def flush() -> None:
        # A row group is written (compression, I/O: without the GIL) while the next one is decoded.
        nonlocal records, writing
        data, info = builder.build()
        if writing is not None:
            await writing
            faults.point("stage.mid_write")
        writing = asyncio.ensure_future(asyncio.to_thread(
            writer.write_row_group, data, info["start"], info["end"], info["wal_bytes"], info["min_ts"],
            info["max_ts"]))
        records += info["rows"]

    try:
        # Read ahead: the next chunk downloads while this one is decoded.
        pending = asyncio.ensure_future(_read_chunk(lake, entries[0]))
        for i, entry in enumerate(entries):
            data = await pending
            if i + 1 < len(entries):
                pending = asyncio.ensure_future(_read_chunk(lake, entries[i + 1]))
            offset = entry.start
            for pos, h in iter_batch_positions(data):
                if offset + h.record_count > begin:
                    if offset < begin:
                        raise CompactionError(f"{state.key}: range start {begin} is inside a batch at {offset}")
                    try:
                        builder.add_batches(data[pos : pos + h.size], offset)
                    except RecordDecodeError as e:
                        what = f"{state.key}: batch at offsets [{offset}, {offset + h.record_count}) ({h.size} bytes)"
                        if isinstance(e, RecordsTooLarge):
                            raise CompactionError(f"{what} not compacted: {e}, over the topic's max.message.bytes; "
                                                  "raise it to compact this batch") from None
                        raise CompactionError(f"{what} cannot be read: {e}") from None
                    if builder.record_bytes >= target or len(builder) >= max_rows:
                        await flush()
                offset += h.record_count
            if offset != entry.end:
                raise CompactionError(f"{state.key}: entry {entry.key} holds {offset - entry.start} records, "
                                      f"the index says {entry.end - entry.start}")
            result.wal_bytes += sum(entry.location.batch_sizes)
        if len(builder):
            await flush()
        if writing is not None:
            await writing
        await asyncio.to_thread(writer.close)
    except BaseException:
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)
        await asyncio.to_thread(writer.abort)
        raise
    if records != end - begin:
        raise CompactionError(f"{state.key}: wrote {records} records for [{begin}, {end})")
    result.records = records
    result.row_groups = len(writer.row_groups)
    result.file_bytes = await asyncio.to_thread(lambda: len(table.table().io.new_input(path)))
    faults.point("stage.after_write")


async def _read_chunk(lake: Lake, entry: IndexEntry) -> memoryview:
    loc = entry.location
    raw = await lake.objects.get(loc.object_key, loc.data_offset, loc.data_offset + loc.data_length)
    return wal.verify_chunk_bytes(raw, loc.data_length, loc.data_crc)


# --- 2. commit --------------------------------------------------------------------------------------------------


async def commit(lake: Lake, topic_name: str, partition: int, end: int) -> StepResult:
    started = time.perf_counter()
    topic = await _topic(lake, topic_name)
    state = await lake.state(topic, partition)
    result = StepResult(topic_name, partition, state.watermark, end, "", watermark=state.watermark,
                        log_end=state.log_end)
    if state.watermark >= end:
        result.action = "already swapped"
        return result
    table = lake.table(topic)
    begin, committed = await _begin(lake, table, state)
    result.start = begin
    if committed >= end or begin >= end:
        result.action = "already committed"
        result.snapshot_id = _current_snapshot_id(table)
        return result
    path = table.data_path(partition, begin, end)
    info = await asyncio.to_thread(table.staged_file, path, begin, end)
    if info is None:
        # The staged file is gone or partial (a crash while writing, or cleaned up): write it again.
        await write_range(lake, table, state, begin, end, path, result)
        info = await asyncio.to_thread(table.describe_file, path)
    faults.point("commit.before")
    result.snapshot_id = await asyncio.to_thread(table.commit_range, partition, committed, begin, end, path)
    faults.point("commit.after")
    result.action = "committed"
    result.files = [path]
    result.records = info.record_count
    result.file_bytes = info.size
    result.row_groups = len(info.row_groups)
    result.wal_bytes = sum(g.wal_bytes for g in info.row_groups)
    result.seconds = time.perf_counter() - started
    return result


def _current_snapshot_id(table: TopicTable) -> int | None:
    snapshot = table.table(refresh=True).current_snapshot()
    return snapshot.snapshot_id if snapshot else None


# --- 3. publish (index entries + atomic swap) ------------------------------------------------------------------


async def publish(lake: Lake, topic_name: str, partition: int, end: int) -> StepResult:
    started = time.perf_counter()
    topic = await _topic(lake, topic_name)
    state = await lake.state(topic, partition)
    ref = state.ref
    result = StepResult(topic_name, partition, state.watermark, end, "", watermark=state.watermark,
                        log_end=state.log_end)
    if state.watermark >= end:
        result.action = "already swapped"
        await lake.note_boundaries(ref, dead=max(state.watermark, state.log_start))
        return result
    table = lake.table(topic)
    committed = await asyncio.to_thread(table.committed_end, partition)
    if committed < end:
        raise CompactionError(f"{state.key}: the table holds offsets up to {committed}, not {end}: commit first")
    target = committed  # a later run may have committed more: swap over everything the table holds
    files = await asyncio.to_thread(table.live_files, partition, state.watermark, target)
    files = [f for f in files if f.end > state.watermark]
    _check_tiles(state, files, target)
    faults.point("publish.before_entries")
    written = 0
    for f in files:
        key = lake.settings.object_key(f.path)
        for g in f.row_groups:
            if g.end <= state.watermark:
                continue
            extra = {"rg": g.index, "footer": list(f.footer), "size": f.size, "file": [f.start, f.end],
                     "bytes": g.wal_bytes, "rows": g.end - g.start, "ms": now_ms()}
            if key is not None:
                extra["key"] = key
            await lake.index.put_parquet_entry(ref, g.start, g.end, ParquetLocation(f.path, g.min_timestamp,
                                                                                    g.max_timestamp, extra))
            written += 1
            if written == 1:
                faults.point("publish.mid_entries")
    faults.point("publish.before_swap")
    try:
        await lake.index.swap(ref, target, state.watermark_version)
    except VersionMismatchError:
        watermark, _ = await lake.index.compacted_watermark(ref)
        if watermark < target:
            raise  # someone else moved it, but not far enough: the step retries from the new state
    faults.point("publish.after_swap")
    await lake.note_boundaries(ref, dead=max(target, state.log_start))
    result.action = "swapped"
    result.start = max(state.watermark, files[0].start) if files else state.watermark
    result.end = target
    result.watermark = target
    result.files = [f.path for f in files]
    result.records = sum(g.end - g.start for f in files for g in f.row_groups if g.end > state.watermark)
    result.row_groups = written
    result.file_bytes = sum(f.size for f in files)
    result.snapshot_id = _current_snapshot_id(table)
    result.seconds = time.perf_counter() - started
    return result


def _check_tiles(state: PartitionState, files: list[LiveFile], target: int) -> None:
    """The files must hold [x, target) without gaps or overlaps, x at or below where readers need data."""
    if not files:
        raise CompactionError(f"{state.key}: no data files for [{state.watermark}, {target})")
    need_from = max(state.watermark, state.log_start)
    if files[0].start > need_from:
        raise CompactionError(f"{state.key}: data files start at {files[0].start}, readers need {need_from}")
    for a, b in zip(files, files[1:]):
        if a.end != b.start:
            raise CompactionError(f"{state.key}: data files {a.path} and {b.path} leave a gap or overlap")
    if files[-1].end != target:
        raise CompactionError(f"{state.key}: data files end at {files[-1].end}, the table says {target}")
    for f in files:
        groups = f.row_groups
        if groups[0].start != f.start or any(a.end != b.start for a, b in zip(groups, groups[1:])):
            raise CompactionError(f"{state.key}: row groups of {f.path} are not contiguous")


async def compact_once(lake: Lake, topic_name: str, partition: int, end: int) -> list[StepResult]:
    """The three steps in order (for scripts and benchmarks; Dagster runs them as separate asset steps)."""
    return [await stage(lake, topic_name, partition, end), await commit(lake, topic_name, partition, end),
            await publish(lake, topic_name, partition, end)]
