"""The compaction saga under crashes: at every step a failure leaves a log that readers see whole, and a rerun
finishes with no loss and no duplicates; table and index agree. Runs go through the Dagster job, in process."""

from __future__ import annotations

import asyncio

import pytest
from dagster import RunRequest

from dray_broker import faults
from tests.pipelines.helpers import assert_agree, log_state, read_log, write_log

TOPIC = "saga"
POINTS = [
    "stage.before_write",
    "stage.mid_write",
    "stage.after_write",
    "commit.before",
    "commit.after",
    "publish.before_entries",
    "publish.mid_entries",
    "publish.before_swap",
    "publish.after_swap",
]


@pytest.fixture
def settings(backend_settings):
    """Every crash point on both backends: SQLite + a directory, and Oxia + MinIO."""
    return backend_settings


@pytest.fixture(autouse=True)
def _disarm():
    faults.disarm()
    yield
    faults.disarm()


def _log(settings, partitions=2, batches=12):
    asyncio.run(write_log(settings, TOPIC, partitions, batches=batches, records_per_batch=25,
                          flushes_per_partition=6))
    return {p: asyncio.run(read_log(settings, TOPIC, p)) for p in range(partitions)}


def _compaction_request(runner, partition: int) -> RunRequest:
    requests = [r for r in runner.evaluate("compaction_sensor", force=True) if r.partition_key == f"{TOPIC}-{partition}"]
    assert len(requests) == 1, requests
    return requests[0]


@pytest.mark.parametrize("point", POINTS)
def test_crash_then_rerun(settings, runner, point):
    expected = _log(settings, partitions=1)
    request = _compaction_request(runner, 0)
    faults.arm(point, times=1, crash=True)  # the run stops there, as if its process died: no step retry
    assert not runner.execute("compaction", request).success
    faults.disarm()
    # Whatever step crashed, readers see the whole log, unchanged, and what is swapped is committed.
    assert asyncio.run(read_log(settings, TOPIC, 0)) == expected[0]
    state = asyncio.run(log_state(settings, TOPIC, 0))
    assert state.watermark <= state.committed
    # The same run again finishes the work.
    outcome = runner.execute("compaction", request)
    assert outcome.success, outcome.error
    assert_agree(settings, TOPIC, expected, fully_compacted=True)


@pytest.mark.parametrize("point", ["stage.mid_write", "commit.before", "publish.before_swap"])
def test_a_failing_run_then_rerun(settings, runner, point):
    """A step that fails on every retry fails its run; a later run finishes."""
    expected = _log(settings, partitions=1)
    request = _compaction_request(runner, 0)
    faults.arm(point, times=None)
    assert not runner.execute("compaction", request).success
    faults.disarm()
    assert asyncio.run(read_log(settings, TOPIC, 0)) == expected[0]
    assert runner.execute("compaction", request).success
    assert_agree(settings, TOPIC, expected, fully_compacted=True)
