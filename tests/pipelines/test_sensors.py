"""Sensors: thresholds, run keys, dynamic partitions, wal_segments reports, GC grace and TTL, retention."""

from __future__ import annotations

import asyncio
import time
import uuid

from dagster import AssetKey, DagsterRunStatus
from ulid import ULID

from dray_broker import keyspace
from dray_broker.keyspace import IndexFamily
from dray_broker.topics.catalog import TopicCatalog
from dray_pipelines import gc
from dray_pipelines.lake import open_lake
from dray_pipelines.runner import Runner
from tests.pipelines.helpers import assert_agree, log_state, read_log, write_log

DAY_MS = 86_400_000


def _runner(runner: Runner, **changes) -> Runner:
    settings = runner.dray.settings().model_copy(update=changes)
    return Runner(settings, instance=runner.instance)


def _log(settings, topic, partitions=2, batches=6, **kw):
    asyncio.run(write_log(settings, topic, partitions, batches=batches, records_per_batch=20, **kw))


def test_size_threshold(runner, settings):
    _log(settings, "sized", partitions=2, batches=4)
    sizes = [asyncio.run(_uncompacted_bytes(settings, "sized", p)) for p in (0, 1)]
    assert not _runner(runner, compact_bytes=max(sizes) + 1).evaluate("compaction_sensor")
    requests = _runner(runner, compact_bytes=min(sizes)).evaluate("compaction_sensor")
    assert sorted(r.partition_key for r in requests) == ["sized-0", "sized-1"]
    requests = _runner(runner, compact_bytes=max(sizes)).evaluate("compaction_sensor")
    assert [r.partition_key for r in requests] == [f"sized-{sizes.index(max(sizes))}"]
    r = requests[0]
    assert r.job_name == "compaction" and r.tags["dray/end_offset"] == "80"
    assert r.run_key == f"compact:{r.partition_key}:0-80"


async def _uncompacted_bytes(settings, topic, p):
    async with open_lake(settings) as lake:
        return (await lake.state(await lake.topic(topic), p)).uncompacted_bytes


def test_age_threshold(runner, settings, clock):
    aged = _runner(runner, compact_age_ms=4000)
    _log(settings, "aged", partitions=1)
    assert not aged.evaluate("compaction_sensor")
    clock.advance(3000)
    assert not aged.evaluate("compaction_sensor")
    clock.advance(1100)
    assert [r.partition_key for r in aged.evaluate("compaction_sensor")] == ["aged-0"]


def test_max_bytes_per_run_splits_ranges(runner, settings):
    _log(settings, "split", partitions=1, batches=20, flushes_per_partition=20)
    small = _runner(runner, compact_bytes=0, compact_max_bytes=10_000)
    request = small.evaluate("compaction_sensor")[0]
    end = int(request.tags["dray/end_offset"])
    assert 0 < end < 400
    assert small.execute("compaction", request).success
    again = small.evaluate("compaction_sensor")[0]
    assert again.run_key.startswith(f"compact:split-0:{end}-")


def test_run_keys_dedupe(runner, settings):
    _log(settings, "dedupe", partitions=1)
    first = runner.evaluate("compaction_sensor", force=True)
    second = runner.evaluate("compaction_sensor", force=True)
    assert [r.run_key for r in first] == [r.run_key for r in second] and len(first) == 1
    # While a run for the partition is in progress, the sensor asks for nothing more for it.
    job = runner.defs.resolve_job_def("compaction")
    running = runner.instance.create_run_for_job(job, status=DagsterRunStatus.STARTED,
                                                 tags={"dray/partition": "dedupe-0", "dagster/partition": "dedupe-0"})
    assert runner.evaluate("compaction_sensor", force=True) == []
    runner.instance.report_run_failed(runner.instance.get_run_by_id(running.run_id))
    # Once the range is compacted, the same state asks for nothing; the runner skips keys that already ran.
    assert runner.execute("compaction", first[0]).success
    assert runner.evaluate("compaction_sensor", force=True) == []
    assert runner.already_ran(first[0].run_key)
    assert runner.run_sensor("compaction_sensor", force=True).runs == []


