"""A real Apache Iceberg REST catalog server on loopback, for tests.

Dray must work against the REST catalog protocol as real servers speak it, not only against pyiceberg's own
catalogs. Apache Iceberg's reference server, ``org.apache.iceberg.rest.RESTCatalogServer`` (iceberg-open-api's
test fixtures: the program inside the apache/iceberg-rest-fixture image), is published on Maven Central, so it
runs here without Docker: ``tests/rest_catalog/pom.xml`` names its run-time jars, Maven resolves them once, and
the resulting classpath is cached in ``$DRAY_SERVICES_DIR/rest-catalog/<hash of pom.xml>/classpath.txt``
(default ``~/.cache/dray/services``); later starts run ``java`` only (the jars stay in ``~/.m2``).

The backend is a JdbcCatalog on a SQLite file in the server's temporary directory; tables live in the given
local warehouse (HadoopFileIO). Hadoop's default local file system writes a ``.name.crc`` file next to every
file the server writes (the metadata.json files); a core-site.xml on the classpath selects RawLocalFileSystem, so the warehouse holds only Iceberg's files, as with an object store. Note that the
server reports locations as ``file:/path`` (one slash). Needs Java 11+ and, for the first start, Maven.

    catalog = start_rest_catalog("file:///tmp/wh")   # catalog.url == "http://127.0.0.1:PORT"
    pyiceberg.catalog.load_catalog("c", type="rest", uri=catalog.url, warehouse="file:///tmp/wh")
    catalog.stop()
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tests.services import (
    REPO,
    ServerHandle,
    ServiceError,
    _free_port,
    _http_status,
    _Server,
    _start,
    java_program,
    maven_classpath,
)

POM = REPO / "tests" / "rest_catalog" / "pom.xml"
MAIN_CLASS = "org.apache.iceberg.rest.RESTCatalogServer"
JVM_OPTIONS = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k"]


@dataclass(eq=False)
class RestCatalogService(ServerHandle):
    url: str  # "http://127.0.0.1:PORT"
    warehouse: str  # the file:// URI the catalog's tables live under
    _server: _Server = field(repr=False)


def rest_catalog_classpath() -> str:
    """The server's classpath: cached per pom.xml hash, resolved with Maven (from Maven Central) when missing."""
    return maven_classpath(POM, "rest-catalog")


_CORE_SITE = """<?xml version="1.0"?>
<configuration>
  <property><name>fs.file.impl</name><value>org.apache.hadoop.fs.RawLocalFileSystem</value></property>
</configuration>
"""


def start_rest_catalog(warehouse: str) -> RestCatalogService:
    """Starts Iceberg's REST catalog server on a free loopback port; ``warehouse`` is a file:// URI (or a path)."""
    if "://" not in warehouse:
        warehouse = Path(warehouse).resolve().as_uri()
    if not warehouse.startswith("file:"):
        raise ServiceError(f"the REST catalog server here only has a local FileIO; got warehouse {warehouse!r}")
    java = java_program()
    classpath = rest_catalog_classpath()

    def command(workdir: Path):
        port = _free_port()
        # RCKUtils maps CATALOG_* variables to catalog properties: `__` -> `-`, `_` -> `.`, lower case.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
        env.update(
            CATALOG_URI=f"jdbc:sqlite:file:{workdir / 'catalog.db'}",
            CATALOG_WAREHOUSE=warehouse,
            CATALOG_REST_PORT=str(port),  # rest.port; Jetty binds all interfaces, the URL uses loopback
        )
        (workdir / "conf").mkdir()
        (workdir / "conf" / "core-site.xml").write_text(_CORE_SITE)  # read by `new Configuration()`
        cp = f"{workdir / 'conf'}{os.pathsep}{classpath}"
        argv = [java, *JVM_OPTIONS, f"-Djava.io.tmpdir={workdir}", "-cp", cp, MAIN_CLASS]
        return argv, env, {"port": port}

    def ready(info: dict) -> bool:
        return _http_status(f"http://127.0.0.1:{info['port']}/v1/config") == 200

    server, info = _start("iceberg-rest", command, ready)
    return RestCatalogService(url=f"http://127.0.0.1:{info['port']}", warehouse=warehouse, _server=server)
