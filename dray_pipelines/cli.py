"""`dray compact` and `dray sql`, registered through the `dray.commands` entry point group."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import os
import sys

from dray_broker.cluster_identity import ClusterMismatchError
from dray_broker.config import ConfigError, DagsterSettings, LakeSettings, StorageSettings, add_flags
from dray_broker.tools.output import Progress
from dray_pipelines.services import ui_address

STORAGE_FIELDS = [name for name in StorageSettings.model_fields if name != "config"]


def _settings(args, **extra) -> LakeSettings:
    try:
        return LakeSettings.load({**vars(args), **extra})
    except ConfigError as e:
        print(f"dray: {e}", file=sys.stderr)
        sys.exit(2)


# Settings of the pipeline that `dray up` takes as flags and passes to the Dagster daemon (through DRAY_*
# variables): all but the storage settings, which are the broker's own flags.
UP_FLAGS = [name for name in LakeSettings.model_fields if name not in StorageSettings.model_fields]


def _ui_listener(args) -> list[tuple[str, str, str]]:
    """The Dagster UI's address, checked by `dray up` before it starts anything (see dray_broker.cli)."""
    host, port = ui_address(vars(args))
    return [(f"{host}:{port}", "the Dagster UI", "--dagster-port {port}")]


def _add_up_flags(up: argparse.ArgumentParser) -> None:
    g = up.add_argument_group("the Dagster pipelines (compaction, garbage collection, retention)")
    add_flags(g, DagsterSettings, config=False)
    up.set_defaults(service_listeners=[*(up.get_default("service_listeners") or []), _ui_listener])
    add_flags(g, LakeSettings, UP_FLAGS, config=False)


def register(subparsers) -> None:
    if "up" in subparsers.choices:
        _add_up_flags(subparsers.choices["up"])
    p = subparsers.add_parser(
        "compact", help="run pending compaction, index swaps, retention and GC once, in process",
        description="Evaluate the pipeline's sensors once and execute the runs they request, in this process, "
                    "through the same Dagster definitions the daemon uses. Thresholds come from DRAY_* variables "
                    "or the --config file.")
    add_flags(p, LakeSettings, STORAGE_FIELDS)
    p.add_argument("--all", action="store_true",
                   help="ignore the size/age thresholds: compact everything committed so far")
    p.add_argument("--grace-ms", default=None, metavar="MS",
                   help="WAL GC grace period (default: the wal_gc_grace_ms setting, env DRAY_WAL_GC_GRACE_MS)")
    p.add_argument("--maintenance", action="store_true",
                   help="also expire old Iceberg snapshots and delete unreferenced data files")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures")
    p.set_defaults(func=cmd_compact)

    p = subparsers.add_parser(
        "sql", help="query the topic tables with DuckDB",
        description="Run SQL with DuckDB over the topics: each topic is a view by its name holding every record "
                    "consumers can read (its Iceberg table plus the log not compacted yet), e.g. "
                    "dray sql 'SELECT partition, count(*) FROM orders GROUP BY ALL'. key and value are BLOBs: "
                    "decode(value) reads text. Quote \"offset\".")
    add_flags(p, LakeSettings, STORAGE_FIELDS)
    p.add_argument("query", nargs="?", help="the SQL to run (several statements: each result is printed)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    p.add_argument("--script", action="store_true",
                   help="print a DuckDB script with a view per topic table, for DuckDB outside Dray (e.g. "
                        "dray sql --script > dray.sql; duckdb -init dray.sql)")
    p.set_defaults(func=cmd_sql)


def _instance(settings: LakeSettings):
    """The Dagster instance the daemon of these stores uses, so that `dray compact`'s runs are its runs (in the UI,
    with the same run keys, tags and asset materializations): $DAGSTER_HOME's when set, else the one `dray up` keeps
    in <data-dir>/dagster, made now if `dray up` has not run yet, when the data dir holds the embedded metadata store
    (it exists: it was checked). None otherwise (stores elsewhere and no DAGSTER_HOME: an ephemeral instance)."""
    from dagster import DagsterInstance

    from dray_pipelines.services import prepare_home

    if os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.get()
    home = settings.data_dir / "dagster"
    if not (home / "dagster.yaml").exists():
        if settings.metadata is not None:
            return None
        prepare_home(home)
    return DagsterInstance.from_config(str(home.resolve()))


def cmd_compact(args) -> int:
    settings = _settings(args, wal_gc_grace_ms=args.grace_ms)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dagster").setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")
    from dray_pipelines.lake import NoDrayData, check_dray_data
    from dray_pipelines.runner import Runner

    try:
        check_dray_data(settings)
    except (NoDrayData, ClusterMismatchError) as e:
        print(f"dray compact: {e}", file=sys.stderr)
        return 1
    with Progress("compacting", unit="runs", enabled=None if not args.quiet else False) as bar:
        def report(line: str) -> None:
            bar.advance(1)
            if not args.quiet:
                print(line, flush=True)

        runner = Runner(settings, instance=_instance(settings), report=report, log_level="ERROR",
                        progress=bar.describe)
        try:
            result = runner.run_all(force=args.all, maintenance=args.maintenance)
        except ClusterMismatchError as e:
            print(f"dray compact: {e}", file=sys.stderr)
            return 1
    if not args.quiet:
        print(f"{len(result.runs)} run{'s' if len(result.runs) != 1 else ''}, {len(result.failed)} failed"
              if result.runs else "nothing to do")
    for failed in result.failed:
        print(f"dray compact: {failed.job} {failed.run_key or ''} failed: {failed.error}", file=sys.stderr)
    return 1 if result.failed else 0


def _cell(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, list):
        return [_cell(v) for v in value]
    if isinstance(value, dict):
        return {k: _cell(v) for k, v in value.items()}
    return value


def cmd_sql(args) -> int:
    import duckdb

    from dray_pipelines.lake import NoDrayData
    from dray_pipelines.sql import connect, notes

    settings = _settings(args)
    if args.script:
        from dray_pipelines.sql import duckdb_script

        try:
            print(duckdb_script(settings), end="")
        except (NoDrayData, ClusterMismatchError) as e:
            print(f"dray sql: {e}", file=sys.stderr)
            return 1
        return 0
    if not args.query:
        print("dray sql: give the SQL to run (or --script)", file=sys.stderr)
        return 2
    try:
        con = connect(settings)
    except (NoDrayData, ClusterMismatchError) as e:
        print(f"dray sql: {e}", file=sys.stderr)
        return 1
    try:
        for note in notes(con, args.query):
            print(f"dray sql: note: {note}", file=sys.stderr)
        for statement in con.extract_statements(args.query):
            if args.format == "table":
                rel = con.sql(statement.query)
                if rel is not None:  # a statement with a result (not CREATE, SET...)
                    rel.show(max_width=200, max_rows=10_000)
            else:
                _print_rows(con.execute(statement.query), args.format)
            sys.stdout.flush()
        return 0
    except duckdb.Error as e:
        print(f"dray sql: {e}", file=sys.stderr)
        return 1
    finally:
        con.close()


def _print_rows(cur, fmt: str) -> None:
    """One statement's result as CSV (with its header) or JSON lines; nothing for a statement without one."""
    if not cur.description:
        return
    columns = [d[0] for d in cur.description]
    rows = cur.fetchall()
    if fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(columns)
        for row in rows:
            w.writerow([_cell(v) for v in row])
    else:
        for row in rows:
            print(json.dumps({c: _cell(v) for c, v in zip(columns, row)}))