def test_partitions_and_wal_segments_reports(runner, settings):
    topic = f"observed-{uuid.uuid4().hex[:6]}"
    _log(settings, topic, partitions=3, batches=2)
    runner.evaluate("compaction_sensor")
    keys = set(runner.instance.get_dynamic_partitions("topic_partitions"))
    assert {f"{topic}-{p}" for p in range(3)} <= keys
    reports = _wal_segments(runner, f"{topic}-1")
    assert reports and reports[-1]["log_end_offset"] == 40
    assert reports[-1]["compacted_watermark"] == 0 and reports[-1]["lag_records"] == 40
    # The UI shows the partition materialized (filled), not Missing.
    assert f"{topic}-1" in runner.instance.get_materialized_partitions(AssetKey("wal_segments"))
    runner.evaluate("compaction_sensor")  # unchanged: no new report
    assert len(_wal_segments(runner, f"{topic}-1")) == len(reports)
    runner.run_sensor("compaction_sensor", force=True)
    runner.evaluate("compaction_sensor")
    assert _wal_segments(runner, f"{topic}-1")[-1]["compacted_watermark"] == 40

    # A deleted topic's partitions leave the partition set.
    async def delete() -> None:
        async with open_lake(settings) as lake:
            await TopicCatalog(lake.store).delete(topic)

    asyncio.run(delete())
    runner.evaluate("compaction_sensor")
    assert not {f"{topic}-{p}" for p in range(3)} & set(runner.instance.get_dynamic_partitions("topic_partitions"))


def _wal_segments(runner, partition):
    from dagster import AssetRecordsFilter

    records = runner.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("wal_segments"), asset_partitions=[partition]), limit=100).records
    out = []
    for record in sorted(records, key=lambda r: r.storage_id):
        md = record.asset_materialization.metadata
        out.append({k: v.value for k, v in md.items()})
    return out


def test_materializations_carry_metadata(runner, settings):
    from dagster import AssetRecordsFilter

    _log(settings, "metadata", partitions=1)
    runner.run_sensor("compaction_sensor", force=True)

    def latest(asset):
        recs = runner.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=["metadata-0"]), limit=1).records
        return {k: v.value for k, v in recs[0].asset_materialization.metadata.items()}

    pq = latest("parquet_files")
    assert pq["offset_range"] == "[0, 120)" and pq["records"] == 120 and pq["file_bytes"] > 0
    assert pq["wal_bytes"] > 0 and pq["row_groups"] >= 1 and len(pq["files"]) == 1
    snap = latest("iceberg_snapshots")
    assert snap["compacted_watermark"] == 120 and snap["lag_records"] == 0 and int(snap["snapshot_id"]) != 0


def test_wal_gc_waits_for_the_grace_period(runner, settings, clock):
    topic = "graceful"
    _log(settings, topic, partitions=2, batches=6, flushes_per_partition=6)
    objects_dir = settings.data_dir / "objects" / "wal"
    n_objects = len(list(objects_dir.iterdir()))
    slow = _runner(runner, wal_gc_grace_ms=1500)
    # Compact partition 0 only: objects shared with partition 1 stay.
    request = [r for r in slow.evaluate("compaction_sensor", force=True) if r.partition_key == f"{topic}-0"][0]
    assert slow.execute("compaction", request).success
    clock.advance(1600)
    assert not slow.run_sensor("wal_gc_sensor", repeat=True).failed
    assert len(list(objects_dir.iterdir())) == n_objects
    state = asyncio.run(_wal_entries(settings, topic, 0))
    assert len(state) == 1  # the newest entry stays: it anchors the offset sequence
    # Partition 1 too: the objects go, but only once the grace period has passed since its swap.
    slow.run_sensor("compaction_sensor", force=True)
    swapped_ms = asyncio.run(_dead_since(settings, topic, 1))
    assert asyncio.run(_plan(settings, 1500, at_ms=swapped_ms + 1499)).objects == []
    assert len(asyncio.run(_plan(settings, 1500, at_ms=swapped_ms + 1500)).objects) == n_objects
    clock.advance(swapped_ms + 1500 - clock.now_ms())
    plan = asyncio.run(_plan(settings, 1500))
    assert len(plan.objects) == n_objects
    assert not slow.run_sensor("wal_gc_sensor", repeat=True).failed
    assert list(objects_dir.iterdir()) == []
    assert asyncio.run(_plan(settings, 1500)).empty
    expected = {p: asyncio.run(read_log(settings, topic, p)) for p in (0, 1)}
    assert_agree(settings, topic, expected, fully_compacted=True)
    # More data after GC: offsets continue from the log end.
    _log(settings, topic, partitions=2, batches=1, seed=9)
    assert asyncio.run(log_state(settings, topic, 0)).log_end == 140


