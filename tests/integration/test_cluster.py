"""A cluster of stateless brokers sharing one metadata store and one object store: zones, failures, races."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.brokers import BrokerProcess


@pytest.fixture
def cluster(tmp_path):
    """Brokers 1 and 2 in zone a, broker 3 in zone b, on one SQLite store and one object directory."""
    shared = [f"--metadata=sqlite://{tmp_path}/meta.db", f"--object-store=file://{tmp_path}/objects",
              "--session-timeout-ms=2000"]
    brokers = [BrokerProcess(tmp_path / f"b{i}", extra_args=[*shared, f"--broker-id={i}", f"--zone={zone}"])
               for i, zone in ((1, "a"), (2, "a"), (3, "b"))]
    for b in brokers:
        b.start()
    yield brokers
    for b in brokers:
        b.kill()


def _metadata(bootstrap: str, client_id: str, topic: str | None = None):
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": client_id, "log_level": 3})
    return admin.list_topics(topic, timeout=10)


def _create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(10)


def test_zone_id_in_client_id_selects_the_zone_brokers(cluster, topic_name):
    b1, b2, b3 = cluster
    _create(b1.bootstrap, topic_name, 24)
    # Metadata through any broker: a client in zone a sees brokers 1 and 2 only, leaders spread over both.
    for via in cluster:
        md = _metadata(via.bootstrap, "app=orders,zone_id=a", topic_name)
        assert sorted(md.brokers) == [1, 2]
        leaders = Counter(p.leader for p in md.topics[topic_name].partitions.values())
        assert set(leaders) == {1, 2} and min(leaders.values()) >= 4, leaders
    md = _metadata(b1.bootstrap, "zone_id=b", topic_name)
    assert sorted(md.brokers) == [3]
    assert {p.leader for p in md.topics[topic_name].partitions.values()} == {3}
    for client_id in ("rdkafka", "zone_id=nowhere", "zone_id="):
        md = _metadata(b3.bootstrap, client_id, topic_name)
        assert sorted(md.brokers) == [1, 2, 3], client_id
    # The pseudo-leader of a partition is the same whichever broker answers (rendezvous hash, no coordination).
    views = [{i: p.leader for i, p in _metadata(b.bootstrap, "zone_id=a", topic_name).topics[topic_name].partitions.items()}
             for b in cluster]
    assert views[0] == views[1] == views[2]
    # A client in zone b produces and consumes through zone b's broker only, and sees everything.
    p = Producer({"bootstrap.servers": b1.bootstrap, "client.id": "zone_id=b", "log_level": 3})
    for i in range(200):
        p.produce(topic_name, value=b"%d" % i, partition=i % 24)
    assert p.flush(15) == 0


def test_a_dead_broker_leaves_metadata_and_clients_carry_on(cluster, topic_name):
    b1, b2, b3 = cluster
    _create(b1.bootstrap, topic_name, 6)
    acked = []
    errors = []
    producer = Producer({"bootstrap.servers": ",".join(b.bootstrap for b in cluster), "client.id": "zone_id=a",
                         "linger.ms": 2, "message.timeout.ms": 30000, "log_level": 0})

    def produce(n, start):
        for i in range(start, start + n):
            producer.produce(topic_name, value=b"%d" % i, partition=i % 6,
                             on_delivery=lambda err, msg: errors.append(err) if err else acked.append(msg.value()))
            producer.poll(0)
            time.sleep(0.001)

    produce(1000, 0)
    producer.flush(15)
    b2.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and 2 in _metadata(b1.bootstrap, "zone_id=a").brokers:
        time.sleep(0.2)
    md = _metadata(b1.bootstrap, "zone_id=a", topic_name)
    assert sorted(md.brokers) == [1]
    assert {p.leader for p in md.topics[topic_name].partitions.values()} == {1}
    produce(1000, 1000)
    assert producer.flush(30) == 0
    assert errors == []
    # Every acked record is there, once.
    consumer = Consumer({"bootstrap.servers": b3.bootstrap, "group.id": "check", "log_level": 3})
    consumer.assign([TopicPartition(topic_name, i, 0) for i in range(6)])
    seen = []
    deadline = time.monotonic() + 20
    while len(seen) < len(acked) and time.monotonic() < deadline:
        seen += [m.value() for m in consumer.consume(1000, 0.5) if m.error() is None]
    consumer.close()
    assert sorted(seen) == sorted(acked) and len(acked) == 2000


def test_concurrent_producers_on_different_brokers_share_one_partition(cluster, topic_name):
    _create(cluster[0].bootstrap, topic_name, 1)
    results = {}

    def produce(broker: BrokerProcess):
        # Bootstrap each producer on one broker and keep it there: all three write partition 0 at once.
        p = Producer({"bootstrap.servers": broker.bootstrap, "client.id": f"zone_id={'b' if broker is cluster[2] else 'a'}",
                      "linger.ms": 1, "log_level": 3})
        got = []
        for i in range(1500):
            p.produce(topic_name, value=b"%d-%d" % (broker.port, i), partition=0,
                      on_delivery=lambda err, msg: got.append((err, msg.offset(), msg.value())))
            p.poll(0)
        p.flush(30)
        results[broker.port] = got

    threads = [threading.Thread(target=produce, args=(b,)) for b in cluster]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked = {(offset, value) for got in results.values() for err, offset, value in got if err is None}
    assert len(acked) == 4500
    offsets = sorted(o for o, _ in acked)
    assert offsets == list(range(4500)), "offsets are dense and unique across brokers"
    consumer = Consumer({"bootstrap.servers": cluster[1].bootstrap, "group.id": "check", "log_level": 3})
    consumer.assign([TopicPartition(topic_name, 0, 0)])
    read = set()
    deadline = time.monotonic() + 20
    while len(read) < 4500 and time.monotonic() < deadline:
        read |= {(m.offset(), m.value()) for m in consumer.consume(1000, 0.5) if m.error() is None}
    consumer.close()
    assert read == acked


def test_a_broker_id_in_use_is_refused(cluster, tmp_path):
    shared = [f"--metadata=sqlite://{tmp_path}/meta.db", f"--object-store=file://{tmp_path}/objects",
              "--session-timeout-ms=2000", "--broker-id=1"]
    clash = BrokerProcess(tmp_path / "clash", extra_args=shared)
    with pytest.raises(RuntimeError, match="broker id 1 is registered by a live broker"):
        clash.start(timeout=30)
