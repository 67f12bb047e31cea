"""The real Java Kafka client (org.apache.kafka:kafka-clients, tests/java) as a subprocess for tests.

``ensure_built()`` builds tests/java with Maven once per machine and content: the tool's jar, the runtime jars and
a class data sharing archive (faster JVM start) are kept in ``$DRAY_JAVA_CACHE`` (default ``~/.cache/dray/java``)
under a hash of the project's files and the JDK, so a rerun with unchanged sources starts no Maven at all. Maven
runs offline first (a warm ~/.m2), then online (Maven Central). A failed build raises ``JavaBuildError`` with
Maven's output: the tests fail, they are not skipped.

    tool = JavaClient(ensure_built())
    acks = tool.produce(bootstrap, topic, records)            # [Ack(index, partition, offset, timestamp)] by index
    got = tool.consume(bootstrap, topic, count=n, assign="all")  # [Record ...] in the order received
    with tool.start_consumer(bootstrap, topic, group="g", group_protocol="consumer") as c:
        c.wait_for(lambda e: e.get("event") == "assigned")   # JSON events as dicts; closing stdin stops it

Records cross the process boundary as tab-separated lines (to the producer) and JSON lines (from both commands);
keys, values and header values are base64 there, so any bytes (and null) round-trip exactly.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

JAVA_PROJECT = Path(__file__).resolve().parent.parent / "java"
MAIN_CLASS = "dray.ClientTool"
BUILD_TIMEOUT = 900.0
# Start-up matters more than peak speed for these short runs. JVM messages (such as a stale class data sharing
# archive after a JDK update: then it runs without) go to stderr, errors only: stdout is the tool's JSON.
JVM_FLAGS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-Xlog:disable",
             "-Xlog:all=error:stderr"]


class JavaBuildError(RuntimeError):
    """tests/java could not be built (no java/mvn, or Maven failed): carries Maven's output."""


class JavaClientError(RuntimeError):
    """A ClientTool run failed: carries its exit code, stdout and stderr."""


# ------------------------------------------------------------------------------------------------ build


def cache_root() -> Path:
    return Path(os.environ.get("DRAY_JAVA_CACHE") or Path.home() / ".cache" / "dray" / "java").expanduser()


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaBuildError("`java` is not on PATH: the Java client tests need Java 17+ and Maven")
    return java


