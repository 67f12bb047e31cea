"""A cluster of stateless brokers sharing one metadata store and one object store: zones, failures, races."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.errors import ErrorCode

from dray_broker.protocol import apis
from tests.batches import make_batch
from tests.integration.brokers import BrokerProcess
from tests.integration.wire import Wire, request


@pytest.fixture
def cluster(tmp_path, cluster_stores):
    """Brokers 1 and 2 in zone a, broker 3 in zone b, on one metadata store and one object store (each backend)."""
    shared = [*cluster_stores.args(), "--session-timeout-ms=2000"]
    brokers = [BrokerProcess(tmp_path / f"b{i}", extra_args=[*shared, f"--broker-id={i}", f"--zone={zone}"])
               for i, zone in ((1, "a"), (2, "a"), (3, "b"))]
    for b in brokers:
        b.start()
    # Each broker learns of the others through the store's watch, a moment after they registered.
    for b in brokers:
        admin = AdminClient({"bootstrap.servers": b.bootstrap, "log_level": 3})
        deadline = time.monotonic() + 30
        while len(admin.list_topics(timeout=10).brokers) < len(brokers):
            assert time.monotonic() < deadline, f"broker on {b.bootstrap} does not see every broker"
            time.sleep(0.02)
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


def test_a_broker_id_in_use_is_refused(cluster, cluster_stores, tmp_path):
    clash = BrokerProcess(tmp_path / "clash", extra_args=[*cluster_stores.args(), "--session-timeout-ms=2000",
                                                          "--broker-id=1"])
    with pytest.raises(RuntimeError, match="broker id 1 is registered by a live broker"):
        clash.start(timeout=30)


def _find_coordinator(bootstrap: str, client_id: str, group: str) -> int:
    wire = Wire(bootstrap, client_id=client_id)
    try:
        r = wire.call(apis.FIND_COORDINATOR, 3, request(apis.FIND_COORDINATOR, 3, "FindCoordinatorRequest",
                                                        key=group, key_type=0))
        assert r.error_code == ErrorCode.none
        return r.node_id
    finally:
        wire.close()


def test_a_new_group_is_coordinated_in_the_client_zone_and_stays_on_one_broker(cluster, topic_name):
    b1, b2, b3 = cluster
    # Unleased groups: each client is pointed at a broker of its own zone, whichever broker it asks.
    for i in range(6):
        group = f"g{i}-{topic_name}"
        assert {_find_coordinator(b.bootstrap, "zone_id=b", group) for b in cluster} == {3}
        assert {_find_coordinator(b.bootstrap, "x=1,zone_id=a", group) for b in cluster} <= {1, 2}
    # Once a zone-b consumer joined, the group is held by broker 3 and every client, of any zone, is sent there.
    _create(b1.bootstrap, topic_name, 2)
    group = f"zoned-{topic_name}"
    consumer = Consumer({"bootstrap.servers": b1.bootstrap, "group.id": group, "client.id": "zone_id=b",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "log_level": 3})
    consumer.subscribe([topic_name])
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.2)
    assert len(consumer.assignment()) == 2
    assert {_find_coordinator(b.bootstrap, "zone_id=a", group) for b in cluster} == {3}
    consumer.close()


def test_enforce_owner_steers_produce_to_the_zone_owner(tmp_path, cluster_stores, topic_name):
    shared = [*cluster_stores.args(), "--enforce-owner"]
    brokers = [BrokerProcess(tmp_path / f"e{i}", extra_args=[*shared, f"--broker-id={i}", "--zone=a"]).start()
               for i in (1, 2)]
    try:
        _create(brokers[0].bootstrap, topic_name, 4)
        leaders = {i: p.leader for i, p in _metadata(brokers[0].bootstrap, "zone_id=a", topic_name)
                   .topics[topic_name].partitions.items()}
        for partition, leader in leaders.items():
            other = brokers[0] if leader == 2 else brokers[1]
            batch = make_batch([(b"k", b"v")])
            wire = Wire(other.bootstrap, client_id="zone_id=a")
            body = request(apis.PRODUCE, 9, "ProduceRequest", transactional_id=None, acks=-1, timeout=10_000,
                           topic_data=(request(apis.PRODUCE, 9, "TopicProduceData", name=topic_name, partition_data=(
                               request(apis.PRODUCE, 9, "PartitionProduceData", index=partition, records=batch),)),))
            code = wire.call(apis.PRODUCE, 9, body).responses[0].partition_responses[0].error_code
            wire.close()
            assert code == ErrorCode.not_leader_or_follower, (partition, leader)
        # A normal client follows Metadata to the owners and everything lands.
        p = Producer({"bootstrap.servers": brokers[0].bootstrap, "client.id": "zone_id=a", "log_level": 3})
        for i in range(100):
            p.produce(topic_name, value=b"%d" % i, partition=i % 4)
        assert p.flush(15) == 0
    finally:
        for b in brokers:
            b.stop()


def test_aiokafka_keeps_producing_and_consuming_when_a_broker_dies(cluster, topic_name):
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioTopicPartition

    b1, b2, b3 = cluster
    _create(b1.bootstrap, topic_name, 6)
    bootstrap = ",".join(b.bootstrap for b in cluster)

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="zone_id=a", enable_idempotence=False,
                                    request_timeout_ms=10_000, retry_backoff_ms=200, metadata_max_age_ms=1000)
        await producer.start()
        acked = []
        try:
            for i in range(300):
                await producer.send_and_wait(topic_name, b"%d" % i, partition=i % 6)
                acked.append(b"%d" % i)
            b2.kill()
            for i in range(300, 600):
                for attempt in range(50):
                    try:
                        await producer.send_and_wait(topic_name, b"%d" % i, partition=i % 6)
                        acked.append(b"%d" % i)
                        break
                    except Exception:  # the dead broker's partitions move once Metadata drops it: retry
                        await asyncio.sleep(0.2)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="zone_id=a", enable_auto_commit=False,
                                    metadata_max_age_ms=1000, request_timeout_ms=10_000)
        await consumer.start()
        try:
            consumer.assign([AioTopicPartition(topic_name, p) for p in range(6)])
            await consumer.seek_to_beginning()
            seen = []
            deadline = asyncio.get_running_loop().time() + 30
            while len(seen) < len(acked) and asyncio.get_running_loop().time() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                seen += [m.value for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()
        return acked, seen

    acked, seen = asyncio.run(scenario())
    assert len(acked) == 600
    assert sorted(seen) == sorted(acked)
