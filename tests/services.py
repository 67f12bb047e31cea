"""Real test services on loopback: an Oxia server, a MinIO (S3) server and a PostgreSQL server.

Binaries are built with the Go toolchain once and cached in ``$DRAY_SERVICES_DIR`` (default
``~/.cache/dray/services``) as ``oxia/<version>/oxia`` and ``minio/<version>/minio``; a binary is rebuilt only
when it is missing (a new pin gets a new path). Each started server gets its own temporary directory (data and
a log file), free loopback ports, and its own process group, killed by ``stop()`` (and at interpreter exit).

Oxia: the binary is taken from ``$DRAY_OXIA_BIN`` (an Oxia v0.14.x server you installed), else from the cache,
else ``go install github.com/oxia-db/oxia/cmd@v0.14.4`` (machines whose Go module proxy serves it), else it is
built from the Oxia v0.14.4 source tree in ``$DRAY_OXIA_SOURCE`` or ``../shared/third_party/oxia-v0.14.4`` beside
this checkout (or beside the repository it was cloned from): the module proxy here refuses the Oxia modules
(403) but serves their dependencies. The source tree may be read-only: the build writes only into the cache.

PostgreSQL (for the Iceberg SQL catalog) comes from Debian's postgresql package, which ./dev test installs.

    handle = start_oxia()        # handle.address == "127.0.0.1:PORT"
    s3 = start_minio()           # s3.endpoint, s3.bucket, s3.url("some/prefix") -> "s3://bucket/some/prefix?..."
    pg = start_postgres()        # pg.url == "postgresql://dray@127.0.0.1:PORT/dray"
    ...
    handle.stop(); s3.stop()

Fault injection (bench/faults.py): ``handle.pause()`` / ``handle.resume()`` (SIGSTOP / SIGCONT),
``handle.crash()`` (SIGKILL) and ``handle.restart()`` (SIGKILL if running, then the same command on the same ports
and data).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent

OXIA_VERSION = "v0.14.4"
OXIA_PACKAGE = "github.com/oxia-db/oxia/cmd"

MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
MINIO_PACKAGE = "github.com/minio/minio"
MINIO_ACCESS_KEY = "minioadmin"
MINIO_SECRET_KEY = "minioadmin123"
MINIO_BUCKET = "dray-test"

START_TIMEOUT = 60.0  # seconds for a started server to become ready
BUILD_TIMEOUT = 3600.0  # seconds for one `go install` / `go build` (MinIO's first build takes minutes)


class ServiceError(RuntimeError):
    """A service binary could not be built, or a server did not start."""


# ------------------------------------------------------------------------------------------------ binaries


def services_dir() -> Path:
    return Path(os.environ.get("DRAY_SERVICES_DIR") or Path.home() / ".cache" / "dray" / "services").expanduser()


def oxia_binary_path() -> Path:
    return services_dir() / "oxia" / OXIA_VERSION / "oxia"


def minio_binary_path() -> Path:
    return services_dir() / "minio" / MINIO_VERSION / "minio"


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if go is None:
        raise ServiceError("the Go toolchain (`go`) is not installed or not on PATH; it builds the test servers")
    return go


def _go_env(gobin: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false")
    env.pop("GOBIN", None)
    if gobin is not None:
        env["GOBIN"] = str(gobin)
    return env


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Serialises builds of one binary across processes (two test sessions, pytest-xdist workers)."""
    services_dir().mkdir(parents=True, exist_ok=True)
    with open(services_dir() / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_logged(argv: list[str], *, cwd: Path | None, env: dict[str, str], log: Path) -> int:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}  (in {cwd or os.getcwd()})\n".encode())
        out.flush()
        try:
            return subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT,
            ).returncode
        except subprocess.TimeoutExpired:
            out.write(f"timed out after {BUILD_TIMEOUT:.0f} s\n".encode())
            return -1


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _install_binary(final: Path, build: Callable[[Path, Path], Path | None], name: str) -> Path:
    """Runs ``build(workdir, log) -> built binary or None`` unless ``final`` exists; moves the result there."""
    if final.exists():
        return final
    with _lock(name):
        if final.exists():  # built by another process while we waited
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        log = final.parent / "build.log"
        log.write_text("")
        work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=final.parent))
        try:
            built = build(work, log)
            if built is None or not built.exists():
                raise ServiceError(f"could not build {name}; the end of {log}:\n{_tail(log)}")
            tmp = final.with_name(final.name + ".tmp")
            shutil.move(str(built), tmp)
            tmp.chmod(0o755)
            os.replace(tmp, final)  # atomic: a binary at `final` is always complete
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


