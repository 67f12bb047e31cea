"""The Dagster UI loads the code location: `dagster dev -w dagster_workspace.yaml` serves it, and headless Chromium
renders the asset graph with the three assets and the lineage wal_segments -> parquet_files -> iceberg_snapshots;
clicking Materialize (driven over the DevTools protocol) compacts the partition up to its log end.

Needs Chromium (Debian package `chromium`): without it the test fails, it does not skip."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.brokers import free_port
from tests.pipelines.conftest import lake_settings
from tests.pipelines.helpers import log_state, write_log

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ("wal_segments", "parquet_files", "iceberg_snapshots", "cleaned_log")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-dev-shm-usage", "--virtual-time-budget=15000"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is needed for the UI test: apt-get install -y chromium")


def _get(url: str, timeout: float = 2) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(base + "/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


TOPIC = "ui.orders"


@pytest.fixture
def dagster_dev(tmp_path):
    # A log for the pipelines to see (as a broker would have written it): one partition, not compacted yet.
    asyncio.run(write_log(lake_settings(tmp_path / "data"), TOPIC, 1, batches=4, records_per_batch=25))
    port = free_port()
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "DRAY_DATA_DIR": str(tmp_path / "data"),
           "DRAY_SENSOR_INTERVAL_S": "2", "PYTHONPATH": str(ROOT)}
    for name in ("DRAY_METADATA", "DRAY_OBJECT_STORE", "DRAY_CATALOG", "DRAY_WAREHOUSE"):
        env.pop(name, None)
    dagster = Path(sys.executable).parent / "dagster"
    log = open(tmp_path / "dagster-dev.log", "wb")
    proc = subprocess.Popen([str(dagster), "dev", "-w", "dagster_workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster dev exited:\n{(tmp_path / 'dagster-dev.log').read_text()[-4000:]}")
            try:
                _get(base + "/server_info")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"dagster dev did not serve in 120 s:\n{(tmp_path / 'dagster-dev.log').read_text()[-4000:]}")
                time.sleep(0.5)
        yield base
    finally:
        # dagster dev needs a hard kill of its process group after a grace period (see FACTS.md)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def _graph_from_dom(html: str) -> tuple[dict[str, float], list[tuple[float, float]]]:
    """Asset node name -> x of its box; lineage edges as (x where it leaves, x where it arrives)."""
    i = html.index("AssetGraphExplorer_svgContainer")
    svg = html[i:]
    nodes = {}
    for m in re.finditer(r'<foreignObject x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg):
        name = re.search(r'AssetNode_assetName[^>]*>([a-z_]+)<', svg[m.end():m.end() + 5000])
        if name:
            nodes[name.group(1)] = (float(m.group(1)), float(m.group(2)))
    edges = []
    for m in re.finditer(r'<path d="M([\d.]+),[\d.]+C[^"]*,([\d.]+),[\d.]+" stroke="var\(--color-lineage-edge\)"', svg):
        edges.append((float(m.group(1)), float(m.group(2))))
    return nodes, edges


def test_asset_graph_in_the_ui(dagster_dev, tmp_path):
    chromium = _chromium()
    # The code location loaded with its assets and their dependencies.
    data = _graphql(dagster_dev, "{ assetNodes { assetKey { path } dependencyKeys { path } } }")["data"]
    deps = {n["assetKey"]["path"][0]: sorted(d["path"][0] for d in n["dependencyKeys"]) for n in data["assetNodes"]}
    assert deps == {"wal_segments": [], "parquet_files": ["wal_segments"], "iceberg_snapshots": ["parquet_files"],
                    "cleaned_log": ["iceberg_snapshots"]}
    _graphql(dagster_dev, "mutation { setNuxSeen }")  # no first-run popup over the graph

    html = ""
    for _ in range(3):  # the first render after start may still be loading
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, "--dump-dom", dagster_dev + "/asset-groups"],
                              capture_output=True, timeout=120)
        html = done.stdout.decode(errors="replace")
        if "AssetGraphExplorer_svgContainer" in html and all(a in html for a in ASSETS):
            break
    (tmp_path / "asset-graph.html").write_text(html)
    nodes, edges = _graph_from_dom(html)
    assert set(nodes) == set(ASSETS), nodes
    # Lineage: an edge leaves each upstream box on its right side and arrives at the downstream box.
    found = set()
    for start, end in edges:
        src = [n for n, (x, w) in nodes.items() if abs(x + w - start) < 2]
        dst = [n for n, (x, w) in nodes.items() if 0 <= x - end < 12]
        if src and dst:
            found.add((src[0], dst[0]))
    assert found == {("wal_segments", "parquet_files"), ("parquet_files", "iceberg_snapshots"),
                     ("iceberg_snapshots", "cleaned_log")}, (nodes, edges)


# --- Materialize, clicked in the UI -----------------------------------------------------------------------------------


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page): navigate, evaluate JavaScript, wait."""

    def __init__(self, chromium: str, tmp_path: Path):
        from websockets.sync.client import connect

        self.tmp_path = tmp_path
        port = free_port()
        self.proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS[:-1], f"--remote-debugging-port={port}",
                                      f"--user-data-dir={tmp_path / 'chromium'}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        pages = self._wait(lambda: [t for t in json.loads(_get(f"http://127.0.0.1:{port}/json/list"))
                                    if t["type"] == "page"], 30, "Chromium's DevTools endpoint")
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def click(self, text: str, within: str = "document", timeout: float = 60) -> None:
        """Click the first enabled button whose text starts with text (waiting for it to appear)."""
        script = f"""(() => {{
            const root = {within};
            if (!root) return false;
            const b = [...root.querySelectorAll('button')].find(
                b => b.textContent.trim().startsWith({json.dumps(text)}) && !b.disabled);
            if (!b) return false;
            b.click();
            return true;
        }})()"""
        try:
            self._wait(lambda: self.js(script), timeout, f"a button {text!r}")
        except BaseException:
            buttons = self.js("[...document.querySelectorAll('button')].map(b => b.textContent.trim()).join(' | ')")
            dialogs = self.js("[...document.querySelectorAll('[role=dialog]')].map(d => d.innerText).join(' || ')")
            import base64
            shot = self.call("Page.captureScreenshot")["data"]
            (self.tmp_path / "failed-click.png").write_bytes(base64.b64decode(shot))
            raise AssertionError(f"no button {text!r}; buttons: {buttons}; dialogs: {dialogs}") from None

    @staticmethod
    def _wait(condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = condition()
            except OSError:
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f} s")
            time.sleep(0.3)

    def close(self) -> None:
        self.ws.close()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


