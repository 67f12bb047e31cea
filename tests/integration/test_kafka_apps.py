"""Kafka applications that need compacted topics and DeleteRecords, against Dray (both backends): a Kafka Streams
word count (a KTable with a compacted changelog, a repartition topic purged with DeleteRecords) restarted on an
empty state directory restores its counts from the changelog and produces exactly the expected updates; a Kafka
Connect distributed worker creates its compacted internal topics, runs a file source and a file sink connector, is
restarted, and goes on from its stored offsets and configs without loss or duplicates.
The applications are tests/apps, built with Maven (Java 17) like the Java client tool."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from tests.integration.java_client import JVM_FLAGS, _java, classpath, ensure_built

pytestmark = pytest.mark.timeout(900)  # the first run on a machine builds tests/apps (Maven Central)

APPS = Path(__file__).resolve().parent.parent / "apps"
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


@pytest.fixture(scope="session")
def apps() -> Path:
    return ensure_built(APPS)


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})


def _lines(n: int, seed: int) -> list[str]:
    return [" ".join(WORDS[(seed * 7 + i * 3 + j) % len(WORDS)] for j in range(1 + (i + seed) % 4)) for i in range(n)]


def _produce(bootstrap: str, topic: str, lines: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
    for i, line in enumerate(lines):
        producer.produce(topic, key=b"line-%d" % i, value=line.encode())
    assert producer.flush(15) == 0


class WordCountApp:
    """dray.apps.WordCount as a subprocess; close() closes its stdin: the app closes cleanly."""

    def __init__(self, apps: Path, bootstrap: str, app_id: str, source: str, sink: str, state_dir: Path):
        self.proc = subprocess.Popen(
            [_java(), *JVM_FLAGS, "-cp", classpath(apps), "dray.apps.WordCount", bootstrap, app_id, source, sink,
             str(state_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def close(self) -> str:
        try:
            out, err = self.proc.communicate(timeout=60)  # closes its stdin first
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        assert self.proc.returncode == 0, f"WordCount exited {self.proc.returncode}\n{out}\n{err[-5000:]}"
        return out


def _updates(bootstrap: str, topic: str, want: dict[str, int], timeout: float = 120) -> dict[str, list[int]]:
    """Every count update of the output topic, per word, read until the last one of each word is want's."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "wc-check", "enable.auto.commit": False,
                         "log_level": 3})
    md = _admin(bootstrap).list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])
    seen: dict[str, list[int]] = defaultdict(list)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                seen[msg.key().decode()].append(int(msg.value()))
            if {w: c[-1] for w, c in seen.items()} == want:
                # drain what else is there (a duplicate would show)
                while (msg := consumer.poll(1.0)) is not None:
                    if not msg.error():
                        seen[msg.key().decode()].append(int(msg.value()))
                return dict(seen)
    finally:
        consumer.close()
    raise AssertionError(f"output never reached {want}: {dict(seen)}")


def _log_start(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm", "log_level": 3})
    try:
        md = _admin(bootstrap).list_topics(topic, timeout=10).topics[topic]
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[0]
                   for p in md.partitions)
    finally:
        consumer.close()


def test_streams_word_count_restores_from_its_changelog(broker, apps, tmp_path):
    b = broker.bootstrap
    run = uuid.uuid4().hex[:6]
    source, sink, app_id = f"wc-in-{run}", f"wc-out-{run}", f"wc-{run}"
    admin = _admin(b)
    for f in admin.create_topics([NewTopic(source, 2, 1), NewTopic(sink, 2, 1)]).values():
        f.result(15)
    first, second = _lines(40, 1), _lines(30, 2)
    _produce(b, source, first)
    app = WordCountApp(apps, b, app_id, source, sink, tmp_path / "state-1")
    want = Counter(w for line in first for w in line.split())
    _updates(b, sink, dict(want))
    app.close()

    # A new instance on an empty state directory: the counts come back from the changelog, then go on.
    _produce(b, source, second)
    app = WordCountApp(apps, b, app_id, source, sink, tmp_path / "state-2")
    want.update(w for line in second for w in line.split())
    updates = _updates(b, sink, dict(want))
    app.close()
    # Exactly one update per word occurrence, in order: 1, 2, ..., n (none lost, none twice).
    assert updates == {w: list(range(1, n + 1)) for w, n in want.items()}

    # Its internal topics: the changelog compacted, the repartition topic purged with DeleteRecords.
    topics = admin.list_topics(timeout=10).topics
    changelog = next(t for t in topics if t.startswith(app_id) and t.endswith("-changelog"))
    repartition = next(t for t in topics if t.startswith(app_id) and t.endswith("-repartition"))
    (configs,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, changelog)]).values()
    assert configs.result(10)["cleanup.policy"].value == "compact"
    assert _log_start(b, repartition) > 0
    assert re.match(rf"{app_id}-counts-changelog", changelog)


