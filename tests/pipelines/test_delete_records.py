"""A log start moved by DeleteRecords (the offset index's log start, as the broker's handler moves it) goes through
the retention path: the table drops its whole data files below it, WAL GC the index entries and objects, and readers
from the log start see the same records. Crashes at each step of the run, then a rerun. Both backends."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from dray_broker import faults
from dray_pipelines.lake import open_lake
from tests.pipelines.helpers import log_state, read_log, table_rows, write_log



@pytest.fixture
def settings(backend_settings):
    return backend_settings


@pytest.fixture
def topic() -> str:
    """A name per test: the session's Dagster instance remembers run keys, which name the topic."""
    return f"deleted-records-{uuid.uuid4().hex[:6]}"


@pytest.fixture(autouse=True)
def _disarm():
    faults.disarm()
    yield
    faults.disarm()


def _compacted_log(settings, runner, topic) -> list[tuple]:
    """One partition, compacted to several data files (retention.ms -1: nothing goes by age)."""
    asyncio.run(write_log(settings, topic, 1, batches=12, records_per_batch=25, flushes_per_partition=12,
                          configs={"retention.ms": "-1"}))
    small = runner.__class__(runner.dray.settings().model_copy(update={"compact_max_bytes": 12_000}),
                             instance=runner.instance)
    assert not small.run_sensor("compaction_sensor", force=True, repeat=True).failed
    return asyncio.run(read_log(settings, topic, 0))


async def _delete_records(settings, topic, offset: int) -> int:
    async with open_lake(settings) as lake:
        t = await lake.topic(topic)
        return await lake.index.advance_log_start_offset(t.partition(0), offset)


async def _files(settings, topic) -> list[tuple[int, int]]:
    async with open_lake(settings) as lake:
        table = lake.table(await lake.topic(topic))
        return [(f.start, f.end) for f in await asyncio.to_thread(table.live_files, 0)]


def test_deleted_range_leaves_the_table_through_retention(settings, runner, topic):
    expected = _compacted_log(settings, runner, topic)
    files = asyncio.run(_files(settings, topic))
    assert len(files) >= 3 and files[-1][1] == 300
    assert runner.run_sensor("retention_sensor").runs == []  # nothing to drop yet
    # Delete up to the middle of the second file: the first file goes whole, the second stays.
    cut = (files[1][0] + files[1][1]) // 2
    assert asyncio.run(_delete_records(settings, topic, cut)) == cut
    result = runner.run_sensor("retention_sensor")
    assert [r.job for r in result.runs] == ["retention"] and not result.failed
    assert asyncio.run(_files(settings, topic)) == files[1:]
    assert {r[1] for r in table_rows(settings, topic)} == set(range(files[1][0], 300))
    assert runner.run_sensor("retention_sensor").runs == []  # trimmed: nothing more to do
    assert asyncio.run(read_log(settings, topic, 0, start=cut)) == [r for r in expected if r[0] >= cut]
    # WAL GC then drops the Parquet index entries of the dropped file, not those still in use.
    assert not runner.run_sensor("wal_gc_sensor", repeat=True).failed
    state = asyncio.run(log_state(settings, topic, 0))
    assert state.log_start == cut and state.pq_ranges and state.pq_ranges[0][0] >= files[1][0]
    assert asyncio.run(read_log(settings, topic, 0, start=cut)) == [r for r in expected if r[0] >= cut]


@pytest.mark.parametrize("point", ["retention.after_log_start", "retention.after_trim"])
def test_crash_in_the_retention_run_then_rerun(settings, runner, topic, point):
    expected = _compacted_log(settings, runner, topic)
    files = asyncio.run(_files(settings, topic))
    cut = files[2][0]
    asyncio.run(_delete_records(settings, topic, cut))
    (request,) = runner.evaluate("retention_sensor")
    faults.arm(point, times=1, crash=True)
    assert not runner.execute("retention", request).success
    faults.disarm()
    assert asyncio.run(read_log(settings, topic, 0, start=cut)) == [r for r in expected if r[0] >= cut]
    # The sensor asks again (the trim is not recorded); the rerun finishes it.
    result = runner.run_sensor("retention_sensor")
    assert not result.failed
    assert asyncio.run(_files(settings, topic)) == files[2:]
    assert runner.run_sensor("retention_sensor").runs == []
    assert asyncio.run(read_log(settings, topic, 0, start=cut)) == [r for r in expected if r[0] >= cut]
