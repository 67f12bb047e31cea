"""The Dagster code location (`dagster_workspace.yaml` loads `defs` from here).

Assets, per topic-partition (dynamic partitions `topic_partitions`, keys `<topic>-<partition>`):
    wal_segments       WAL data of the partition, written by brokers; reported by the compaction sensor
    parquet_files      Parquet data files staged from the WAL         (step: stage)
    iceberg_snapshots  snapshots of the topic's Iceberg table, and     (steps: commit_snapshot, swap_index)
                       the offset index swapped over to them
    cleaned_log        compacted topics only: the table's and the    (steps: clean_stage, clean_commit,
                       index's ranges below a clean point, latest      clean_publish)
                       record per key (dray_pipelines/cleaning.py)
Jobs: `compaction` (the two assets above, one partition, target end offset in the run tag dray/end_offset),
`cleaning` (cleaned_log, one partition, clean point and time in the run tags dray/clean_end, dray/clean_at_ms),
`wal_gc`, `orphan_gc`, `deleted_topics_gc`, `retention`, `table_maintenance`.
Sensors: `compaction_sensor` (size/age thresholds; adds partitions, removes deleted topics'; reports wal_segments),
`cleaning_sensor` (min.cleanable.dirty.ratio, max.compaction.lag.ms, tombstones due), `wal_gc_sensor`,
`orphan_gc_sensor`, `deleted_topics_sensor`, `retention_sensor`, `table_maintenance_sensor`. Run keys name the work
(the offset range, the set of objects, the new log start), so the daemon runs each unit of work once.

The settings (dray_broker.config.LakeSettings, through the resource DrayLake) are read when the definitions are built
(the sensors' interval, the steps' retries: `defs` builds them when Dagster loads the code location) and at each run
or sensor evaluation (thresholds, stores): never when this module is imported.
"""

import json

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetMaterialization,
    AssetSpec,
    Backoff,
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    DynamicPartitionsDefinition,
    Failure,
    In,
    MaterializeResult,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    RetryPolicy,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    definitions,
    graph,
    graph_asset,
    in_process_executor,
    op,
    sensor,
)

from dray_pipelines import cleaning, compaction, gc
from dray_broker.cluster_identity import ClusterMismatchError
from dray_pipelines.lake import Lake, NoDrayData, now_ms, split_partition_key
from dray_pipelines.resources import DrayLake

GROUP = "dray"
TAG_END = "dray/end_offset"
TAG_START = "dray/start_offset"
TAG_TOPIC = "dray/topic"
TAG_PARTITION = "dray/partition"
TAG_TABLE = "dray/table"
TAG_CLEAN_END = "dray/clean_end"
TAG_CLEAN_AT = "dray/clean_at_ms"

topic_partitions = DynamicPartitionsDefinition(name="topic_partitions")


# --- assets ---------------------------------------------------------------------------------------------------------

wal_segments = AssetSpec(
    "wal_segments",
    partitions_def=topic_partitions,
    group_name=GROUP,
    kinds={"dray"},
    description="Record batches in WAL objects, written by brokers and indexed in the metadata store. "
                "Observed by compaction_sensor: log end, compacted watermark, uncompacted bytes and age.",
)


def _target(context) -> tuple[str, int, int]:
    """(topic, partition, end offset) of this compaction run. A run the sensor or `dray compact` requested carries
    its end in the dray/end_offset tag; a run started from the UI (Materialize) has none: its first step takes the
    partition's log end and tags the run with it, so that every step of the run works on the same range."""
    topic, p = split_partition_key(context.partition_key)
    run = context.instance.get_run_by_id(context.run.run_id) or context.run  # tags added by an earlier step
    end = run.tags.get(TAG_END)
    if end is None:
        dray: DrayLake = context.resources.dray
        end = str(_steady(lambda: dray.run(lambda lake: _log_end(lake, topic, p))))
        context.instance.add_run_tags(context.run.run_id, {TAG_END: end})
        context.log.info(f"{topic}-{p}: no {TAG_END} tag (started from the UI?): compacting up to the log end, {end}")
    return topic, p, int(end)