# --- Kafka Connect ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConnectWorker:
    """org.apache.kafka.connect.cli.ConnectDistributed with the tests/apps connectors on its class path."""

    def __init__(self, apps: Path, properties: Path, port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [_java(), "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xlog:disable",
                 "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", classpath(apps),
                 "org.apache.kafka.connect.cli.ConnectDistributed", str(properties)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_for(lambda: self.call("GET", "/") is not None, "the REST API to answer")

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def wait_for(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the Connect worker exited {self.proc.returncode}:\n" \
                                             f"{self.log.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"the Connect worker: no {what}\n{self.log.read_text()[-5000:]}"
            time.sleep(0.2)

    def running(self, name: str) -> bool:
        status = self.call("GET", f"/connectors/{name}/status")
        return bool(status) and status["connector"]["state"] == "RUNNING" and \
            [t["state"] for t in status.get("tasks", [])] == ["RUNNING"]

    def stop(self) -> None:
        """A clean stop (SIGTERM): tasks commit their offsets, the worker leaves its group. Connect's own bounds
        allow more than a minute: its REST server waits up to 60 s for requests in flight before the herder
        stops, and the herder up to 23 s for its connectors and tasks."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            # A thread dump (SIGQUIT goes to the worker's stdout, its log) says where it hangs.
            self.proc.send_signal(signal.SIGQUIT)
            deadline = time.monotonic() + 5
            while "JNI global refs" not in self.log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            self.proc.kill()
            self.proc.wait()
            log = self.log.read_text()
            start = log.find("Full thread dump")
            shown = log[start:][:20000] if start >= 0 else log[-5000:]
            raise AssertionError(f"the Connect worker did not stop\n{shown}")


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 3})
    try:
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset
    finally:
        consumer.close()


def _lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_connect_distributed_worker_resumes_from_its_stored_offsets(broker, apps, tmp_path):
    b = broker.bootstrap
    run = uuid.uuid4().hex[:6]
    topic = f"connect-lines-{run}"
    internal = {"config.storage.topic": f"connect-configs-{run}", "offset.storage.topic": f"connect-offsets-{run}",
                "status.storage.topic": f"connect-status-{run}"}
    port = _free_port()
    properties = tmp_path / "worker.properties"
    properties.write_text("\n".join(f"{k}={v}" for k, v in {
        "bootstrap.servers": b, "group.id": f"connect-{run}", "listeners": f"http://127.0.0.1:{port}",
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.storage.StringConverter",
        "config.storage.replication.factor": 1, "offset.storage.replication.factor": 1,
        "status.storage.replication.factor": 1, "offset.flush.interval.ms": 500,
        "scheduled.rebalance.max.delay.ms": 0, **internal}.items()) + "\n")
    admin = _admin(b)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    source, sink = tmp_path / "in.txt", tmp_path / "out.txt"
    written = [f"line {i} of run {run}" for i in range(200)]
    source.write_text("".join(line + "\n" for line in written))

    worker = ConnectWorker(apps, properties, port, tmp_path / "worker-1.log")
    try:
        for name, config in (("lines-in", {"connector.class": "dray.apps.LineFileSource", "file": str(source),
                                           "topic": topic}),
                             ("lines-out", {"connector.class": "dray.apps.LineFileSink", "file": str(sink),
                                            "topics": topic})):
            assert worker.call("PUT", f"/connectors/{name}/config", {**config, "tasks.max": "1"}) is not None
            worker.wait_for(lambda name=name: worker.running(name), f"{name} running")
        worker.wait_for(lambda: len(_lines_of(sink)) >= len(written), "all lines in the sink")
    finally:
        worker.stop()
    assert _lines_of(sink) == written

    # Its internal topics were created compacted (the worker refuses to start otherwise).
    for name in internal.values():
        (configs,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)]).values()
        assert configs.result(10)["cleanup.policy"].value == "compact", name

    # More lines while it is down; a new worker reads its connectors from the config topic and goes on from the
    # source offsets and the sink's committed offsets: every line once.
    more = [f"line {i} of run {run}, after the restart" for i in range(200, 300)]
    with open(source, "a") as f:
        f.write("".join(line + "\n" for line in more))
    worker = ConnectWorker(apps, properties, port, tmp_path / "worker-2.log")
    try:
        worker.wait_for(lambda: worker.running("lines-in") and worker.running("lines-out"), "connectors restored")
        worker.wait_for(lambda: len(_lines_of(sink)) >= len(written) + len(more), "the new lines in the sink")
        # Once the sink committed the topic's end, everything it will write is written (a duplicate would be too).
        worker.wait_for(lambda: _committed(b, "connect-lines-out", topic) == len(written) + len(more),
                        "the sink's offsets committed to the end")
    finally:
        worker.stop()
    assert _lines_of(sink) == written + more