async def _wal_entries(settings, topic, p):
    async with open_lake(settings) as lake:
        t = await lake.topic(topic)
        return await lake.index.entries(t.partition(p), IndexFamily.WAL)


async def _plan(settings, grace, at_ms=None):
    async with open_lake(settings) as lake:
        return await gc.plan_wal_gc(lake, grace, at_ms)


async def _dead_since(settings, topic, p):
    async with open_lake(settings) as lake:
        t = await lake.topic(topic)
        history, _ = await lake.boundaries(t.partition(p))
        return history["dead"][-1][1]


def test_orphans_are_collected_after_the_ttl(runner, settings):
    _log(settings, "orphans", partitions=1, batches=2)

    async def put(key: str) -> None:
        async with open_lake(settings) as lake:
            await lake.objects.put(key, b"DRAYWAL1 never indexed")

    old = f"wal/{ULID.from_timestamp(time.time() - 7200)}"
    young = f"wal/{ULID()}"
    asyncio.run(put(old))
    asyncio.run(put(young))
    plan = asyncio.run(_orphans(settings, 3_600_000))
    # The old one was just written (mtime now): the TTL counts from the later of name time and write time.
    assert plan.objects == []
    plan = asyncio.run(_orphans(settings, 0))
    assert sorted(plan.objects) == sorted([old, young])  # indexed objects are never orphans
    fast = _runner(runner, orphan_ttl_ms=0)
    assert [r.job for r in fast.run_sensor("orphan_gc_sensor").runs] == ["orphan_gc"]
    names = sorted(p.name for p in (settings.data_dir / "objects" / "wal").iterdir())
    assert old.split("/")[1] not in names and young.split("/")[1] not in names and names
    expected = {0: asyncio.run(read_log(settings, "orphans", 0))}
    assert len(expected[0]) == 40


async def _orphans(settings, ttl):
    async with open_lake(settings) as lake:
        return await gc.plan_orphans(lake, ttl)


def test_retention_ms(runner, settings):
    now = int(time.time() * 1000)
    topic = "timed"
    _log(settings, topic, partitions=1, batches=4, base_ts=now - 10 * DAY_MS, configs={"retention.ms": str(DAY_MS)},
         flushes_per_partition=4)
    runner.run_sensor("compaction_sensor", force=True)  # the old part is in Parquet
    _log(settings, topic, partitions=1, batches=3, base_ts=now, seed=4, flushes_per_partition=3)
    before = asyncio.run(log_state(settings, topic, 0))
    assert before.watermark == 80 and before.log_end == 140
    result = runner.run_sensor("retention_sensor")
    assert [r.job for r in result.runs] == ["retention"] and not result.failed
    after = asyncio.run(log_state(settings, topic, 0))
    assert after.log_start == 80  # every old record is gone, every new one kept
    assert runner.run_sensor("retention_sensor").runs == []
    # the table dropped the old file; reading from the log start gives the new records
    from tests.pipelines.helpers import table_rows

    assert table_rows(settings, topic) == []
    assert [r[0] for r in asyncio.run(read_log(settings, topic, 0, start=80))] == list(range(80, 140))
    # the Parquet index entries below the log start go with WAL GC
    assert not runner.run_sensor("wal_gc_sensor", repeat=True).failed
    assert asyncio.run(log_state(settings, topic, 0)).pq_ranges == []


def test_retention_bytes_drops_whole_units(settings):
    topic = "sized-retention"
    _log(settings, topic, partitions=1, batches=10, configs={"retention.bytes": "1"}, flushes_per_partition=10)

    async def plan():
        async with open_lake(settings) as lake:
            t = await lake.topic(topic)
            return await gc.plan_retention(lake, t, 0)

    p = asyncio.run(plan())
    # Kafka's rule: drop units while what is left stays >= retention.bytes: all but the last entry.
    assert p is not None and p.new_log_start == 180


