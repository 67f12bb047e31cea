"""What `dray up` runs next to the broker: the Dagster webserver and daemon (dray_pipelines.services). The daemon's
sensors find a partition past its threshold and its run compacts it, with no process of the test's doing."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

from dray_broker.config import Settings
from dray_pipelines import services
from tests.integration.brokers import free_port
from tests.pipelines.conftest import lake_settings
from tests.pipelines.helpers import log_state, write_log


def test_webserver_and_daemon_compact_on_their_own(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("DRAY_COMPACT_BYTES", "1")
    monkeypatch.setenv("DRAY_SENSOR_INTERVAL_S", "2")
    monkeypatch.setenv("DRAY_WAL_GC_GRACE_MS", "0")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name in ("DRAY_METADATA", "DRAY_OBJECT_STORE", "DRAY_CATALOG", "DRAY_WAREHOUSE"):
        monkeypatch.delenv(name, raising=False)
    settings = lake_settings(data)
    asyncio.run(write_log(settings, "daemon", 1, batches=4, records_per_batch=10))

    port = free_port()
    handle = services.start(Settings(data_dir=data), port=port)
    try:
        assert handle.urls == [("Dagster UI", f"http://127.0.0.1:{port}")]
        assert handle.wait_ready(120), (handle.home / "logs" / "dagster-webserver.log").read_text()[-3000:]
        config = (handle.home / "dagster.yaml").read_text()
        assert "QueuedRunCoordinator" in config and "dray/table" in config
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = asyncio.run(log_state(settings, "daemon", 0))
            if state.watermark == state.log_end == 40:
                break
            time.sleep(1)
        assert state.watermark == 40, (handle.home / "logs" / "dagster-daemon.log").read_text()[-5000:]
        # Two more sensor ticks over the same state: they must ask for nothing more.
        ticks = _sensor_ticks(handle.urls[0][1], "compaction_sensor")
        deadline = time.monotonic() + 60
        while _sensor_ticks(handle.urls[0][1], "compaction_sensor") < ticks + 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _sensor_ticks(handle.urls[0][1], "compaction_sensor") >= ticks + 2
        runs = _graphql(handle.urls[0][1], '{ runsOrError(filter: {pipelineName: "compaction"}) '
                                           '{ ... on Runs { results { status tags { key value } } } } }')
        results = runs["data"]["runsOrError"]["results"]
        assert [r["status"] for r in results] == ["SUCCESS"]
        keys = [t["value"] for r in results for t in r["tags"] if t["key"] == "dagster/run_key"]
        assert keys == ["compact:daemon-0:0-40"]
    finally:
        handle.stop(grace_s=5)
    assert all(p.poll() is not None for _, p in handle.procs)


def _sensor_ticks(base: str, sensor: str) -> int:
    """How many ticks the daemon has evaluated for the sensor (the newest 1000)."""
    doc = _graphql(base, '{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name '
                         'sensorState { ticks(limit: 1000) { status } } } } } } }')
    return sum(len(s["sensorState"]["ticks"]) for repo in doc["data"]["repositoriesOrError"]["nodes"]
               for s in repo["sensors"] if s["name"] == sensor)


def _graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(base + "/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())
