"""Compaction runs as the Dagster UI starts them (Materialize: no dray/end_offset tag), and errors that no retry can
fix: the run fails at once, saying why."""

from __future__ import annotations

import asyncio

from dagster import DagsterEventType

from tests.pipelines.helpers import log_state, read_log, write_log


def _materialize(runner, partition_key: str):
    """What the UI's Materialize button launches: the compaction job for one partition, with no Dray tags."""
    runner.instance.add_dynamic_partitions("topic_partitions", [partition_key])
    job = runner.defs.resolve_job_def("compaction")
    return job.execute_in_process(instance=runner.instance, partition_key=partition_key, raise_on_error=False)


def test_materialize_compacts_up_to_the_log_end(runner, settings):
    asyncio.run(write_log(settings, "ui.orders", 2, batches=4, records_per_batch=25))
    expected = asyncio.run(read_log(settings, "ui.orders", 1))
    result = _materialize(runner, "ui.orders-1")
    assert result.success
    state = asyncio.run(log_state(settings, "ui.orders", 1))
    assert state.watermark == state.committed == state.log_end == 100
    assert asyncio.run(log_state(settings, "ui.orders", 0)).watermark == 0  # only the partition asked for
    run = runner.instance.get_run_by_id(result.run_id)
    assert run.tags["dray/end_offset"] == "100"  # every step of the run worked on the same range
    assert asyncio.run(read_log(settings, "ui.orders", 1)) == expected

    # Again with nothing new: the run succeeds and says there was nothing to do, with no inverted range.
    again = _materialize(runner, "ui.orders-1")
    assert again.success
    materialized = [e for e in again.all_events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION]
    for event in materialized:
        md = event.event_specific_data.materialization.metadata
        assert md["action"].value.startswith("already")
        start, end = md["start_offset"].value, md["end_offset"].value
        assert start <= end == 100


def test_an_error_no_retry_can_fix_fails_the_run_at_once(runner, settings):
    asyncio.run(write_log(settings, "ui.kept", 1, batches=1, records_per_batch=5))
    result = _materialize(runner, "ui.gone-0")  # a partition of a topic that does not exist
    assert not result.success
    retried = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert retried == []
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1
    error = failures[0].event_specific_data.error
    assert "ui.gone-0 does not exist" in (failures[0].message + str(error.message if error else ""))


def test_dray_compact_says_why_a_run_did_nothing_or_failed(runner, settings):
    """The Runner (`dray compact`) prints, for a request whose range another run already compacted, that there was
    nothing to do; for a failed run, the reason."""
    lines: list[str] = []
    runner.report = lines.append
    asyncio.run(write_log(settings, "ui.twice", 1, batches=2, records_per_batch=10))
    (request,) = runner.evaluate("compaction_sensor", force=True)
    assert runner.execute("compaction", request).success
    assert runner.execute("compaction", request).success  # as if the daemon had run it meanwhile
    assert "nothing to do: already swapped" in lines[-1] and "(" not in lines[0]
    from dagster import RunRequest

    runner.instance.add_dynamic_partitions("topic_partitions", ["ui.nowhere-0"])
    failed = runner.execute("compaction", RunRequest(partition_key="ui.nowhere-0", tags={"dray/end_offset": "5"}))
    assert not failed.success and "topic 'ui.nowhere' does not exist" in failed.error and "retry" in failed.error
    assert lines[-1].startswith("FAILED") and failed.error in lines[-1], lines
