"""Cleaning compacted topics (dray_pipelines/cleaning.py) through the Dagster job: keys updated many times and
tombstoned; read from offset 0 after cleaning through the broker's reader (latest value per key at its original
offset, the WAL tail untouched, tombstones gone after delete.retention.ms); the table holds what a reader from the
log start gets; a crash at every step, then a rerun. Both backends."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from dray_broker import faults
from dray_broker.cluster_identity import ensure_cluster_identity
from dray_broker.metadata import open_metadata_store
from dray_broker.objectstore import open_object_store
from dray_broker.topics.catalog import TopicCatalog
from dray_pipelines.lake import open_lake
from dray_pipelines.runner import Runner
from tests.pipelines.helpers import append_batches, make_batch, read_log, table_rows

KEYS = 12
ROUNDS = 8
RETENTION_MS = 3_600_000
STEPS = ["clean.stage.before_write", "clean.stage.mid_write", "clean.stage.after_write", "clean.commit.before",
         "clean.commit.after", "clean.publish.mid_entries", "clean.publish.before_note"]


@pytest.fixture
def settings(backend_settings):
    return backend_settings


@pytest.fixture
def topic() -> str:
    return f"cleaned-{uuid.uuid4().hex[:6]}"  # run keys name the topic; the Dagster instance is the session's


@pytest.fixture(autouse=True)
def _disarm():
    faults.disarm()
    yield
    faults.disarm()


async def _create(settings, topic: str, configs: dict) -> None:
    store = await open_metadata_store(settings.metadata_url)
    objects = open_object_store(settings.object_store_url)
    try:
        await ensure_cluster_identity(store, objects)  # as the broker that would have created it
        await TopicCatalog(store).create(topic, 1, configs)
    finally:
        await objects.close()
        await store.close()


def _value(r: int, k: int) -> bytes | None:
    """Round r's value of key k. Keys 0, 4 and 8 are deleted (a tombstone) in round 5 and left out of round 6;
    round 7 writes key 0 only: keys 4 and 8 stay deleted."""
    if r == 5 and k % 4 == 0:
        return None
    return b"v%d-%d" % (r, k)


def _keyed_log(settings, topic: str, configs: dict | None = None, rounds: int = ROUNDS) -> None:
    asyncio.run(_create(settings, topic, {"cleanup.policy": "compact", "delete.retention.ms": str(RETENTION_MS),
                                          **(configs or {})}))
    now = int(time.time() * 1000)
    for r in range(rounds):
        keys = [0] if r == 7 else [k for k in range(KEYS) if k % 4] if r == 6 else range(KEYS)
        batch = make_batch([(b"k%d" % k, _value(r, k), [], 0) for k in keys], now - 60_000 + r, 0)
        asyncio.run(append_batches(settings, topic, 0, [batch]))


def _compact(runner: Runner) -> None:
    small = Runner(runner.dray.settings().model_copy(update={"compact_max_bytes": 600, "row_group_bytes": 300}),
                   instance=runner.instance)
    assert not small.run_sensor("compaction_sensor", force=True, repeat=True).failed


def _view(rows) -> list[tuple[int, bytes | None, bytes | None]]:
    return [(r[0], r[2], r[3]) for r in rows]


def _cleaned(log: list[tuple], end: int, *, tombstones: bool) -> list[tuple]:
    """What a pass cleaning below end keeps of log [(offset, key, value)]: below end the latest record per key
    (tombstones only if tombstones), everything from end on."""
    latest = {}
    for offset, key, _ in log:
        if offset < end:
            latest[key] = offset
    return [(o, k, v) for o, k, v in log
            if o >= end or (latest[k] == o and (tombstones or v is not None))]


async def _watermark(settings, topic: str) -> int:
    async with open_lake(settings) as lake:
        t = await lake.topic(topic)
        return (await lake.index.compacted_watermark(t.partition(0)))[0]


def _check_table(settings, topic: str, log_view: list[tuple]) -> None:
    """The table holds the compacted part of what a reader from the log start gets (invariant 9)."""
    end = asyncio.run(_watermark(settings, topic))
    assert [(r[1], r[3], r[4]) for r in table_rows(settings, topic)] == [r for r in log_view if r[0] < end]


def test_cleaning_keeps_the_latest_record_per_key_at_its_offset(settings, runner, clock, topic):
    _keyed_log(settings, topic)
    before = _view(asyncio.run(read_log(settings, topic, 0)))
    assert len(before) == 6 * KEYS + (KEYS - 3) + 1
    _compact(runner)
    # The WAL tail (never cleaned): two more rounds after compaction.
    now = int(time.time() * 1000)
    tail = [make_batch([(b"k1", b"tail-%d" % i, [], 0), (b"k2", b"tail-%d" % i, [], 0)], now, 0) for i in range(2)]
    asyncio.run(append_batches(settings, topic, 0, tail))
    full = _view(asyncio.run(read_log(settings, topic, 0)))
    end = asyncio.run(_watermark(settings, topic))
    assert end == len(before)

    result = runner.run_sensor("cleaning_sensor")
    assert [r.job for r in result.runs] == ["cleaning"] and not result.failed, result.runs
    expected = _cleaned(full, end, tombstones=True)
    assert _view(asyncio.run(read_log(settings, topic, 0))) == expected
    assert len(expected) < len(full) and [r for r in expected if r[0] >= end] == full[end:]
    _check_table(settings, topic, expected)
    assert runner.run_sensor("cleaning_sensor").runs == []  # nothing dirty, tombstones not due

    # Tombstones go once delete.retention.ms passed since the pass that first cleaned them.
    clock.advance(RETENTION_MS + 1000)
    result = runner.run_sensor("cleaning_sensor")
    assert [r.job for r in result.runs] == ["cleaning"] and not result.failed
    final = _cleaned(full, end, tombstones=False)
    assert _view(asyncio.run(read_log(settings, topic, 0))) == final
    # Below the clean point every key once; with the tail, every key's latest value; keys 4 and 8 are gone.
    latest = {}
    for _, k, v in full:
        latest[k] = v
    below = [k for o, k, _ in final if o < end]
    assert len(below) == len(set(below)) == KEYS - 2  # above the clean point, the tail keeps its duplicates
    assert {k: v for _, k, v in final} == {k: v for k, v in latest.items() if v is not None}
    _check_table(settings, topic, final)
    assert runner.run_sensor("cleaning_sensor").runs == []


def test_lag_and_dirty_ratio_decide_when(settings, runner, topic):
    _keyed_log(settings, topic, {"min.compaction.lag.ms": str(RETENTION_MS)})
    _compact(runner)
    assert runner.run_sensor("cleaning_sensor").runs == []  # every record is younger than the lag
    assert runner.run_sensor("cleaning_sensor", force=True).runs == []  # not even forced

    other = topic + "-r"
    _keyed_log(settings, other, {"min.cleanable.dirty.ratio": "0.9"}, rounds=4)
    _compact(runner)
    assert [r.tags["dray/clean_reason"] for r in runner.evaluate("cleaning_sensor")] == ["dirty ratio"]
    assert not runner.run_sensor("cleaning_sensor").failed
    _keyed_log_more(settings, other)
    _compact(runner)
    # Little new data: below the ratio, no pass; `dray compact --all` (force) cleans anyway.
    assert runner.evaluate("cleaning_sensor") == []
    assert [r.tags["dray/clean_reason"] for r in runner.evaluate("cleaning_sensor", force=True)] == ["forced"]


def _keyed_log_more(settings, topic: str) -> None:
    now = int(time.time() * 1000)
    asyncio.run(append_batches(settings, topic, 0, [make_batch([(b"k3", b"late", [], 0)], now - 60_000, 0)]))


@pytest.mark.parametrize("point", STEPS)
def test_crash_at_each_step_then_rerun(settings, runner, topic, point):
    _keyed_log(settings, topic)
    _compact(runner)
    full = _view(asyncio.run(read_log(settings, topic, 0)))
    end = asyncio.run(_watermark(settings, topic))
    (request,) = runner.evaluate("cleaning_sensor")
    faults.arm(point, times=1, crash=True)
    assert not runner.execute("cleaning", request).success
    faults.disarm()
    # Whatever step crashed, a reader sees each range before or after its cleaning: every key's latest value is
    # there, at its offset, and nothing that was not in the log.
    seen = _view(asyncio.run(read_log(settings, topic, 0)))
    assert set(_cleaned(full, end, tombstones=True)) <= set(seen) <= set(full)
    assert seen == sorted(seen)
    outcome = runner.execute("cleaning", request)
    assert outcome.success, outcome.error
    expected = _cleaned(full, end, tombstones=True)
    assert _view(asyncio.run(read_log(settings, topic, 0))) == expected
    _check_table(settings, topic, expected)
    assert runner.run_sensor("cleaning_sensor").runs == []
