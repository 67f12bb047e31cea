"""A metadata store and an object store of different clusters are never used together: a fresh metadata store on a
bucket that holds another cluster's WAL would serve none of it, and orphan GC would delete all of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.brokers import BrokerProcess
from tests.integration.clients import create_topic, expected_counts, make_records, produce, read_back

ROOT = Path(__file__).resolve().parents[2]


def _dray(*args: str, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DRAY_", "DAGSTER_HOME"))}
    return subprocess.run([sys.executable, "-m", "dray_broker.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**clean, **env})


def _wal(objects: Path) -> list[str]:
    return sorted(p.name for p in (objects / "wal").rglob("*") if p.is_file())


def test_stores_of_two_clusters_are_never_paired(tmp_path):
    objects = tmp_path / "objects"
    ours = BrokerProcess(tmp_path / "ours", metadata=f"sqlite:///{tmp_path}/ours.db",
                         object_store=f"file://{objects}").start()
    try:
        create_topic(ours.bootstrap, "kept", 2)
        acked = produce("confluent", ours.bootstrap, "kept", make_records(500, 2, seed=1))
    finally:
        ours.stop()
    wal = _wal(objects)
    assert wal

    # A broker with a fresh metadata store on that object store refuses to start, saying why.
    stranger = BrokerProcess(tmp_path / "stranger", metadata=f"sqlite:///{tmp_path}/stranger.db",
                             object_store=f"file://{objects}")
    with pytest.raises(RuntimeError, match="the object store belongs to cluster .* but the metadata store to "
                                           "cluster"):
        stranger.start()
    # So do the pipelines, before any GC: with every WAL object an "orphan" past its TTL, nothing is deleted.
    done = _dray("compact", "--all", "--data-dir", str(tmp_path / "stranger"), "--metadata",
                 f"sqlite:///{tmp_path}/empty.db", "--object-store", f"file://{objects}", "--grace-ms", "0",
                 env={"DRAY_ORPHAN_TTL_MS": "0"})
    assert done.returncode == 1 and done.stderr.startswith("dray compact: the object store belongs to cluster"), \
        done.stdout + done.stderr
    assert "metadata store to no cluster" in done.stderr and "Traceback" not in done.stderr
    assert _wal(objects) == wal

    # The stores of one cluster still work together: everything acked is read back.
    ours.start()
    try:
        read_back("confluent", ours.bootstrap, "kept", acked, counts=expected_counts(acked, 2))
    finally:
        ours.stop()