async def _log_end(lake: Lake, topic_name: str, partition: int) -> int:
    topic = await lake.topic(topic_name)
    if topic is None or partition >= topic.partitions:
        raise compaction.CompactionError(f"topic-partition {topic_name}-{partition} does not exist (deleted?)")
    return await lake.index.log_end_offset(topic.partition(partition))


# Errors a retry cannot fix: the run fails at once, with the reason as the failure's description.
PERMANENT = (compaction.CompactionError, NoDrayData, ClusterMismatchError)


def _steady(work):
    """work(), with an error that cannot succeed on retry turned into a Failure that is not retried."""
    try:
        return work()
    except PERMANENT as e:
        raise Failure(description=f"{type(e).__name__}: {e} (not retried: a retry cannot fix this)",
                      allow_retries=False) from e


def _metadata(r: compaction.StepResult, planned_start: str | None = None) -> dict:
    start = r.start
    if r.action.startswith("already"):
        # Nothing done: say which range was asked for (the watermark may be far past it).
        start = int(planned_start) if planned_start is not None else min(r.start, r.end)
    md = {
        "action": r.action,
        "offset_range": f"[{min(start, r.end)}, {r.end})",
        "start_offset": min(start, r.end),
        "end_offset": r.end,
        "records": r.records,
        "wal_bytes": r.wal_bytes,
        "file_bytes": r.file_bytes,
        "row_groups": r.row_groups,
        "files": MetadataValue.json(r.files),
        "seconds": round(r.seconds, 3),
    }
    if r.snapshot_id is not None:
        md["snapshot_id"] = str(r.snapshot_id)
    if r.watermark is not None:
        md["compacted_watermark"] = r.watermark
    if r.log_end is not None:
        md["log_end_offset"] = r.log_end
    if r.lag is not None:
        md["lag_records"] = r.lag
    return md


def _said(r: compaction.StepResult) -> str:
    """A step's log line: the range it worked on, or why there was nothing to do."""
    if r.action.startswith("already"):
        return f"{r.topic}-{r.partition} up to {r.end}: {r.action} (watermark {r.watermark}), nothing to do"
    return f"{r.topic}-{r.partition} [{r.start}, {r.end}): {r.action}, {r.records} records"


@asset(partitions_def=topic_partitions, deps=[wal_segments], group_name=GROUP, kinds={"parquet"},
       description="Parquet data files of the partition's compacted offset ranges (zstd, "
       "one row group per fetch unit, offset/timestamp statistics), staged before the Iceberg commit.")
def parquet_files(context: AssetExecutionContext, dray: DrayLake) -> MaterializeResult:
    topic, p, end = _target(context)
    r = _steady(lambda: dray.run(lambda lake: compaction.stage(lake, topic, p, end)))
    context.log.info(_said(r))
    return MaterializeResult(metadata=_metadata(r, context.run.tags.get(TAG_START)))


@op(ins={"staged": In(Nothing)}, out=Out(Nothing), tags={"kind": "iceberg"},
    description="Append the staged file to the topic's Iceberg table; the snapshot summary records the range.")
def commit_snapshot(context: OpExecutionContext, dray: DrayLake) -> None:
    topic, p, end = _target(context)
    r = _steady(lambda: dray.run(lambda lake: compaction.commit(lake, topic, p, end)))
    context.log.info(_said(r) + (f", snapshot {r.snapshot_id}" if r.snapshot_id is not None else ""))


@op(ins={"committed": In(Nothing)}, out=Out(Nothing),
    description="Index entries for the committed row groups, then the compacted watermark CAS (the atomic swap).")
def swap_index(context: OpExecutionContext, dray: DrayLake) -> None:
    topic, p, end = _target(context)
    r = _steady(lambda: dray.run(lambda lake: compaction.publish(lake, topic, p, end)))
    context.log.info(_said(r) + f", watermark {r.watermark}, lag {r.lag}")
    context.add_output_metadata(_metadata(r, context.run.tags.get(TAG_START)))


@graph_asset(partitions_def=topic_partitions, group_name=GROUP, kinds={"iceberg"},
             ins={"parquet_files": AssetIn(dagster_type=Nothing)},
             description="Snapshots of the topic's Iceberg table holding the partition's compacted ranges; the "
                         "offset index serves those offsets from them once the watermark is swapped.")
