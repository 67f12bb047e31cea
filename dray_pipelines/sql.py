"""DuckDB over the topics: each topic is a view named after it, holding every record a consumer would read now (the
topic's Iceberg table at a pinned snapshot plus the log above it: dray_pipelines.tail).

Extensions load offline from the duckdb-extension-* packages (no download at run time): avro and iceberg, and
httpfs when the warehouse is on S3. `key` and `value` are BLOBs (decode(value) reads UTF-8 text); `offset` is a
keyword: quote it ("offset"). A compacted topic's view holds the cleaned log (latest record per key below the clean
point): its comment says so, and `dray sql` prints it on stderr for the topics a query names.

duckdb_script() is the same for DuckDB outside Dray: a script with one view per topic table, reading the snapshot
current when it is made (plain DuckDB cannot read the uncompacted log).
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from urllib.parse import urlparse

import duckdb

from dray_broker.config import LakeSettings
from dray_pipelines.lake import open_lake
from dray_pipelines.tail import TopicSnapshot, read_topics, topic_table

CONTENTS_PROPERTY = "dray.contents"  # table property: what the table holds, when not the whole log
COMPACTED_NOTE = ("a compacted topic (cleanup.policy compact): below each partition's last clean point only the "
                  "latest record per key (tombstones until delete.retention.ms), every record above it")


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
        if snap.topic.compacted:
            con.execute(f"COMMENT ON VIEW {quote(snap.topic.name)} IS {_literal(COMPACTED_NOTE)}")
    return con


def notes(con: duckdb.DuckDBPyConnection, query: str) -> list[str]:
    """What the topics a query names hold, where that is not every record ever written (compacted topics)."""
    rows = con.execute("SELECT view_name, comment FROM duckdb_views() WHERE comment IS NOT NULL AND NOT internal")
    return [f"{name}: {comment}" for name, comment in rows.fetchall() if name in query]


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
    con.execute(_s3_secret_sql(settings))


def _s3_secret_sql(settings: LakeSettings) -> str:
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
    return f"CREATE OR REPLACE SECRET dray_s3 ({', '.join(parts)});"


def duckdb_script(settings: LakeSettings) -> str:
    """A DuckDB script (for the duckdb CLI, or any DuckDB) with one view per topic table, at each table's current
    snapshot."""
    tables = asyncio.run(_current_tables(settings))
    s3 = urlparse(settings.warehouse_url).scheme in ("s3", "s3a")
    lines = [
        f"-- The Dray topic tables of catalog {settings.catalog_url}, namespace {settings.namespace}.",
        "-- Each view reads its table's current Iceberg snapshot: the records compacted so far (`dray sql` also reads",
        "-- the log above it). Print this script again after compaction to see newer snapshots.",
        "INSTALL avro; LOAD avro;",
        "INSTALL iceberg; LOAD iceberg;",
    ]
    if s3:
        lines += ["INSTALL httpfs; LOAD httpfs;", _s3_secret_sql(settings)]
    for topic, location in tables:
        lines.append(f"CREATE OR REPLACE VIEW {quote(topic)} AS SELECT * FROM iceberg_scan({_literal(location)});")
    if not tables:
        lines.append("-- (no topic has compacted data yet: run `dray compact --all`, or wait for the daemon)")
    example = quote(tables[0][0]) if tables else '"orders"'
    lines += [
        "-- key and value are BLOBs: decode() reads them as UTF-8 text ('replace': bytes that are not UTF-8 show as ?).",
        "-- offset is a keyword: quote it.",
        """-- SELECT partition, "offset", timestamp, decode(key, 'replace') AS key, decode(value, 'replace') AS value""",
        f"--   FROM {example}",
        '--   ORDER BY partition, "offset" LIMIT 10;',
    ]
    return "\n".join(lines) + "\n"


async def _current_tables(settings: LakeSettings) -> list[tuple[str, str]]:
    """(topic, metadata file of its table's current snapshot) of each topic whose table has data."""
    async with open_lake(settings) as lake:
        out = []
        for topic in await lake.topics():
            table = await asyncio.to_thread(topic_table, lake, topic)
            if table is not None and table.current_snapshot() is not None:
                out.append((topic.name, table.metadata_location))
        return out


def query(settings: LakeSettings, sql: str) -> tuple[list[str], list[tuple]]:
    con = connect(settings)
    try:
        rel = con.execute(sql)
        columns = [d[0] for d in rel.description] if rel.description else []
        return columns, rel.fetchall()
    finally:
        con.close()