OXIA_SOURCE_DIR = f"shared/third_party/oxia-{OXIA_VERSION}"


def _origin_checkout() -> Path | None:
    """The repository this checkout was cloned from, when it is a local path (a CI clone of a working copy)."""
    try:
        url = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    url = url.removeprefix("file://")
    return Path(url) if url.startswith("/") and Path(url).is_dir() else None


def oxia_source_candidates() -> list[Path]:
    """Where an Oxia source tree is looked for, in order."""
    candidates = []
    if os.environ.get("DRAY_OXIA_SOURCE"):
        candidates.append(Path(os.environ["DRAY_OXIA_SOURCE"]).expanduser())
    candidates.append(REPO.parent / OXIA_SOURCE_DIR)
    origin = _origin_checkout()
    if origin is not None:
        candidates.append(origin.resolve().parent / OXIA_SOURCE_DIR)
    return candidates


def _build_oxia(work: Path, log: Path) -> Path | None:
    gobin = work / "gobin"
    if _run_logged([_go(), "install", f"{OXIA_PACKAGE}@{OXIA_VERSION}"], cwd=work, env=_go_env(gobin), log=log) == 0:
        return gobin / "cmd"
    sources = [p for p in oxia_source_candidates() if (p / "go.mod").is_file() and (p / "cmd").is_dir()]
    if not sources:
        with open(log, "a") as out:
            out.write(f"\nno Oxia server: `go install` failed (the Go module proxy refuses the Oxia modules here) "
                      f"and no Oxia {OXIA_VERSION} source tree was found in "
                      f"{', '.join(map(str, oxia_source_candidates()))}; set DRAY_OXIA_SOURCE to one or "
                      "DRAY_OXIA_BIN to a server binary\n")
        return None
    # The tree may be read-only (CI): the binary goes to the work directory, caches stay in Go's defaults (the
    # user's, writable) and the module cache is left writable so that it can be cleaned.
    env = _go_env()
    env["GOFLAGS"] += " -modcacherw"
    built = work / "oxia"
    if _run_logged([_go(), "build", "-o", str(built), "./cmd"], cwd=sources[0], env=env, log=log) == 0:
        return built
    return None


def _build_minio(work: Path, log: Path) -> Path | None:
    gobin = work / "gobin"
    argv = [_go(), "install", f"{MINIO_PACKAGE}@{MINIO_VERSION}"]
    if _run_logged(argv, cwd=work, env=_go_env(gobin), log=log) == 0:
        return gobin / "minio"
    return None


def ensure_oxia_binary() -> Path:
    """$DRAY_OXIA_BIN, or the cached Oxia binary, installed first if missing and the Go proxy serves it."""
    given = os.environ.get("DRAY_OXIA_BIN")
    if given:
        path = Path(given).expanduser()
        if not os.access(path, os.X_OK):
            raise ServiceError(f"DRAY_OXIA_BIN={given} is not an executable file")
        return path
    return _install_binary(oxia_binary_path(), _build_oxia, "oxia")


def ensure_minio_binary() -> Path:
    """The cached MinIO binary, built first if missing (several minutes the first time)."""
    return _install_binary(minio_binary_path(), _build_minio, "minio")


# ------------------------------------------------------------------------------------------------ processes


_running: set["_Server"] = set()
_running_lock = threading.Lock()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


try:  # loaded here, not in the forked child: importing there could deadlock on a lock held by another thread
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except Exception:  # noqa: BLE001 - not Linux/glibc: servers then outlive a killed test run
    _prctl = None


def _die_with_parent() -> None:  # runs in the child between fork and exec: own process group, dies with us
    os.setsid()
    if _prctl is not None:
        _prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


