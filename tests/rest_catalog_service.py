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

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.services import (
    REPO,
    ServerHandle,
    ServiceError,
    _free_port,
    _http_status,
    _lock,
    _run_logged,
    _Server,
    _start,
    _tail,
    services_dir,
)

POM = REPO / "tests" / "rest_catalog" / "pom.xml"
MAIN_CLASS = "org.apache.iceberg.rest.RESTCatalogServer"
JVM_OPTIONS = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k"]


@dataclass(eq=False)
class RestCatalogService(ServerHandle):
    url: str  # "http://127.0.0.1:PORT"
    warehouse: str  # the file:// URI the catalog's tables live under
    _server: _Server = field(repr=False)


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and os.access(Path(home) / "bin" / "java", os.X_OK) else None
    java = java or shutil.which("java")
    if java is None:
        raise ServiceError(
            "Java (`java`, 11 or newer) is not installed or not on PATH; it runs the Iceberg REST catalog"
        )
    return java


def _cached_classpath(path: Path) -> str | None:
    try:
        classpath = path.read_text().strip()
    except OSError:
        return None
    jars = classpath.split(os.pathsep)
    if classpath and all(Path(jar).is_file() for jar in jars):  # ~/.m2 may have been cleaned since
        return classpath
    return None


def rest_catalog_classpath() -> str:
    """The server's classpath: cached per pom.xml hash, resolved with Maven (from Maven Central) when missing."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    cache = services_dir() / "rest-catalog" / digest
    out = cache / "classpath.txt"
    classpath = _cached_classpath(out)
    if classpath:
        return classpath
    with _lock("rest-catalog"):
        classpath = _cached_classpath(out)  # resolved by another process while we waited
        if classpath:
            return classpath
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError(
                "Maven (`mvn`) is not installed or not on PATH; it fetches the Iceberg REST catalog "
                f"server's jars from Maven Central once (see {POM})"
            )
        cache.mkdir(parents=True, exist_ok=True)
        log = cache / "maven.log"
        log.write_text("")
        tmp = out.with_name(out.name + ".tmp")
        argv = [mvn, "-q", "-B", "-f", str(POM), "dependency:build-classpath", f"-Dmdep.outputFile={tmp}"]
        code = _run_logged(argv, cwd=POM.parent, env=dict(os.environ), log=log)
        classpath = tmp.read_text().strip() if code == 0 and tmp.is_file() else ""
        if not classpath:
            raise ServiceError(
                f"Maven could not resolve the Iceberg REST catalog server's classpath (exit {code}); "
                f"the end of {log}:\n{_tail(log)}"
            )
        os.replace(tmp, out)
        return classpath


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
    java = _java()
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
