"""The Dagster UI loads the code location: `dagster dev -w dagster_workspace.yaml` serves it, and headless Chromium
renders the asset graph with the three assets and the lineage wal_segments -> parquet_files -> iceberg_snapshots.

Needs Chromium (Debian package `chromium`): without it the test fails, it does not skip."""

from __future__ import annotations

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


@pytest.fixture
def dagster_dev(tmp_path):
    port = free_port()
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "DRAY_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(ROOT)}
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