@dataclass(eq=False)
class _Server:
    name: str
    process: subprocess.Popen
    workdir: Path
    log_path: Path
    argv: list[str] = field(default_factory=list, repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    ready: Callable[[], bool] | None = field(default=None, repr=False)  # the readiness probe, for restart()
    _stopped: bool = field(default=False, repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def stop(self, *, keep_files: bool = False) -> None:
        """Kills the server's process group (TERM, then KILL after 10 s) and removes its directory."""
        if self._stopped:
            return
        self._stopped = True
        with _running_lock:
            _running.discard(self)
        pgid = self.process.pid
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)  # anything the server itself left in its group
        if not keep_files and not os.environ.get("DRAY_KEEP_SERVICE_DATA"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> _Server:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        # Only the main thread may ask for PDEATHSIG: it fires when the forking *thread* exits.
        main = threading.current_thread() is threading.main_thread()
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if main else None,
            start_new_session=not main,
        )
    server = _Server(name, process, workdir, log_path, argv, env)
    with _running_lock:
        _running.add(server)
    return server


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        servers = list(_running)
    for server in servers:
        server.stop()


def _start(
    name: str, command: Callable[[Path], tuple[list[str], dict[str, str], dict]], ready: Callable[[dict], bool]
) -> tuple[_Server, dict]:
    """Starts a server and waits until ``ready(info)``; retries with new ports if it dies at once (a port race)."""
    last_error = ""
    for _attempt in range(3):
        workdir = Path(tempfile.mkdtemp(prefix=f"dray-{name}-"))
        argv, env, info = command(workdir)
        server = _spawn(name, argv, env, workdir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not server.alive():
                break
            try:
                if ready(info):
                    server.ready = lambda: ready(info)  # for restart()
                    return server, info
            except Exception as e:  # noqa: BLE001 - not ready yet; keep the reason for the error message
                last_error = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
        exited = not server.alive()
        log = server.log_tail()
        server.stop(keep_files=True)
        reason = f"exited with code {server.process.returncode}" if exited else f"not ready after {START_TIMEOUT:.0f} s"
        message = f"{name} {reason} (last readiness error: {last_error or 'none'}); log {server.log_path}:\n{log}"
        print(message, file=sys.stderr)
        if not (exited and "address already in use" in log.lower()):
            raise ServiceError(message)
    raise ServiceError(message)


class ServerHandle:
    """What every started service offers: its log file, and stop() (kills it, removes its directory)."""

    _server: _Server

    @property
    def log_path(self) -> Path:
        return self._server.log_path

    def stop(self) -> None:
        self._server.stop()

    def pause(self) -> None:
        """SIGSTOP the server's process group: it stalls, connections stay open."""
        os.killpg(self._server.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self._server.process.pid, signal.SIGCONT)

    def crash(self) -> None:
        """SIGKILL the server's process group; its data stays for restart()."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._server.process.pid, signal.SIGKILL)
        self._server.process.wait()

    def restart(self) -> None:
        """Kill the server (SIGKILL: as a crash) if it runs and start it again with the same command, ports and
        data."""
        old = self._server
        self.crash()
        with _running_lock:
            _running.discard(old)
        server = _spawn(old.name, old.argv, old.env, old.workdir)
        server.ready = old.ready
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(Exception):
                if server.alive() and server.ready():
                    break
            if not server.alive() or time.monotonic() > deadline:
                server.stop(keep_files=True)
                raise ServiceError(f"{old.name} did not come back after a restart; log {server.log_path}:\n"
                                   f"{server.log_tail()}")
            time.sleep(0.2)
        self._server = server


# ------------------------------------------------------------------------------------------------ Java programs


def java_program() -> str:
    """The `java` to run Java servers with: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and os.access(Path(home) / "bin" / "java", os.X_OK) else None
    java = java or shutil.which("java")
    if java is None:
        raise ServiceError("Java (`java`, 11 or newer) is not installed or not on PATH")
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


def maven_classpath(pom: Path, name: str) -> str:
    """The run-time classpath of the jars ``pom`` names (a pom without sources), resolved once from Maven Central
    with ``mvn dependency:build-classpath`` and cached in ``$DRAY_SERVICES_DIR/<name>/<hash of pom>/classpath.txt``;
    later calls run no Maven (the jars stay in ~/.m2)."""
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    cache = services_dir() / name / digest
    out = cache / "classpath.txt"
    classpath = _cached_classpath(out)
    if classpath:
        return classpath
    with _lock(name):
        classpath = _cached_classpath(out)  # resolved by another process while we waited
        if classpath:
            return classpath
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError(f"Maven (`mvn`) is not installed or not on PATH; it fetches the jars {pom} names "
                               "from Maven Central once")
        cache.mkdir(parents=True, exist_ok=True)
        log = cache / "maven.log"
        log.write_text("")
        tmp = out.with_name(out.name + ".tmp")
        argv = [mvn, "-q", "-B", "-f", str(pom), "dependency:build-classpath", f"-Dmdep.outputFile={tmp}"]
        code = _run_logged(argv, cwd=pom.parent, env=dict(os.environ), log=log)
        classpath = tmp.read_text().strip() if code == 0 and tmp.is_file() else ""
        if not classpath:
            raise ServiceError(f"Maven could not resolve the classpath of {pom} (exit {code}); the end of {log}:\n"
                               f"{_tail(log)}")
        os.replace(tmp, out)
        return classpath


# ------------------------------------------------------------------------------------------------ Oxia


@dataclass(eq=False)
class OxiaService(ServerHandle):
    address: str  # "127.0.0.1:PORT", the public gRPC address
    metrics_address: str
    namespace: str
    _server: _Server = field(repr=False)


def _grpc_channel(address: str):
    import grpc

    return grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])


