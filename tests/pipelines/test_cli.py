"""`dray compact` and `dray sql` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.pipelines.conftest import lake_settings
from tests.pipelines.helpers import log_state, read_log, write_log

ROOT = Path(__file__).resolve().parents[2]


def dray(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DRAY_", "DAGSTER_HOME"))}
    return subprocess.run([sys.executable, "-m", "dray_broker.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**clean, **(env or {})})


def test_compact_and_sql(tmp_path):
    data = tmp_path / "data"
    settings = lake_settings(data)
    asyncio.run(write_log(settings, "cli.events", 2, batches=5, records_per_batch=20))
    expected = asyncio.run(read_log(settings, "cli.events", 0))

    done = dray("compact", "--data-dir", str(data))  # default thresholds (64 MiB or 10 min): nothing is due
    assert done.returncode == 0, done.stderr
    assert asyncio.run(log_state(settings, "cli.events", 0)).watermark == 0

    done = dray("compact", "--all", "--data-dir", str(data), "--grace-ms", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compact:cli.events-0:0-100" in done.stdout and "FAILED" not in done.stdout
    for p in (0, 1):
        state = asyncio.run(log_state(settings, "cli.events", p))
        assert state.watermark == state.log_end == 100
    assert asyncio.run(read_log(settings, "cli.events", 0)) == expected
    assert not list((data / "objects" / "wal").iterdir())  # grace 0: the WAL went in the same pass

    done = dray("sql", "--data-dir", str(data), '''SELECT partition, count(*) AS n, max("offset") AS last
                                                  FROM "cli.events" GROUP BY ALL ORDER BY 1''')
    assert done.returncode == 0, done.stderr
    assert "partition" in done.stdout and "100" in done.stdout and "99" in done.stdout
    done = dray("sql", "--data-dir", str(data), "--format", "json",
                'SELECT "offset", key FROM "cli.events" WHERE partition = 0 ORDER BY "offset" LIMIT 3')
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["offset"] for r in rows] == [0, 1, 2]
    assert rows[0]["key"] == (expected[0][2].decode("utf-8", "backslashreplace") if expected[0][2] else None)
    done = dray("sql", "--data-dir", str(data), "SELECT * FROM no_such_topic")
    assert done.returncode == 1 and "no_such_topic" in done.stderr