def test_table_maintenance_deletes_only_unreferenced_dead_files(runner, settings):
    topic = "maintained"
    _log(settings, topic, partitions=1, batches=8, flushes_per_partition=8)
    small = _runner(runner, compact_max_bytes=8_000)
    assert len(small.run_sensor("compaction_sensor", force=True, repeat=True).runs) >= 3
    expected = asyncio.run(read_log(settings, topic, 0))

    async def files():
        async with open_lake(settings) as lake:
            t = await lake.topic(topic)
            table = lake.table(t)
            prefix = settings.object_key(table.location) + "/data/partition=0/"
            return table, prefix, sorted(o.key for o in await lake.objects.list(prefix))

    table, prefix, live = asyncio.run(files())
    first = table.live_files(0)[0]
    dead_staged = prefix + "00000-%020d-%020d.parquet" % (0, 5)  # a run that never committed, since passed
    pending = prefix + "00000-%020d-%020d.parquet" % (160, 200)  # a range a run may still commit

    async def put(key):
        async with open_lake(settings) as lake:
            await lake.objects.put(key, b"PAR1 staged")

    asyncio.run(put(dead_staged))
    asyncio.run(put(pending))

    async def retention_and_maintenance():
        async with open_lake(settings) as lake:
            await gc.apply_retention(lake, topic, 0, first.end)
            return await gc.maintain_tables(lake, snapshot_retention_ms=0, ttl_ms=0)

    stats = asyncio.run(retention_and_maintenance())
    assert stats["snapshots_expired"] >= 3 and stats["data_files_deleted"] == 2
    _, _, left = asyncio.run(files())
    assert settings.object_key(first.path) not in left and dead_staged not in left and pending in left
    assert sorted(set(live) - {settings.object_key(first.path)}) == sorted(set(left) - {pending})
    assert asyncio.run(read_log(settings, topic, 0, start=first.end)) == [r for r in expected if r[0] >= first.end]


def test_deleted_topic_is_purged_after_the_grace_period(runner, settings):
    _log(settings, "doomed", partitions=2, batches=4)
    _log(settings, "kept", partitions=1, batches=4, seed=3)
    assert not runner.run_sensor("compaction_sensor", force=True, repeat=True).failed
    _log(settings, "doomed", partitions=2, batches=2, seed=5)  # some of it only in the WAL
    kept = asyncio.run(read_log(settings, "kept", 0))

    async def delete_doomed():
        async with open_lake(settings) as lake:
            # An idempotent producer's state on a partition of the doomed topic goes with it.
            topic = await TopicCatalog(lake.store).refresh("doomed")
            state = keyspace.producer_state_key(topic.id, 1, 7)
            await lake.store.put(state, b'{"epoch": 0}', partition_key=topic.partition(1).partition_key)
            topic = await TopicCatalog(lake.store).delete("doomed")
            return topic, settings.object_key(lake.table(topic).location)

    doomed, table_prefix = asyncio.run(delete_doomed())

    async def leftovers() -> dict:
        async with open_lake(settings) as lake:
            keys = []
            for p in range(doomed.partitions):
                for d in (keyspace.index_dir(doomed.id, p), keyspace.lake_dir(doomed.id, p),
                          keyspace.producer_states(doomed.id, p)):
                    keys += await lake.store.list(d.prefix, d.end, partition_key=d.partition_key)
            return {"keys": keys,
                    "table": "doomed" in {n for _, n in lake.catalog.list_tables(settings.namespace)},
                    "files": [o.key for o in await lake.objects.list(table_prefix + "/")],
                    "tombstones": [t.name for t, _ in await TopicCatalog(lake.store).deleted()]}

    before = asyncio.run(leftovers())
    assert before["keys"] and before["table"] and before["files"] and before["tombstones"] == ["doomed"]
    assert keyspace.producer_state_key(doomed.id, 1, 7) in before["keys"]
    assert _runner(runner, wal_gc_grace_ms=3_600_000).run_sensor("deleted_topics_sensor").runs == []
    result = runner.run_sensor("deleted_topics_sensor")
    assert [r.job for r in result.runs] == ["deleted_topics_gc"] and not result.failed
    assert asyncio.run(leftovers()) == {"keys": [], "table": False, "files": [], "tombstones": []}
    assert runner.run_sensor("deleted_topics_sensor").runs == []
    # Its WAL objects have no index entry now: orphan GC takes those only the deleted topic used.
    assert not _runner(runner, orphan_ttl_ms=0).run_sensor("orphan_gc_sensor").failed
    assert asyncio.run(_orphans(settings, 0)).objects == []
    assert asyncio.run(read_log(settings, "kept", 0)) == kept
    assert_agree(settings, "kept", {0: kept}, fully_compacted=True)
