"""The Dagster webserver and daemon that `dray up` runs next to the broker (entry point group `dray.services`).

`start(settings, flags)` takes the broker's settings (their storage settings: the stores the broker uses) and
`dray up`'s flags, writes the Dagster instance (DAGSTER_HOME, default <data-dir>/dagster: dagster.yaml with a
queued run coordinator that runs one compaction per table at a time) and a workspace file, starts
`dagster-webserver` (and, once it serves, `dagster-daemon`) as child processes in their own process groups, and
returns a handle: `.urls` [(name, url)], `.wait_ready(timeout)` (and `.problem` when it fails), `.terminate()`,
`.kill()` and `.stop()` (SIGTERM, then SIGKILL of each process group after a grace period). Settings of the
pipeline (dray_broker.config.LakeSettings: flags, environment, config file, defaults, resolved here) pass to the
children as DRAY_* variables.

Flags of `dray up` (added by dray_pipelines.cli): --dagster-host, --dagster-port (dray_broker.config.DagsterSettings)
and the pipeline's thresholds (--compact-bytes...). Environment: DAGSTER_HOME.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Mapping

import yaml

from dray_broker.config import ConfigError, DagsterSettings, LakeSettings, StorageSettings
from dray_broker.server.in_use import check_free

log = logging.getLogger(__name__)

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
    """The webserver and the daemon. The daemon is started once the webserver serves: both create the instance's
    storage on a first start, and together they race (one of them dies with "table ... already exists")."""

    def __init__(self, launch: dict[str, list[str]], urls: list[tuple[str, str]], home: Path, log_dir: Path,
                 env: dict[str, str]):
        self.urls = urls
        self.home = home
        self.log_dir = log_dir
        self.problem: str | None = None  # why wait_ready returned False
        self._launch = launch
        self._env = env
        self._terminated_at: float | None = None
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._start("dagster-webserver")

    def _start(self, name: str) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as out:
            self.procs.append((name, subprocess.Popen(
                self._launch[name], env=self._env, cwd=str(self.home), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)))

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until the webserver answers (True); False when the timeout passes, a process exits or stop() was
        called, with the reason in .problem. The daemon starts when the webserver answers, or at the timeout (a
        slow machine: the daemon is what compacts)."""
        url = self.urls[0][1] + "/server_info"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._terminated_at is None:
            for name, p in self.procs:
                if p.poll() is not None:
                    self.problem = f"{name} exited with code {p.returncode} (log: {self.log_dir / name}.log)"
                    return False
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        self._start_daemon()
                        return True
            except OSError:
                pass
            time.sleep(0.3)
        if self._terminated_at is not None:
            self.problem = "stopped while starting"
            return False
        self._start_daemon()
        self.problem = f"the Dagster UI did not answer within {timeout:.0f} s (log: {self.log_dir})"
        return False

    def _start_daemon(self) -> None:
        if all(name != "dagster-daemon" for name, _ in self.procs):
            self._start("dagster-daemon")

    def terminate(self) -> None:
        """SIGTERM to each process group, once (stop() waits for them)."""
        if self._terminated_at is None:
            self._terminated_at = time.monotonic()
            for _, p in self.procs:
                _signal_group(p, signal.SIGTERM)

    def kill(self) -> None:
        for _, p in self.procs:
            _signal_group(p, signal.SIGKILL)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop both processes: SIGTERM to each process group, SIGKILL after grace_s. Says what it waits for."""
        self.terminate()
        deadline = self._terminated_at + grace_s
        running = [name for name, p in self.procs if p.poll() is None]
        if running:
            log.info("waiting for %s to stop (at most %.0f s more)", " and ".join(running),
                     max(0.0, deadline - time.monotonic()))
        for name, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: killing it", name, grace_s)
            _signal_group(p, signal.SIGKILL)  # and whatever it started
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def ui_address(flags: Mapping[str, Any]) -> tuple[str, int]:
    """Where the Dagster UI listens: --dagster-host/--dagster-port, else DRAY_DAGSTER_HOST/PORT, else defaults
    (ConfigError when invalid)."""
    ui = DagsterSettings.load(flags)
    return ui.dagster_host, ui.dagster_port


def start(settings: StorageSettings, flags: Mapping[str, Any] | None = None, *, host: str | None = None,
          port: int | None = None, log_dir: Path | None = None) -> DagsterServices:
    """Start the Dagster webserver and daemon for the log in settings' stores. flags: `dray up`'s (the Dagster
    host and port, the pipeline's thresholds). InUse when the UI's port is taken; RuntimeError when a pipeline
    setting is invalid."""
    flags = flags or {}
    try:
        lake = LakeSettings.load({**flags, **settings.storage()})
        ui_host, ui_port = ui_address(flags)
    except ConfigError as e:
        raise RuntimeError(str(e)) from None
    host, port = host or ui_host, port or ui_port
    home = Path(os.environ.get("DAGSTER_HOME") or lake.data_dir.resolve() / "dagster").resolve()
    check_free(None, [(f"{host}:{port}", "the Dagster UI", "--dagster-port {port}")])
    workspace = prepare_home(home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1", **lake.env()}
    log_dir = log_dir or home / "process-logs"  # not logs/: Dagster moves that one away (its telemetry queue)
    log_dir.mkdir(parents=True, exist_ok=True)
    launch = {
        "dagster-webserver": [_tool("dagster-webserver"), "-h", host, "-p", str(port), "-w", str(workspace)],
        "dagster-daemon": [_tool("dagster-daemon"), "run", "-w", str(workspace)],
    }
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    urls = [("Dagster UI", f"http://{shown_host}:{port}"),
            ("Dagster logs", f"{log_dir}/dagster-webserver.log, dagster-daemon.log (run logs: in the UI)")]
    return DagsterServices(launch, urls, home, log_dir, env)
