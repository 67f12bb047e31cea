"""The Dagster webserver and daemon that `dray up` runs next to the broker (entry point group `dray.services`).

`start(settings)` takes the broker's settings (anything with data_dir, metadata_url and object_store_url), writes
the Dagster instance (DAGSTER_HOME, default <data-dir>/dagster: dagster.yaml with a queued run coordinator that
runs one compaction per table at a time) and a workspace file, starts `dagster-webserver` and `dagster-daemon` as
child processes in their own process groups, and returns a handle: `.urls` [(name, url)], `.wait_ready(timeout)`,
`.stop()` (SIGTERM, then SIGKILL of each process group after a grace period). Settings of the pipeline
(DRAY_CATALOG, thresholds...) pass to the children through the environment.

Environment: DRAY_DAGSTER_HOST (127.0.0.1), DRAY_DAGSTER_PORT (3000), DAGSTER_HOME.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

STOP_GRACE_S = 10.0

WORKSPACE = {"load_from": [{"python_module": {"module_name": "dray_pipelines.definitions", "attribute": "defs",
                                              "location_name": "dray_pipelines"}}]}


def instance_config() -> dict:
    return {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                "max_concurrent_runs": 4,
                "tag_concurrency_limits": [
                    {"key": "dray/table", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
                    {"key": "dray/gc", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
                ],
            },
        },
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
    }


def prepare_home(home: Path) -> Path:
    """Write dagster.yaml (if absent) and the workspace file; return the workspace path."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(instance_config(), sort_keys=False))
    workspace = home / "workspace.yaml"
    workspace.write_text(yaml.safe_dump(WORKSPACE, sort_keys=False))
    return workspace


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (pip install dagster-webserver)")
    return found


class DagsterServices:
    def __init__(self, procs: list[tuple[str, subprocess.Popen]], urls: list[tuple[str, str]], home: Path):
        self.procs = procs
        self.urls = urls
        self.home = home

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until the webserver answers (True) or the timeout passes / a process exits (False)."""
        url = self.urls[0][1] + "/server_info"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for _, p in self.procs):
                return False
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.3)
        return False

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop both processes: SIGTERM to each process group, SIGKILL after grace_s."""
        for _, p in self.procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start(settings, *, host: str | None = None, port: int | None = None, log_dir: Path | None = None) -> DagsterServices:
    """Start the Dagster webserver and daemon for the log that settings describe."""
    data_dir = Path(settings.data_dir).resolve()
    home = Path(os.environ.get("DAGSTER_HOME") or data_dir / "dagster").resolve()
    workspace = prepare_home(home)
    host = host or os.environ.get("DRAY_DAGSTER_HOST", "127.0.0.1")
    port = port or int(os.environ.get("DRAY_DAGSTER_PORT", "3000"))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DRAY_DATA_DIR": str(data_dir),
        "DRAY_METADATA": settings.metadata_url,
        "DRAY_OBJECT_STORE": settings.object_store_url,
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("catalog", "warehouse"):
        value = getattr(settings, name, None)
        if value:
            env["DRAY_" + name.upper()] = str(value)
    log_dir = log_dir or home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    commands = [
        ("dagster-webserver", [_tool("dagster-webserver"), "-h", host, "-p", str(port), "-w", str(workspace)]),
        ("dagster-daemon", [_tool("dagster-daemon"), "run", "-w", str(workspace)]),
    ]
    procs = []
    for name, argv in commands:
        out = open(log_dir / f"{name}.log", "ab")
        procs.append((name, subprocess.Popen(argv, env=env, cwd=str(home), stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)))
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return DagsterServices(procs, [("Dagster UI", f"http://{shown_host}:{port}")], home)
