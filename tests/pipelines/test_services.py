"""What `dray up` runs next to the broker: the Dagster webserver and daemon (dray_pipelines.services). The daemon's
sensors find a partition past its threshold and its run compacts it, with no process of the test's doing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from confluent_kafka import Producer

from dray_broker.config import Settings
from dray_pipelines import services
from tests.integration.brokers import free_port
from tests.pipelines.conftest import lake_settings
from tests.pipelines.helpers import log_state, write_log

ROOT = Path(__file__).resolve().parents[2]


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
        logs = data / "dagster" / "process-logs"
        assert handle.urls == [("Dagster UI", f"http://127.0.0.1:{port}"),
                               ("Dagster logs", f"{logs}/dagster-webserver.log, dagster-daemon.log (run logs: in the UI)")]
        assert handle.wait_ready(120), (handle.log_dir / "dagster-webserver.log").read_text()[-3000:]
        config = (handle.home / "dagster.yaml").read_text()
        assert "QueuedRunCoordinator" in config and "dray/table" in config
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = asyncio.run(log_state(settings, "daemon", 0))
            if state.watermark == state.log_end == 40:
                break
            time.sleep(1)
        assert state.watermark == 40, (handle.log_dir / "dagster-daemon.log").read_text()[-5000:]
        # The logs are where `dray up` says, still there once Dagster has run (it moves its own logs/ folder away).
        assert (logs / "dagster-webserver.log").stat().st_size > 0 and (logs / "dagster-daemon.log").stat().st_size > 0
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


def test_dray_up_passes_its_pipeline_flags_and_stops_saying_what_it_waits_for(tmp_path):
    """`dray up --compact-bytes 1 ...`: the daemon compacts by the flags (the defaults would wait for 64 MiB or
    10 minutes); Ctrl-C stops the broker and the Dagster processes, saying what it waits for."""
    data = tmp_path / "data"
    kafka, http, ui = (f"127.0.0.1:{free_port()}" for _ in range(3))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRAY_", "DAGSTER_HOME"))}
    up = subprocess.Popen([sys.executable, "-m", "dray_broker.cli", "up", "--data-dir", str(data), "--listen", kafka,
                           "--http-listen", http, "--dagster-port", ui.rsplit(":", 1)[1], "--compact-bytes", "1",
                           "--sensor-interval-s", "2", "--wal-gc-grace-ms", "0"],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(up.stdout), daemon=True)
    reader.start()
    try:
        _wait(lambda: any(line.startswith("Dray ") and " is up " in line for line in output), 240, output)
        # It says where the Dagster processes' logs are (and they are there).
        logs = data.resolve() / "dagster" / "process-logs"
        _wait(lambda: any(line.split()[:2] == ["Dagster", "logs"] and f"{logs}/dagster-webserver.log" in line
                          for line in output), 10, output)
        assert (logs / "dagster-webserver.log").exists()
        children = psutil.Process(up.pid).children(recursive=True)
        # A second `dray up` here (a second `./dev up`): refused at once, saying what runs and how to go on.
        again = subprocess.run([sys.executable, "-m", "dray_broker.cli", "up", "--data-dir", str(data), "--listen",
                                kafka, "--http-listen", http, "--dagster-port", ui.rsplit(":", 1)[1]],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and again.stdout == ""
        assert re.fullmatch(
            f"dray: Dray is running already \\(pid {up.pid}: dray up\\), using the data directory {data.resolve()}, "
            f"{kafka} \\(the Kafka listener\\), {http} \\(metrics and health\\) and {ui} \\(the Dagster UI\\): "
            f"stop it \\(Ctrl-C where it runs, or kill {up.pid}\\), or start this one with --data-dir OTHER_DIR "
            "--listen 127.0.0.1:\\d+ --http-listen 127.0.0.1:\\d+ --dagster-port \\d+\n", again.stderr), again.stderr
        assert {" ".join(c.cmdline()[1:2]).rsplit("/", 1)[-1] for c in children} >= {"dagster-webserver",
                                                                                       "dagster-daemon"}
        p = Producer({"bootstrap.servers": kafka, "log_level": 3})
        for i in range(40):
            p.produce("up.orders", value=b"%d" % i)
        assert p.flush(30) == 0

        def compacted() -> bool:
            status = subprocess.run([sys.executable, "-m", "dray_broker.cli", "cluster", "status", "--json",
                                     "--bootstrap", kafka, "--metadata", f"sqlite://{data.resolve()}/meta.db",
                                     "--topic", "up.orders"], cwd=ROOT, env=env, capture_output=True, text=True)
            (partition,) = json.loads(status.stdout)["topics"][0]["partitions"]
            return partition["compacted_watermark"] == 40

        _wait(compacted, 240, output)
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, "".join(output)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    reader.join(10)
    said = "".join(output)
    assert "signal received: stopping" in said and re.search(r"dray broker \d+ stopped", said)
    assert "waiting for dagster-webserver and dagster-daemon to stop" in said and "everything stopped" in said
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def _wait(predicate, timeout: float, output: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "".join(output)[-5000:]
        time.sleep(0.5)
