"""Kafka applications that need compacted topics and DeleteRecords, against Dray (both backends): a Kafka Streams
word count (a KTable with a compacted changelog, a repartition topic purged with DeleteRecords) restarted on an
empty state directory restores its counts from the changelog and produces exactly the expected updates.
The applications are tests/apps, built with Maven (Java 17) like the Java client tool."""

from __future__ import annotations

import re
import subprocess
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
