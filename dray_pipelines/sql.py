"""DuckDB over the topic tables: each topic's Iceberg table is a view named after the topic.

Extensions load offline from the duckdb-extension-* packages (no download at run time): avro and iceberg, and
httpfs when the warehouse is on S3. Each view reads the table's current metadata file, as the catalog names it.
Column names `offset`, `partition`, `timestamp`, `key` and `value` are SQL keywords in places: quote them
("offset") when DuckDB asks.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from urllib.parse import urlparse

import duckdb

from dray_broker.config import LakeSettings
from dray_pipelines.lake import open_lake
from dray_pipelines.tail import TopicSnapshot, read_topics


def _extension_path(name: str) -> str:
    module = importlib.import_module(f"duckdb_extension_{name}")
    found = sorted(Path(module.__file__).parent.glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension"))
    if not found:
        found = sorted(Path(module.__file__).parent.glob(f"extensions/*/{name}.duckdb_extension"))
    if not found:
        raise RuntimeError(f"duckdb-extension-{name} has no extension for DuckDB {duckdb.__version__}")
    return str(found[-1])


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def connect(settings: LakeSettings, topics: list[str] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per topic (all topics, or the given ones): every record a consumer reading
    from the log start would get now, from the topic's Iceberg table and the log above it (dray_pipelines.tail).
    Raises NoDrayData when the settings point at no Dray stores."""
    snapshots = asyncio.run(_read(settings, topics))
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for ext in ("avro", "iceberg"):
        con.execute(f"LOAD {_literal(_extension_path(ext))}")
    if urlparse(settings.warehouse_url).scheme in ("s3", "s3a"):
        con.execute(f"LOAD {_literal(_extension_path('httpfs'))}")
        _s3_secret(con, settings)
    for i, snap in enumerate(snapshots):
        con.register(f"_dray_tail_{i}", snap.tail)
        parts = [f"SELECT * FROM _dray_tail_{i}"]
        if snap.metadata_location is not None:
            parts.insert(0, f"SELECT * FROM iceberg_scan({_literal(snap.metadata_location)})"
                            + _above_log_start(snap.log_start))
        body = " UNION ALL BY NAME ".join(parts)
        # Control records (transaction markers) are offsets of the log but no records a consumer gets.
        con.execute(f"CREATE VIEW {quote(snap.topic.name)} AS SELECT * FROM ({body}) WHERE attributes & 32 = 0")
    return con


async def _read(settings: LakeSettings, topics: list[str] | None) -> list[TopicSnapshot]:
    async with open_lake(settings) as lake:
        return await read_topics(lake, topics)


def _above_log_start(log_start: dict[int, int]) -> str:
    """A WHERE clause leaving out offsets below each partition's log start (none when every start is 0)."""
    moved = {p: s for p, s in log_start.items() if s > 0}
    if not moved:
        return ""
    cases = " ".join(f"WHEN {p} THEN {s}" for p, s in sorted(moved.items()))
    return f' WHERE "offset" >= CASE "partition" {cases} ELSE 0 END'


def _s3_secret(con: duckdb.DuckDBPyConnection, settings: LakeSettings) -> None:
    q = settings.s3_options()
    parts = ["TYPE s3"]
    endpoint = q.get("endpoint")
    if endpoint:
        parsed = urlparse(endpoint)
        parts.append(f"ENDPOINT {_literal(parsed.netloc or parsed.path)}")
        parts.append("URL_STYLE 'path'")
        parts.append(f"USE_SSL {'true' if parsed.scheme == 'https' else 'false'}")
    if q.get("access_key_id"):
        parts.append(f"KEY_ID {_literal(q['access_key_id'])}")
        parts.append(f"SECRET {_literal(q.get('secret_access_key', ''))}")
    else:
        parts.append("PROVIDER credential_chain")
    parts.append(f"REGION {_literal(settings.fileio_properties().get('s3.region', 'us-east-1'))}")
    con.execute(f"CREATE OR REPLACE SECRET dray_s3 ({', '.join(parts)})")


def query(settings: LakeSettings, sql: str) -> tuple[list[str], list[tuple]]:
    con = connect(settings)
    try:
        rel = con.execute(sql)
        columns = [d[0] for d in rel.description] if rel.description else []
        return columns, rel.fetchall()
    finally:
        con.close()