def oxia_probe(address: str, namespace: str = "default", timeout: float = 2.0) -> int:
    """Asks the server for its shard assignments, then reads a missing key from the first shard's leader.

    Returns the shard id; raises if the server does not answer or has no leader yet.
    """
    from oxia.internal.proto.io.streamnative.oxia import proto as pb

    with _grpc_channel(address) as channel:
        assignments = channel.unary_stream(
            "/io.streamnative.oxia.proto.OxiaClient/GetShardAssignments",
            request_serializer=pb.ShardAssignmentsRequest.SerializeToString,
            response_deserializer=pb.ShardAssignments.FromString,
        )(pb.ShardAssignmentsRequest(namespace=namespace), timeout=timeout)
        try:
            first = next(assignments)
        finally:
            assignments.cancel()
        shards = first.namespaces[namespace].assignments
        if not shards or not shards[0].leader:
            raise ServiceError(f"no shard leader yet: {first}")
        shard = shards[0].shard
        reads = channel.unary_stream(
            "/io.streamnative.oxia.proto.OxiaClient/Read",
            request_serializer=pb.ReadRequest.SerializeToString,
            response_deserializer=pb.ReadResponse.FromString,
        )(
            pb.ReadRequest(shard=shard, gets=[pb.GetRequest(key="/dray-readiness-probe", include_value=False)]),
            timeout=timeout,
        )
        response = next(reads)
        status = response.gets[0].status
        if status not in (pb.Status.KEY_NOT_FOUND, pb.Status.OK):
            raise ServiceError(f"read probe answered {status!r}")
        return shard


def start_oxia(binary: Path | None = None) -> OxiaService:
    """Builds (if needed) and starts ``oxia standalone`` with one shard on free loopback ports."""
    binary = binary or ensure_oxia_binary()

    def command(workdir: Path):
        port, mport = _free_port(), _free_port()
        argv = [
            str(binary),
            "standalone",
            "-p",
            f"127.0.0.1:{port}",
            "-m",
            f"127.0.0.1:{mport}",
            "--shards",
            "1",
            "--data-dir",
            str(workdir / "db"),
            "--wal-dir",
            str(workdir / "wal"),
        ]
        return argv, dict(os.environ), {"port": port, "mport": mport}

    def ready(info: dict) -> bool:
        if not _port_open(info["port"]):
            return False
        oxia_probe(f"127.0.0.1:{info['port']}")
        return True

    server, info = _start("oxia", command, ready)
    return OxiaService(
        address=f"127.0.0.1:{info['port']}",
        metrics_address=f"127.0.0.1:{info['mport']}",
        namespace="default",
        _server=server,
    )


# ------------------------------------------------------------------------------------------------ MinIO