LAST_DIALOG = "[...document.querySelectorAll('[role=dialog]')].pop()"


def _runs(base: str) -> list[dict]:
    query = "{ runsOrError { ... on Runs { results { runId status jobName tags { key value } } } } }"
    return _graphql(base, query)["data"]["runsOrError"]["results"]


def test_materialize_in_the_ui_compacts_up_to_the_log_end(dagster_dev, tmp_path):
    chromium = _chromium()
    _graphql(dagster_dev, "mutation { setNuxSeen }")
    # The daemon's compaction_sensor adds the partition and reports wal_segments (not compacted: under thresholds).
    Browser._wait(lambda: _graphql(dagster_dev, """{ assetNodeOrError(assetKey: {path: ["wal_segments"]}) {
        ... on AssetNode { partitionKeys } } }""")["data"]["assetNodeOrError"]["partitionKeys"], 120,
                  "partition from compaction_sensor")
    browser = Browser(chromium, tmp_path)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=dagster_dev + "/assets/iceberg_snapshots")
        browser.click("Materialize")
        browser.click("Confirm", within=LAST_DIALOG)
        # The launch dialog: every partition (the one there is).
        browser.click("All", within=LAST_DIALOG)
        browser.click("Launch", within=LAST_DIALOG)
        run = Browser._wait(lambda: [r for r in _runs(dagster_dev) if r["status"] in ("SUCCESS", "FAILURE")
                                     and any(t["key"] == "dagster/partition" for t in r["tags"])],
                            180, "finished run of the partition")[0]
    finally:
        browser.close()
    assert run["status"] == "SUCCESS", run
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags.get("dagster/partition") == f"{TOPIC}-0" and tags.get("dray/end_offset") == "100", run
    settings = lake_settings(tmp_path / "data")
    state = asyncio.run(log_state(settings, TOPIC, 0))
    assert state.watermark == state.committed == state.log_end == 100
    # The graph tells the same: the partition of iceberg_snapshots (the asset materialized) and of wal_segments (by
    # the sensor's reports) are materialized.
    for asset in ("wal_segments", "iceberg_snapshots"):
        statuses = _graphql(dagster_dev, f"""{{ assetNodeOrError(assetKey: {{path: ["{asset}"]}}) {{
            ... on AssetNode {{ assetPartitionStatuses {{ ... on DefaultPartitionStatuses {{
                materializedPartitions failedPartitions }} }} }} }} }}""")
        found = statuses["data"]["assetNodeOrError"]["assetPartitionStatuses"]
        assert found == {"materializedPartitions": [f"{TOPIC}-0"], "failedPartitions": []}, (asset, found)