def iceberg_snapshots(parquet_files):
    return swap_index(commit_snapshot(parquet_files))


# --- cleaning compacted topics -------------------------------------------------------------------------------------


def _clean_target(context) -> tuple[str, int, int, int]:
    topic, p = split_partition_key(context.partition_key)
    tags = context.run.tags
    if TAG_CLEAN_END not in tags or TAG_CLEAN_AT not in tags:
        raise ValueError(f"run has no {TAG_CLEAN_END}/{TAG_CLEAN_AT} tags: start cleaning runs from cleaning_sensor "
                         "or `dray compact`")
    return topic, p, int(tags[TAG_CLEAN_END]), int(tags[TAG_CLEAN_AT])


def _clean_metadata(r: cleaning.CleanResult) -> dict:
    md = {"action": r.action, "clean_end": r.end, "files_replaced": r.files_replaced,
          "records_before": r.records_before, "records_after": r.records_after,
          "tombstones_removed": r.tombstones_removed, "index_entries": r.entries, "files": MetadataValue.json(r.files),
          "seconds": round(r.seconds, 3)}
    if r.snapshot_id is not None:
        md["snapshot_id"] = str(r.snapshot_id)
    return md


@op(ins={"snapshots": In(Nothing)}, out=Out(Nothing), tags={"kind": "parquet"},
    description="Find the latest record per key below the clean point; write a cleaned file for each data file "
                "that loses records, and the pass's manifest.")
def clean_stage(context: OpExecutionContext, dray: DrayLake) -> None:
    topic, p, end, at = _clean_target(context)
    r = dray.run(lambda lake: cleaning.stage(lake, topic, p, end, at))
    context.log.info(f"{topic}-{p} below {end}: {r.action}, {r.records_before} -> {r.records_after} records")
    context.add_output_metadata(_clean_metadata(r))


@op(ins={"staged": In(Nothing)}, out=Out(Nothing), tags={"kind": "iceberg"},
    description="One snapshot replacing the data files with their cleaned versions.")
def clean_commit(context: OpExecutionContext, dray: DrayLake) -> None:
    topic, p, end, at = _clean_target(context)
    r = dray.run(lambda lake: cleaning.commit(lake, topic, p, end, at))
    context.log.info(f"{topic}-{p} below {end}: {r.action}, snapshot {r.snapshot_id}")


@op(ins={"committed": In(Nothing)}, out=Out(Nothing),
    description="Point the Parquet index entries at the cleaned files; record the pass.")
def clean_publish(context: OpExecutionContext, dray: DrayLake) -> None:
    topic, p, end, at = _clean_target(context)
    r = dray.run(lambda lake: cleaning.publish(lake, topic, p, end, at))
    context.log.info(f"{topic}-{p} below {end}: {r.action}, {r.entries} index entries")
    context.add_output_metadata(_clean_metadata(r))


@graph_asset(partitions_def=topic_partitions, group_name=GROUP, kinds={"iceberg"},
             ins={"iceberg_snapshots": AssetIn(dagster_type=Nothing)},
             description="Compacted topics (cleanup.policy compact): the partition's log below the clean point with "
                         "only the latest record per key, in the table and in the offset index.")
def cleaned_log(iceberg_snapshots):
    return clean_publish(clean_commit(clean_stage(iceberg_snapshots)))


# --- GC, retention and maintenance jobs -----------------------------------------------------------------------------


@op
def collect_wal(context: OpExecutionContext, dray: DrayLake) -> None:
    grace = dray.settings().wal_gc_grace_ms
    stats = dray.run(lambda lake: gc.run_wal_gc(lake, grace))
    context.log.info(f"WAL GC: {stats}")
    context.add_output_metadata(stats)


@graph(description="Delete WAL index entries and objects compacted (or past the log start) a grace period ago.")
def wal_gc():
    collect_wal()


@op
def collect_orphans(context: OpExecutionContext, dray: DrayLake) -> None:
    ttl = dray.settings().orphan_ttl_ms
    stats = dray.run(lambda lake: gc.run_orphan_gc(lake, ttl))
    context.log.info(f"orphan GC: {stats}")
    context.add_output_metadata(stats)


