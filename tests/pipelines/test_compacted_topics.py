"""Compacted topics end to end with a real broker and real clients, on both backends: keyless records refused,
keys updated many times and tombstoned, cleaned by the pipeline, then read from offset 0 across the offset gaps by
librdkafka, kafka-python, aiokafka, kcat and the Java client (latest value per key at its original offset, the tail
as written); a consumer reading while producers write and the cleaner runs sees every key's latest value."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dray_pipelines import sql
from dray_pipelines.runner import Runner
from tests import services
from tests.integration import clients
from tests.integration.brokers import BrokerProcess
from tests.integration.java_client import JavaClient, ensure_built
from tests.pipelines.conftest import lake_settings

pytestmark = pytest.mark.timeout(900)

KEYS = 40
ROUNDS = 6
READERS = ["confluent", "kafka-python", "aiokafka", "kcat"]


@pytest.fixture(params=["embedded", "oxia-s3"])
def stack(request, tmp_path, dagster_instance):
    """A broker and the pipeline's runner on the same stores."""
    data_dir = tmp_path / "data"
    stores = {}
    if request.param != "embedded":
        request.getfixturevalue("oxia_service")
        s3 = request.getfixturevalue("s3_service")
        oxia = services.start_oxia()
        request.addfinalizer(oxia.stop)
        stores = {"metadata": f"oxia://{oxia.address}", "object_store": s3.url(f"compacted-{uuid.uuid4().hex[:8]}")}
    broker = BrokerProcess(data_dir, **stores).start()
    request.addfinalizer(broker.stop)
    settings = lake_settings(data_dir, **stores)
    return broker, Runner(settings, instance=dagster_instance), settings


def _create(bootstrap: str, topic: str, **configs: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    admin.create_topics([NewTopic(topic, 1, 1, config={"cleanup.policy": "compact", **configs})])[topic].result(15)


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> list[tuple]:
    """(offset, key, value) of each record, or raises with the first delivery error."""
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3, "linger.ms": 2})
    acked: list = [None] * len(records)
    errors = []

    def report(i):
        return lambda err, msg: errors.append(err) if err else acked.__setitem__(i, (msg.offset(), msg.key(),
                                                                                      msg.value()))

    for i, (k, v) in enumerate(records):
        producer.produce(topic, key=k, value=v, partition=0, on_delivery=report(i))
        if i % 50 == 49:
            producer.flush(15)
    assert producer.flush(15) == 0
    if errors:
        raise RuntimeError(errors[0])
    return acked


def _updates(rounds: int, tag: str) -> list[tuple[bytes, bytes | None]]:
    """Every key once per round; keys divisible by 5 deleted (tombstone) in the last round."""
    out = []
    for r in range(rounds):
        for k in range(KEYS):
            last = r == rounds - 1
            out.append((b"key-%03d" % k, None if last and k % 5 == 0 else b"%s-%d-%d" % (tag.encode(), r, k)))
    return out


def _cleaned(log: list[tuple], end: int) -> list[tuple]:
    latest = {}
    for o, k, _ in log:
        if o < end:
            latest[k] = o
    return [(o, k, v) for o, k, v in log if o >= end or latest[k] == o]


def test_keyless_records_are_refused(stack):
    broker, _, _ = stack
    topic = f"compacted-keyless-{uuid.uuid4().hex[:6]}"
    _create(broker.bootstrap, topic)
    with pytest.raises(RuntimeError) as info:
        _produce(broker.bootstrap, topic, [(b"k", b"v"), (None, b"no key")])
    assert info.value.args[0].code() == KafkaError.INVALID_RECORD
    # The batch with a key is stored; the broker keeps serving.
    assert [r[1:] for r in _produce(broker.bootstrap, topic, [(b"k2", b"v2")])] == [(b"k2", b"v2")]


