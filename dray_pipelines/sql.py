"""DuckDB over the topic tables: each topic's Iceberg table is a view named after the topic.

Extensions load offline from the duckdb-extension-* packages (no download at run time): avro and iceberg, and
httpfs when the warehouse is on S3. Each view reads the table's current metadata file, as the catalog names it.
A compacted topic's table holds the cleaned log (latest record per key below the clean point): its view's comment
says so, and `dray sql` prints it on stderr for the tables a query names.
Column names `offset`, `partition`, `timestamp`, `key` and `value` are SQL keywords in places: quote them
("offset") when DuckDB asks.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from urllib.parse import urlparse

import duckdb

from dray_broker.config import LakeSettings
from dray_pipelines.tables import open_catalog

CONTENTS_PROPERTY = "dray.contents"  # table property: what the table holds, when not the whole log


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
    """A DuckDB connection with a view per topic table (all tables of the namespace, or the given topics)."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for ext in ("avro", "iceberg"):
        con.execute(f"LOAD {_literal(_extension_path(ext))}")
    if urlparse(settings.warehouse_url).scheme in ("s3", "s3a"):
        con.execute(f"LOAD {_literal(_extension_path('httpfs'))}")
        _s3_secret(con, settings)
    catalog = open_catalog(settings)
    namespace = settings.namespace
    try:
        identifiers = catalog.list_tables(namespace)
    except Exception:  # noqa: BLE001 - no namespace yet: no tables
        identifiers = []
    for identifier in identifiers:
        name = identifier[-1]
        if topics is not None and name not in topics:
            continue
        table = catalog.load_table((namespace, name))
        if table.current_snapshot() is None:  # nothing committed yet: an empty relation with the table's columns
            from pyiceberg.io.pyarrow import schema_to_pyarrow

            con.register(f"_empty_{len(identifiers)}_{abs(hash(name))}", schema_to_pyarrow(table.schema()).empty_table())
            con.execute(f"CREATE VIEW {quote(name)} AS SELECT * FROM \"_empty_{len(identifiers)}_{abs(hash(name))}\"")
            continue
        con.execute(f"CREATE VIEW {quote(name)} AS SELECT * FROM iceberg_scan({_literal(table.metadata_location)})")
        contents = table.properties.get(CONTENTS_PROPERTY)
        if contents:  # a compacted topic's table: the cleaned log (dray_pipelines/cleaning.py)
            con.execute(f"COMMENT ON VIEW {quote(name)} IS {_literal(contents)}")
    return con


def notes(con: duckdb.DuckDBPyConnection, query: str) -> list[str]:
    """What the tables a query names hold, where that is not every record ever written (compacted topics)."""
    rows = con.execute("SELECT view_name, comment FROM duckdb_views() WHERE comment IS NOT NULL AND NOT internal")
    return [f"{name}: {comment}" for name, comment in rows.fetchall() if name in query]


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