@graph(description="Delete WAL objects that no index entry points to, older than the orphan TTL.")
def orphan_gc():
    collect_orphans()


@op
def purge_deleted_topics(context: OpExecutionContext, dray: DrayLake) -> None:
    grace = dray.settings().wal_gc_grace_ms
    stats = dray.run(lambda lake: gc.purge_deleted_topics(lake, grace))
    context.log.info(f"deleted topics: {stats}")
    context.add_output_metadata(stats)


@graph(description="Remove deleted topics' index entries and purge their Iceberg tables, a grace period after "
                   "deletion.")
def deleted_topics_gc():
    purge_deleted_topics()


class RetentionConfig(Config):
    plans: list[list] = []  # [[topic, partition, new_log_start], ...]


@op
def enforce_retention(context: OpExecutionContext, config: RetentionConfig, dray: DrayLake) -> None:
    async def work(lake: Lake) -> list:
        return [dict(await gc.apply_retention(lake, t, int(p), int(s)), topic=t, partition=p)
                for t, p, s in config.plans]

    results = dray.run(work)
    context.log.info(f"retention: {results}")
    context.add_output_metadata({"partitions": MetadataValue.json(results)})


@graph(description="Move log start offsets per retention.ms / retention.bytes; drop whole data files below them.")
def retention():
    enforce_retention()


@op
def maintain(context: OpExecutionContext, dray: DrayLake) -> None:
    s = dray.settings()
    stats = dray.run(lambda lake: gc.maintain_tables(lake, s.snapshot_retention_ms, s.orphan_ttl_ms))
    context.log.info(f"table maintenance: {stats}")
    context.add_output_metadata(stats)


@graph(description="Expire old Iceberg snapshots and delete data files no snapshot references.")
def table_maintenance():
    maintain()


# --- sensors --------------------------------------------------------------------------------------------------------

_ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
           DagsterRunStatus.STARTED]


def _active_partitions(context: SensorEvaluationContext, job_name: str = "compaction") -> set[str]:
    """Partitions with a run of the job queued or in progress: the sensor waits for them."""
    if context.instance is None:
        return set()
    runs = context.instance.get_runs(RunsFilter(job_name=job_name, statuses=_ACTIVE), limit=1000)
    return {r.tags.get(TAG_PARTITION) or r.tags.get("dagster/partition") for r in runs}


def compaction_requests(context: SensorEvaluationContext, dray: DrayLake, *, force: bool = False) -> SensorResult:
    """What compaction_sensor returns: new partitions, observations of wal_segments, and one run request per
    partition whose uncompacted WAL passed a threshold (force: any uncompacted data)."""
    s = dray.settings()
    at = now_ms()

    async def states(lake: Lake):
        return [await lake.state(t, p) for t, p in await lake.partitions()]

    all_states = dray.run(states)
    known = set(context.instance.get_dynamic_partitions(topic_partitions.name)) if context.instance else set()
    keys = [st.key for st in all_states if "..." not in st.key]
    new_keys = [k for k in keys if k not in known]
    gone_keys = sorted(known - set(keys))  # partitions of deleted topics leave the partition set
    active = _active_partitions(context)
    cursor = json.loads(context.cursor) if context.cursor else {}
    observations = []
    requests = []
    for st in all_states:
        if st.key not in keys:
            continue
        oldest = st.oldest_uncompacted_ms()
        seen = [st.log_end, st.watermark, st.log_start]
        if cursor.get(st.key) != seen or st.key in new_keys:
            cursor[st.key] = seen
            # A materialization (not an observation): the brokers wrote this partition's WAL data, and the UI
            # shows the partition filled, with its state as the latest metadata.
            observations.append(AssetMaterialization(
                asset_key=wal_segments.key, partition=st.key,
                description=f"log end {st.log_end}, {st.uncompacted_records} records not compacted yet",
                metadata={
                    "log_end_offset": st.log_end, "log_start_offset": st.log_start,
                    "compacted_watermark": st.watermark, "lag_records": st.uncompacted_records,
                    "uncompacted_bytes": st.uncompacted_bytes, "uncompacted_entries": len(st.uncompacted),
                    "oldest_uncompacted_age_s": round((at - oldest) / 1000, 1) if oldest else 0.0,
                }))
        if st.key in active:
            continue
        plan = compaction.plan_compaction(st, min_bytes=s.compact_bytes, min_age_ms=s.compact_age_ms,
                                          max_bytes=s.compact_max_bytes, force=force, at_ms=at)
        if plan is None:
            continue
        requests.append(RunRequest(
            run_key=plan.run_key, partition_key=st.key, job_name="compaction",
            tags={TAG_END: str(plan.end), TAG_TOPIC: st.topic.name, TAG_PARTITION: st.key, TAG_TABLE: st.topic.name,
                  TAG_START: str(plan.start), "dray/wal_bytes": str(plan.bytes)},
        ))
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[
            *([topic_partitions.build_add_request(new_keys)] if new_keys else []),
            *([topic_partitions.build_delete_request(gone_keys)] if gone_keys else []),
        ],
        asset_events=observations,
        cursor=json.dumps(cursor, sort_keys=True),
        skip_reason=None if requests else "no partition passed a compaction threshold",
    )


