"""Runs the pipeline's pending work once, in process, through the same Dagster definitions the daemon uses:
evaluate each sensor, then execute the runs it requests (for `dray compact`, scripts and tests).

The Dagster instance is the one of $DAGSTER_HOME when set (runs then show in the UI, and run keys the daemon already
ran are skipped), else an ephemeral one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

from dagster import DagsterInstance, DeleteDynamicPartitionsRequest, RunRequest, RunsFilter, SensorResult, SkipReason, build_sensor_context

from dray_broker.config import LakeSettings
from dray_pipelines import definitions as d
from dray_pipelines.resources import DrayLake

log = logging.getLogger(__name__)
RUN_KEY_TAG = "dagster/run_key"


@dataclass
class RunOutcome:
    job: str
    run_key: str | None
    partition: str | None
    success: bool
    run_id: str
    error: str | None = None


@dataclass
class PassResult:
    runs: list[RunOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[RunOutcome]:
        return [r for r in self.runs if not r.success]


def default_instance() -> DagsterInstance:
    return DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()


class Runner:
    def __init__(self, settings: LakeSettings, instance: DagsterInstance | None = None,
                 report: Callable[[str], None] | None = None, log_level: str = "INFO",
                 progress: Callable[[str], None] | None = None):
        self.log_level = log_level  # of the runs' console logger
        self.progress = progress or (lambda doing: None)  # told what starts now (a sensor, a run)
        self.dray = DrayLake.from_settings(settings)
        self.defs = d.make_definitions(self.dray)
        self.instance = instance or default_instance()
        self.report = report or (lambda line: log.info(line))
        self._cursors: dict[str, str | None] = {}

    # --- sensors ------------------------------------------------------------------------------------------------

    def evaluate(self, sensor_name: str, *, force: bool = False) -> list[RunRequest]:
        """Evaluate one sensor as the daemon would; apply its partition requests and asset events."""
        self.progress(f"evaluating {sensor_name}")
        context = build_sensor_context(instance=self.instance, cursor=self._cursors.get(sensor_name),
                                       resources={"dray": self.dray}, definitions=self.defs, sensor_name=sensor_name)
        if sensor_name == "compaction_sensor" and force:
            result = d.compaction_requests(context, self.dray, force=True)
        elif sensor_name == "cleaning_sensor" and force:
            result = d.cleaning_requests(context, self.dray, force=True)
        else:
            result = self.defs.resolve_sensor_def(sensor_name)(context)
        return self._apply(sensor_name, result)

    def _apply(self, sensor_name: str, result) -> list[RunRequest]:
        if result is None or isinstance(result, SkipReason):
            return []
        if isinstance(result, RunRequest):
            return [result]
        if isinstance(result, list):
            return [r for r in result if isinstance(r, RunRequest)]
        assert isinstance(result, SensorResult), result
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, DeleteDynamicPartitionsRequest):
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
            else:
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for event in result.asset_events or []:
            self.instance.report_runless_asset_event(event)
        if result.cursor is not None:
            self._cursors[sensor_name] = result.cursor
        return list(result.run_requests or [])

    # --- runs ---------------------------------------------------------------------------------------------------

    def already_ran(self, run_key: str | None) -> bool:
        if not run_key:
            return False
        runs = self.instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
        return bool(runs) and runs[0].status.value == "SUCCESS"

    def execute(self, job_name: str, request: RunRequest) -> RunOutcome:
        job_def = self.defs.resolve_job_def(job_name)
        self.progress(f"{job_name} {request.partition_key or request.run_key or ''}".rstrip())
        tags = dict(request.tags or {})
        if request.run_key:
            tags[RUN_KEY_TAG] = request.run_key
        tags["dray/launched_by"] = "dray compact"
        run_config = {**(request.run_config or {}),
                      "loggers": {"console": {"config": {"log_level": self.log_level}}}}
        result = job_def.execute_in_process(
            run_config=run_config, instance=self.instance, partition_key=request.partition_key,
            tags=tags, raise_on_error=False,
        )
        error = None
        if not result.success:
            failures = [e for e in result.all_events if e.is_failure]
            error = _reason(failures[-1]) if failures else "run failed"
        outcome = RunOutcome(job_name, request.run_key, request.partition_key, result.success, result.run_id, error)
        note = error or _nothing_done(result)
        self.report(f"{'ok' if outcome.success else 'FAILED'}  {job_name:<17} {request.run_key or ''}"
                    + (f"  ({note})" if note else ""))
        return outcome

    def run_sensor(self, sensor_name: str, *, force: bool = False, repeat: bool = False) -> PassResult:
        """Evaluate the sensor and execute what it requests; with repeat, again until it requests nothing new."""
        job_name = self.defs.resolve_sensor_def(sensor_name).job_name
        out = PassResult()
        done: set[str] = set()
        while True:
            requests = [r for r in self.evaluate(sensor_name, force=force)
                        if (r.run_key or "") not in done and not self.already_ran(r.run_key)]
            if not requests:
                return out
            for request in requests:
                done.add(request.run_key or "")
                out.runs.append(self.execute(request.job_name or job_name, request))
            if not repeat:
                return out

    def run_all(self, *, force: bool = False, maintenance: bool = False) -> PassResult:
        """Compaction (until nothing is due), cleaning of compacted topics, retention, WAL GC, deleted topics, orphan GC (and table maintenance
        if asked)."""
        out = PassResult()
        out.runs += self.run_sensor("compaction_sensor", force=force, repeat=True).runs
        out.runs += self.run_sensor("cleaning_sensor", force=force).runs
        out.runs += self.run_sensor("retention_sensor").runs
        out.runs += self.run_sensor("wal_gc_sensor", repeat=True).runs
        out.runs += self.run_sensor("deleted_topics_sensor").runs
        out.runs += self.run_sensor("orphan_gc_sensor").runs
        if maintenance:
            out.runs += self.run_sensor("table_maintenance_sensor").runs
        return out


def _reason(event) -> str:
    """Why a step failed: the error it raised (a Failure's description), not just "step X failed"."""
    error = getattr(event.event_specific_data, "error", None)
    if error is not None and error.message:
        return error.message.strip().splitlines()[0].removeprefix("dagster._core.definitions.events.Failure: ")
    return event.message or "run failed"


def _nothing_done(result) -> str | None:
    """For a compaction run that found its range already done (another run did it): say so."""
    actions = [e.event_specific_data.materialization.metadata.get("action")
               for e in result.all_events if e.is_step_materialization]
    actions = [a.value for a in actions if a is not None]
    if actions and all(str(a).startswith("already") for a in actions):
        return f"nothing to do: {actions[-1]}"
    return None