@dataclass(eq=False)
class MinioService(ServerHandle):
    endpoint: str  # "http://127.0.0.1:PORT"
    access_key: str
    secret_key: str
    bucket: str
    region: str
    _server: _Server = field(repr=False)

    def url(self, prefix: str = "") -> str:
        """An object store URL for dray: ``s3://BUCKET/PREFIX?endpoint=...&access_key_id=...&secret_access_key=...``."""
        q = lambda v: quote(v, safe=":/")  # noqa: E731
        return (
            f"s3://{self.bucket}/{prefix.lstrip('/')}?endpoint={q(self.endpoint)}"
            f"&access_key_id={q(self.access_key)}&secret_access_key={q(self.secret_key)}"
        )

    def client(self):
        """A boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                proxies={"http": "", "https": ""},
            ),
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass


_no_proxy_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_status(url: str) -> int:
    try:
        with _no_proxy_opener.open(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def start_minio(binary: Path | None = None, bucket: str = MINIO_BUCKET) -> MinioService:
    """Builds (if needed) and starts a single-drive MinIO server on free loopback ports, with ``bucket`` created."""
    binary = binary or ensure_minio_binary()

    def command(workdir: Path):
        port, cport = _free_port(), _free_port()
        (workdir / "data").mkdir()
        argv = [
            str(binary),
            "server",
            str(workdir / "data"),
            "--address",
            f"127.0.0.1:{port}",
            "--console-address",
            f"127.0.0.1:{cport}",
            "--quiet",
        ]
        env = dict(
            os.environ,
            MINIO_ROOT_USER=MINIO_ACCESS_KEY,
            MINIO_ROOT_PASSWORD=MINIO_SECRET_KEY,
            MINIO_BROWSER="off",
            MINIO_UPDATE="off",
            MINIO_CI_CD="1",
            HOME=str(workdir),
        )
        return argv, env, {"port": port}

    def ready(info: dict) -> bool:
        status = _http_status(f"http://127.0.0.1:{info['port']}/minio/health/ready")
        if status != 200:
            raise ServiceError(f"/minio/health/ready answered {status}")
        return True

    server, info = _start("minio", command, ready)
    service = MinioService(
        endpoint=f"http://127.0.0.1:{info['port']}",
        access_key=MINIO_ACCESS_KEY,
        secret_key=MINIO_SECRET_KEY,
        bucket=bucket,
        region="us-east-1",
        _server=server,
    )
    try:
        service.create_bucket(bucket)
    except Exception as e:
        log = server.log_tail()
        service.stop()
        raise ServiceError(f"minio started but creating bucket {bucket!r} failed: {e}; log:\n{log}") from e
    return service


# ------------------------------------------------------------------------------------------------ PostgreSQL


@dataclass(eq=False)
class PostgresService(ServerHandle):
    url: str  # "postgresql://dray@127.0.0.1:PORT/dray" (trust authentication on loopback)
    _server: _Server = field(repr=False)


def _postgres_program(name: str) -> str:
    """A PostgreSQL server program: on PATH, else the newest in Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not candidates:
        raise ServiceError(f"PostgreSQL's {name} was not found: install Debian's postgresql package "
                           "(./dev test does) or put its bin directory on PATH")
    return str(candidates[-1])


def _as_postgres_user(argv: list[str], workdir: Path) -> list[str]:
    """PostgreSQL refuses to run as root: then run it as the postgres user the Debian package creates."""
    if os.geteuid() != 0:
        return argv
    import pwd

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root, PostgreSQL needs an unprivileged user named postgres") from None
    for path in (workdir, *workdir.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--", *argv]


def start_postgres() -> PostgresService:
    """Starts a throwaway PostgreSQL server (fsync off) on a free loopback port, with a database named dray."""
    initdb, postgres = _postgres_program("initdb"), _postgres_program("postgres")

    def command(workdir: Path):
        port = _free_port()
        data = workdir / "data"
        init = subprocess.run(_as_postgres_user([initdb, "-D", str(data), "-U", "dray", "--auth=trust", "-E", "UTF8",
                                                 "--no-sync"], workdir),
                              capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise ServiceError(f"initdb failed ({init.returncode}): {init.stdout}{init.stderr}")
        argv = _as_postgres_user([postgres, "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                                  "-k", str(workdir), "-c", "fsync=off", "-c", "full_page_writes=off",
                                  "-c", "synchronous_commit=off"], workdir)
        return argv, dict(os.environ), {"port": port}

    def ready(info: dict) -> bool:
        import psycopg

        with psycopg.connect(f"postgresql://dray@127.0.0.1:{info['port']}/postgres", autocommit=True,
                             connect_timeout=2) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'dray'").fetchone() is None:
                conn.execute("CREATE DATABASE dray")
        return True

    server, info = _start("postgres", command, ready)
    return PostgresService(url=f"postgresql://dray@127.0.0.1:{info['port']}/dray", _server=server)


__all__ = [
    "MinioService",
    "OxiaService",
    "PostgresService",
    "ServerHandle",
    "ServiceError",
    "ensure_minio_binary",
    "ensure_oxia_binary",
    "minio_binary_path",
    "oxia_binary_path",
    "oxia_probe",
    "services_dir",
    "start_minio",
    "start_oxia",
    "start_postgres",
]