def compaction_sensor(context: SensorEvaluationContext, dray: DrayLake) -> SensorResult:
    """Requests a compaction run when a partition's uncompacted WAL passes compact_bytes or compact_age_ms; adds
    topic-partitions and removes deleted topics' partitions; reports wal_segments' state."""
    return compaction_requests(context, dray)


def cleaning_requests(context: SensorEvaluationContext, dray: DrayLake, *, force: bool = False):
    """What cleaning_sensor returns: a run per compacted topic partition whose cleaning is due (force: anything
    dirty, or a tombstone left)."""
    active = _active_partitions(context, "cleaning")
    plans = dray.run(lambda lake: cleaning.plan_all_cleaning(lake, force=force))
    requests = []
    for plan in plans:
        key = f"{plan.topic}-{plan.partition}"
        if key in active:
            continue
        requests.append(RunRequest(
            run_key=plan.run_key, partition_key=key, job_name="cleaning",
            tags={TAG_CLEAN_END: str(plan.end), TAG_CLEAN_AT: str(plan.at_ms), TAG_TOPIC: plan.topic,
                  TAG_PARTITION: key, TAG_TABLE: plan.topic, "dray/clean_reason": plan.reason,
                  "dray/dirty_ratio": str(plan.dirty_ratio)}))
    if not requests:
        return SkipReason("no compacted partition is due for cleaning")
    return requests


def cleaning_sensor(context: SensorEvaluationContext, dray: DrayLake):
    """Requests a cleaning pass for a compacted topic's partition when its dirty ratio reaches
    min.cleanable.dirty.ratio, a record waited max.compaction.lag.ms, or a tombstone's delete horizon passed."""
    return cleaning_requests(context, dray)


def wal_gc_sensor(context: SensorEvaluationContext, dray: DrayLake):
    """Requests WAL GC when compacted WAL entries or objects passed the grace period."""
    grace = dray.settings().wal_gc_grace_ms
    plan = dray.run(lambda lake: gc.plan_wal_gc(lake, grace))
    if plan.empty:
        return SkipReason("nothing to collect")
    return RunRequest(run_key=plan.run_key, tags={"dray/objects": str(len(plan.objects)),
                                                  "dray/entries": str(len(plan.entries))})


def orphan_gc_sensor(context: SensorEvaluationContext, dray: DrayLake):
    """Requests orphan GC when unindexed WAL objects are older than the orphan TTL."""
    ttl = dray.settings().orphan_ttl_ms
    plan = dray.run(lambda lake: gc.plan_orphans(lake, ttl))
    if plan.empty:
        return SkipReason("no orphan WAL objects")
    return RunRequest(run_key=plan.run_key, tags={"dray/objects": str(len(plan.objects))})


