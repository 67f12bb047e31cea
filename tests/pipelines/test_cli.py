"""`dray compact` and `dray sql` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
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

    # DuckDB outside Dray: the printed script makes the views (its INSTALLs need the network: the extensions load
    # here from the offline packages instead), and its example query runs.
    done = dray("sql", "--data-dir", str(data), "--script")
    assert done.returncode == 0, done.stderr
    import duckdb

    from dray_pipelines.sql import _extension_path

    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    for ext in ("avro", "iceberg"):
        con.execute(f"LOAD '{_extension_path(ext)}'")
    con.execute("\n".join(line.replace("INSTALL avro;", "").replace("INSTALL iceberg;", "")
                           for line in done.stdout.splitlines()))
    assert con.execute('SELECT count(*) FROM "cli.events"').fetchone() == (200,)
    example = "\n".join(line.removeprefix("-- ") for line in done.stdout.splitlines()[-3:])
    rows = con.execute(example).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(0, n) for n in range(10)]
    assert [r[3] for r in rows] == [e[2].decode() if e[2] is not None else None for e in expected[:10]]  # text keys


def test_compact_shows_progress_on_a_terminal_only(tmp_path):
    data = tmp_path / "data"
    asyncio.run(write_log(lake_settings(data), "cli.progress", 2, batches=3, records_per_batch=10))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DRAY_", "DAGSTER_HOME"))}
    # stderr on a pseudo-terminal: a spinner says what runs (and is wiped); stdout keeps the report lines.
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dray_broker.cli", "compact", "--all", "--data-dir", str(data)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, env={**clean, "COLUMNS": "200"})
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(master)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    lines = out.decode().splitlines()
    assert [line.split()[:3] for line in lines[:2]] == [["ok", "compaction", "compact:cli.progress-0:0-30"],
                                                        ["ok", "compaction", "compact:cli.progress-1:0-30"]]
    assert lines[-1] == f"{len(lines) - 1} runs, 0 failed"
    # The first frame, and the last (what ran last, and the count of runs), are always drawn.
    assert b"compacting 0 runs" in drawn and f"evaluating orphan_gc_sensor {len(lines) - 1} runs".encode() in drawn
    # Without a terminal (as above for stdout, here for both): no progress drawn anywhere.
    again = dray("compact", "--all", "--data-dir", str(data))
    assert again.returncode == 0 and again.stderr == "" and again.stdout == "nothing to do\n"


def test_compact_records_its_runs_in_the_instance_of_dray_up(tmp_path):
    """`dray compact`'s runs go to the Dagster instance `dray up` keeps in <data-dir>/dagster (made if `dray up` has
    not run yet): they show in its UI, with their materializations."""
    from dagster import AssetKey, DagsterInstance

    data = tmp_path / "data"
    asyncio.run(write_log(lake_settings(data), "cli.seen", 1, batches=2, records_per_batch=10))
    done = dray("compact", "--all", "--data-dir", str(data))
    assert done.returncode == 0 and "compact:cli.seen-0:0-20" in done.stdout, done.stdout + done.stderr
    instance = DagsterInstance.from_config(str(data / "dagster"))
    try:
        runs = instance.get_runs()
        assert [(r.job_name, r.status.value, r.tags.get("dagster/run_key")) for r in runs
                if r.job_name == "compaction"] == [("compaction", "SUCCESS", "compact:cli.seen-0:0-20")]
        for asset in ("wal_segments", "parquet_files", "iceberg_snapshots"):  # the partition is not Missing
            assert instance.get_materialized_partitions(AssetKey(asset)) == {"cli.seen-0"}, asset
        assert "QueuedRunCoordinator" in (data / "dagster" / "dagster.yaml").read_text()  # as `dray up` writes it
    finally:
        instance.dispose()


def test_commands_find_the_stores_as_the_broker_does_and_create_nothing(tmp_path):
    """Run from a folder with no Dray data, `dray sql` and `dray compact` refuse in one line that says where they
    looked, and leave no data directory behind; pointed at the data (flag or DRAY_DATA_DIR) they find it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DRAY_", "DAGSTER_HOME"))}

    def dray_in(folder, *args, env=None):
        return subprocess.run([sys.executable, "-m", "dray_broker.cli", *args], cwd=folder, capture_output=True,
                              text=True, timeout=300, env={**clean, "PYTHONPATH": str(ROOT), **(env or {})})

    def made(folder):
        # .hypothesis: kio imports hypothesis when it is installed (a test dependency), which makes its folder
        return sorted(p.name for p in folder.iterdir() if p.name != ".hypothesis")

    for args in (["sql", "SELECT 1"], ["compact", "--all"]):
        done = dray_in(elsewhere, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.count("\n") == 1 and "no Dray data at" in done.stderr
        assert str(elsewhere / "dray-data" / "meta.db") in done.stderr
        assert made(elsewhere) == []  # no ./dray-data made as a side effect

    data = tmp_path / "data"
    asyncio.run(write_log(lake_settings(data), "found", 1, batches=2, records_per_batch=5))
    done = dray_in(elsewhere, "sql", "--format", "csv", 'SELECT count(*) AS n FROM found; SELECT 7 AS "seven"',
                   env={"DRAY_DATA_DIR": str(data)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["n", "10", "seven", "7"]  # each statement's result, in order
    assert made(elsewhere) == []