def build_key(project: Path = JAVA_PROJECT) -> str:
    """Hash of pom.xml, src/ and the JDK (the class data sharing archive is per JDK): the build's cache key."""
    h = hashlib.sha256()
    files = [project / "pom.xml", *sorted(p for p in (project / "src").rglob("*") if p.is_file())]
    for p in files:
        h.update(str(p.relative_to(project)).encode() + b"\0" + p.read_bytes() + b"\0")
    java = Path(_java()).resolve()
    h.update(f"{java}\0{java.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mvn(work: Path, offline: bool) -> subprocess.CompletedProcess:
    argv = ["mvn", "-B", "-ntp", "-Dstyle.color=never", *(["-o", "-q"] if offline else []), "compile",
            "dependency:copy-dependencies", "-DincludeScope=runtime", "-DoutputDirectory=" + str(work / "lib")]
    return subprocess.run(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL)


def classpath(build_dir: Path) -> str:
    """tool.jar then the dependency jars, in a fixed order (the CDS archive checks the class path)."""
    return os.pathsep.join(str(p) for p in [build_dir / "tool.jar", *sorted((build_dir / "lib").glob("*.jar"))])


def _jar(classes: Path, jar: Path) -> None:
    """The compiled classes as a jar (class data sharing archives only classes from jars)."""
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(classes.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(classes).as_posix())


def _archive(build_dir: Path) -> str:
    """A class data sharing archive from a warm-up run: JVM start-up takes about half the CPU with it."""
    argv = [_java(), *JVM_FLAGS, f"-XX:ArchiveClassesAtExit={build_dir / 'app.jsa'}", "-cp", classpath(build_dir),
            MAIN_CLASS, "warmup"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not (build_dir / "app.jsa").exists():
        (build_dir / "app.jsa").unlink(missing_ok=True)  # runs without it, only slower
        return f"no class data sharing archive (warm-up exit {result.returncode}): {result.stderr[-2000:]}"
    return "class data sharing archive app.jsa"


def ensure_built(project: Path = JAVA_PROJECT) -> Path:
    """The build directory (tool.jar, lib/*.jar, app.jsa) for the current sources of a Maven project (by default
    the client tool; tests/apps for the Kafka Streams and Connect applications); builds it if missing. Only the
    client tool gets a class data sharing archive."""
    root = cache_root()
    final = root / build_key(project)
    if (final / "ok").exists():
        os.utime(final / "ok")  # last used: builds unused for a week are pruned
        return final
    if shutil.which("mvn") is None:
        raise JavaBuildError("`mvn` is not on PATH: the Java client tests need Java 17+ and Maven")
    with _lock(root):
        if (final / "ok").exists():  # another process built it while we waited
            return final
        work = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            shutil.copy2(project / "pom.xml", work / "pom.xml")
            shutil.copytree(project / "src", work / "src")
            started = time.monotonic()
            result = _mvn(work, offline=True)
            if result.returncode != 0:  # cold ~/.m2: fetch from Maven Central
                result = _mvn(work, offline=False)
            if result.returncode != 0:
                raise JavaBuildError(f"Maven could not build {project} (exit {result.returncode}):\n"
                                     f"{result.stdout[-20000:]}")
            _jar(work / "target" / "classes", work / "tool.jar")
            shutil.rmtree(work / "target")
            shutil.rmtree(work / "src")
            built = f"built in {time.monotonic() - started:.0f} s"
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)  # before the archive: it records the jars' paths
            archived = _archive(final) if project == JAVA_PROJECT else "no class data sharing archive"
            (final / "ok").write_text(f"{built}; {archived}\n")
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        _prune(root, keep=final)
    return final


def _prune(root: Path, keep: Path, max_age_s: float = 7 * 86400) -> None:
    """Under the build lock: left-over build-* directories, and builds not used for a week (about 30 MB each)."""
    for d in root.iterdir():
        if not d.is_dir() or d == keep:
            continue
        ok = d / "ok"
        if d.name.startswith("build-") or not ok.exists() or time.time() - ok.stat().st_mtime > max_age_s:
            shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class Record:
    """One Kafka record as both clients see it. ``headers`` keep order and duplicates; values may be None."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    partition: int | None = None  # None: the producer's partitioner chooses
    timestamp: int | None = None  # ms; None: the producer stamps it
    offset: int | None = None  # set on consumed records
    topic: str | None = None

    def content(self) -> tuple:
        """What a round trip must preserve (not where it landed)."""
        return (self.key, self.value, tuple(self.headers))

    def line(self) -> str:
        """The producer's stdin format: partition, timestamp, key, value, headers (tab separated)."""
        headers = ",".join(f"{_b64(k.encode())}:{_b64(v)}" for k, v in self.headers)
        return "\t".join(["-" if self.partition is None else str(self.partition),
                          "-" if self.timestamp is None else str(self.timestamp),
                          _b64(self.key), _b64(self.value), headers])

    @classmethod
    def from_json(cls, e: dict) -> "Record":
        return cls(key=_unb64(e["key"]), value=_unb64(e["value"]),
                   headers=tuple((k, _unb64(v)) for k, v in e["headers"]),
                   partition=e["partition"], timestamp=e["timestamp"], offset=e["offset"], topic=e["topic"])


@dataclass(frozen=True)
class Ack:
    index: int  # position in the input
    partition: int
    offset: int
    timestamp: int


def _b64(b: bytes | None) -> str:
    return "-" if b is None else base64.b64encode(b).decode()


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


# ------------------------------------------------------------------------------------------------ running


def _props(props: dict[str, object] | None) -> list[str]:
    return ["--props", ",".join(f"{k}={v}" for k, v in props.items())] if props else []


@dataclass
class JavaClient:
    build_dir: Path
    java: str = field(default_factory=_java)

    def command(self, subcommand: str, *args: str) -> list[str]:
        archive = self.build_dir / "app.jsa"
        cds = [f"-XX:SharedArchiveFile={archive}"] if archive.exists() else []
        return [self.java, *JVM_FLAGS, *cds, "-cp", classpath(self.build_dir), MAIN_CLASS, subcommand, *args]

    def run(self, subcommand: str, *args: str, input: str | None = None, timeout: float = 120,
            check: bool = True) -> list[dict]:
        """Run to completion; the JSON lines it printed. Raises JavaClientError on a non-zero exit (check)."""
        proc = subprocess.run(self.command(subcommand, *args), input=input, capture_output=True, text=True,
                              timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if check and proc.returncode != 0:
            raise JavaClientError(f"ClientTool {subcommand} exited {proc.returncode}\nstdout (tail):\n"
                                  f"{proc.stdout[-5000:]}\nstderr (tail):\n{proc.stderr[-10000:]}")
        return events

    def produce_command(self, bootstrap: str, topic: str, props: dict | None = None) -> list[str]:
        return self.command("produce", "--bootstrap", bootstrap, "--topic", topic, *_props(props))

    def produce(self, bootstrap: str, topic: str, records: list[Record], props: dict | None = None,
                timeout: float = 120) -> list[Ack]:
        """Send the records with the Java producer (its defaults: idempotent, acks=all, plus ``props``)."""
        events = self.run("produce", "--bootstrap", bootstrap, "--topic", topic, *_props(props),
                          input="".join(r.line() + "\n" for r in records), timeout=timeout)
        return acks_of(events, len(records))

    def consume(self, bootstrap: str, topic: str | list[str], count: int, *, assign: str | None = "all",
                group: str | None = None, group_protocol: str | None = None, timeout_ms: int = 30_000,
                props: dict | None = None) -> list[Record]:
        """Read ``count`` records (assign(): "all" or "0,2"; or subscribe with ``group`` when assign is None)."""
        events = self.run("consume", *consumer_args(bootstrap, topic, count=count, assign=assign, group=group,
                                                    group_protocol=group_protocol, timeout_ms=timeout_ms,
                                                    props=props),
                          timeout=timeout_ms / 1000 + 60)
        return [Record.from_json(e) for e in events if "offset" in e]

    def delete_records(self, bootstrap: str, topic: str, offsets: dict[int, int],
                       props: dict | None = None) -> dict[int, int | str]:
        """Admin.deleteRecords: partition -> its new low watermark, or the name of the exception it failed with."""
        events = self.run("delete-records", "--bootstrap", bootstrap, "--topic", topic, "--offsets",
                          ",".join(f"{p}:{o}" for p, o in offsets.items()), *_props(props), check=False)
        return {e["partition"]: e.get("lowWatermark", e.get("error")) for e in events if "partition" in e}

    def start_consumer(self, bootstrap: str, topic: str | list[str], *, group: str | None = None,
                       group_protocol: str | None = None, assign: str | None = None, props: dict | None = None,
                       commit: bool = True) -> "RunningClient":
        """A long-running consumer: runs until stdin closes (``close()``), events via ``wait_for``/``events``."""
        args = consumer_args(bootstrap, topic, count=None, assign=assign, group=group, group_protocol=group_protocol,
                             timeout_ms=0, props=props)
        if not commit:
            args += ["--commit", "false"]
        return RunningClient(self.command("consume", *args, "--until-eof"))


def consumer_args(bootstrap: str, topic: str | list[str], *, count: int | None, assign: str | None,
                  group: str | None, group_protocol: str | None, timeout_ms: int, props: dict | None) -> list[str]:
    topics = topic if isinstance(topic, str) else ",".join(topic)
    args = ["--bootstrap", bootstrap, "--topic", topics, "--timeout-ms", str(timeout_ms), *_props(props)]
    if count is not None:
        args += ["--count", str(count)]
    if assign is not None:
        args += ["--assign", assign]
    if group is not None:
        args += ["--group", group]
    if group_protocol is not None:
        args += ["--group-protocol", group_protocol]
    return args


def acks_of(events: list[dict], expected: int) -> list[Ack]:
    """The producer's per-record acks, by input index; raises on a send error or a missing ack."""
    errors = [e for e in events if "error" in e]
    if errors:
        raise JavaClientError(f"{len(errors)} records failed, first: {errors[0]}")
    acks = sorted((Ack(e["index"], e["partition"], e["offset"], e["timestamp"]) for e in events if "index" in e),
                  key=lambda a: a.index)
    if [a.index for a in acks] != list(range(expected)):
        raise JavaClientError(f"{len(acks)} acks for {expected} records")
    return acks


class RunningClient:
    """A ClientTool subprocess whose stdout lines are read (as JSON) by a thread; closing stdin stops it."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.events: list[dict] = []  # every event so far, in order
        self._queue: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                self.events.append(event)
                self._queue.put(event)
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 30) -> dict:
        """The next event (after those already returned by wait_for) that matches; raises on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no matching event in {timeout}s; stderr:\n{self.stderr()[-5000:]}") from None
            if event is None:
                self._queue.put(None)
                raise JavaClientError(f"ClientTool exited ({self.proc.wait()}) before a matching event; "
                                      f"stderr:\n{self.stderr()[-5000:]}")
            if predicate(event):
                return event

    def records(self) -> list[Record]:
        return [Record.from_json(e) for e in list(self.events) if "offset" in e]

    def stderr(self) -> str:
        return "".join(self._stderr)

    def close(self, timeout: float = 30) -> int:
        """Close stdin (the consumer leaves its group and exits); its exit code."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise JavaClientError(f"ClientTool did not exit {timeout}s after stdin closed; stderr:\n"
                                  f"{self.stderr()[-5000:]}") from None

    def __enter__(self) -> "RunningClient":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            try:
                self.close()
            except JavaClientError:
                if exc[0] is None:
                    raise