def deleted_topics_sensor(context: SensorEvaluationContext, dray: DrayLake):
    """Requests a purge of deleted topics' data once the grace period after their deletion passed."""
    grace = dray.settings().wal_gc_grace_ms
    topics = dray.run(lambda lake: gc.plan_deleted_topics(lake, grace))
    if not topics:
        return SkipReason("no deleted topic to purge")
    return RunRequest(run_key="deleted-topics:" + ",".join(sorted(str(t.id) for t in topics)),
                      tags={"dray/topics": ",".join(sorted(t.name for t in topics))[:200]})


def retention_sensor(context: SensorEvaluationContext, dray: DrayLake):
    """Requests a retention run when retention.ms / retention.bytes let a log start move."""
    plans = dray.run(gc.plan_all_retention)
    if not plans:
        return SkipReason("no log start to move")
    return RunRequest(
        run_key="retention:" + ",".join(p.run_key.split(":", 1)[1] for p in plans),
        run_config={"ops": {"enforce_retention": {"config": {
            "plans": [[p.topic, p.partition, p.new_log_start] for p in plans]}}}},
    )


def table_maintenance_sensor(context: SensorEvaluationContext):
    """Hourly: expire old Iceberg snapshots and delete unreferenced data files."""
    return RunRequest(run_key=f"maintenance:{now_ms() // 3_600_000}")


ASSETS = [wal_segments, parquet_files, iceberg_snapshots, cleaned_log]
# job name -> (graph, the run tag that keeps two runs of it apart); the compaction job is its assets'.
GRAPH_JOBS = {
    "wal_gc": (wal_gc, {"dray/gc": "wal"}),
    "orphan_gc": (orphan_gc, {"dray/gc": "orphans"}),
    "deleted_topics_gc": (deleted_topics_gc, {"dray/gc": "topics"}),
    "retention": (retention, {"dray/gc": "retention"}),
    "table_maintenance": (table_maintenance, {"dray/gc": "tables"}),
}


def make_definitions(dray: DrayLake | None = None) -> Definitions:
    """The code location's definitions with a given resource (default: every setting from DRAY_* variables, the
    config file or the defaults). Its settings give the sensors' interval and the steps' retry policy: each step
    retries (transient store or catalog errors, a commit that lost a race) before its run fails."""
    dray = dray or DrayLake()
    s = dray.settings()
    retry = RetryPolicy(max_retries=s.step_retries, delay=s.step_retry_delay_s, backoff=Backoff.EXPONENTIAL)
    compaction_job = define_asset_job(
        "compaction", selection=[parquet_files, iceberg_snapshots],  # partitioned as its assets
        executor_def=in_process_executor, op_retry_policy=retry,
        description="Compact one topic-partition up to the offset in the run tag dray/end_offset.",
    )
    cleaning_job = define_asset_job(
        "cleaning", selection=[cleaned_log], executor_def=in_process_executor, op_retry_policy=retry,
        description="Clean one partition of a compacted topic below the clean point in the run tag dray/clean_end.",
    )
    jobs = {name: job_graph.to_job(name, executor_def=in_process_executor, tags=tags, op_retry_policy=retry)
            for name, (job_graph, tags) in GRAPH_JOBS.items()}

    def every(interval_s: int, job, evaluate):
        return sensor(job=job, minimum_interval_seconds=interval_s, default_status=DefaultSensorStatus.RUNNING,
                      description=evaluate.__doc__)(evaluate)

    sensors = [
        every(s.sensor_interval_s, compaction_job, compaction_sensor),
        every(s.sensor_interval_s, cleaning_job, cleaning_sensor),
        every(s.sensor_interval_s, jobs["wal_gc"], wal_gc_sensor),
        every(max(s.sensor_interval_s, 60), jobs["orphan_gc"], orphan_gc_sensor),
        every(s.sensor_interval_s, jobs["deleted_topics_gc"], deleted_topics_sensor),
        every(s.sensor_interval_s, jobs["retention"], retention_sensor),
        every(3600, jobs["table_maintenance"], table_maintenance_sensor),
    ]
    return Definitions(assets=ASSETS, jobs=[compaction_job, cleaning_job, *jobs.values()], sensors=sensors,
                       resources={"dray": dray})


@definitions
def defs() -> Definitions:
    """What `dagster_workspace.yaml` loads: built when Dagster loads the code location, not at import."""
    return make_definitions()