def test_clients_read_a_cleaned_log_across_offset_gaps(stack):
    broker, runner, settings = stack
    topic = f"compacted-{uuid.uuid4().hex[:6]}"
    _create(broker.bootstrap, topic)
    written = _produce(broker.bootstrap, topic, _updates(ROUNDS, "a"))
    result = runner.run_all(force=True)
    assert not result.failed, result.failed
    assert [r.job for r in result.runs if r.job == "cleaning"] == ["cleaning"]
    end = len(written)
    tail = _produce(broker.bootstrap, topic, _updates(2, "tail"))  # the WAL tail: never cleaned
    expected = _cleaned(written + tail, end)
    assert len(expected) == KEYS + 2 * KEYS

    for reader in READERS:
        got = clients.consume(reader, broker.bootstrap, topic, {0: len(expected)}, dense=False, timeout=30)
        if reader == "kcat":  # kcat prints a null value as empty
            got = [clients.Rec(r.partition, r.key, r.value or None, offset=r.offset) for r in got]
        assert [(r.offset, r.key, r.value) for r in got] == expected, reader
    java = JavaClient(ensure_built()).consume(broker.bootstrap, topic, len(expected), assign="0", timeout_ms=30_000)
    assert [(r.offset, r.key, r.value) for r in java] == expected

    # SQL sees what a consumer sees (the cleaned table and the tail above it) and says what it holds.
    con = sql.connect(settings)
    rows = con.execute(f'SELECT "offset", key, value FROM "{topic}" ORDER BY "offset"').fetchall()
    assert [(o, bytes(k), bytes(v) if v is not None else None) for o, k, v in rows] == expected
    comment = con.execute("SELECT comment FROM duckdb_views() WHERE view_name = ?", [topic]).fetchone()[0]
    assert "latest record per key" in comment


def test_consumer_during_cleaning_and_producing(stack):
    broker, runner, _ = stack
    topic = f"compacted-live-{uuid.uuid4().hex[:6]}"
    _create(broker.bootstrap, topic)
    first = _produce(broker.bootstrap, topic, _updates(ROUNDS, "a"))
    more: list = []
    producing = threading.Thread(target=lambda: more.extend(_produce(broker.bootstrap, topic, _updates(4, "b"))))
    producing.start()
    for _ in range(2):  # compaction and cleaning while the producer writes
        assert not runner.run_all(force=True).failed
    producing.join(60)
    assert not producing.is_alive() and len(more) == 4 * KEYS
    latest = {k: v for _, k, v in first + more}
    # A consumer from offset 0 ends with every key's latest value (tombstones read as deletes).
    seen: dict = {}
    deadline = time.monotonic() + 30
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "live", "enable.auto.commit": False,
                         "log_level": 3})
    consumer.assign([TopicPartition(topic, 0, 0)])
    last = -1
    try:
        while last < len(first) + len(more) - 1 and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            assert msg.offset() > last
            last = msg.offset()
            seen[msg.key()] = msg.value()
    finally:
        consumer.close()
    assert seen == latest


def test_broker_killed_while_the_cleaner_runs(stack):
    """Brokers take no part in cleaning; one killed -9 during a pass and started again serves the cleaned log."""
    broker, runner, _ = stack
    topic = f"compacted-kill-{uuid.uuid4().hex[:6]}"
    _create(broker.bootstrap, topic)
    written = _produce(broker.bootstrap, topic, _updates(ROUNDS, "a"))
    outcome: list = []
    cleaner = threading.Thread(target=lambda: outcome.append(runner.run_all(force=True)))
    cleaner.start()
    broker.kill()
    cleaner.join(300)
    assert not cleaner.is_alive() and not outcome[0].failed, outcome
    assert "cleaning" in [r.job for r in outcome[0].runs]
    broker.start()
    expected = _cleaned(written, len(written))
    got = clients.consume("confluent", broker.bootstrap, topic, {0: len(expected)}, dense=False, timeout=30)
    assert [(r.offset, r.key, r.value) for r in got] == expected
