"""The real Java client (kafka-clients 4.x, tests/java) against the broker, on each backend.

- The Java producer with its defaults (idempotent, acks=all) and the Java consumer: 10,000 keyed records with
  headers on 3 partitions come back identical, at the offsets the producer was acked with.
- Every compression type round-trips: Java to Java, Java to confluent-kafka, confluent-kafka to Java; the stored
  batches carry the codec (so nothing was silently sent uncompressed).
- Edge-case records (null and empty keys and values, binary bytes, duplicate and null headers, explicit
  timestamps) read identically across the Java client and confluent-kafka, both ways.

- A Java consumer in a classic group commits what it read, and the next one in that group resumes after it.

Rebalances between Java group members are tested in test_groups.py (with ``JavaClient.start_consumer``).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dray_broker.protocol import apis
from dray_broker.records.decode import decode_batches
from tests.integration.java_client import JavaClient, Record, acks_of, ensure_built
from tests.integration.wire import Wire, request

# The first run on a machine builds tests/java with Maven (about a minute with a cold ~/.m2).
pytestmark = pytest.mark.timeout(900)

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.fixture(scope="session")
def java() -> JavaClient:
    """The Java client tool; building it fails the tests loudly (JavaBuildError with Maven's output)."""
    return JavaClient(ensure_built())


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name, future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).items():
        future.result(15)


def confluent_produce(bootstrap: str, topic: str, records: list[Record], **config) -> list[tuple[int, int]]:
    """(partition, offset) per record, in input order."""
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3, **config})
    out: list = [None] * len(records)
    errors = []

    def done(i):
        return lambda err, msg: errors.append(err) if err else out.__setitem__(i, (msg.partition(), msg.offset()))

    for i, r in enumerate(records):
        kwargs = {"timestamp": r.timestamp} if r.timestamp is not None else {}
        if r.partition is not None:
            kwargs["partition"] = r.partition
        producer.produce(topic, key=r.key, value=r.value, headers=list(r.headers), on_delivery=done(i), **kwargs)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []
    return out


def confluent_consume(bootstrap: str, topics: list[str], count: int, timeout: float = 30) -> list[Record]:
    """assign() every partition of the topics from the beginning; the first ``count`` records and any extra."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "java-it-reader", "enable.auto.commit": False,
                         "log_level": 3})
    metadata = consumer.list_topics(timeout=10)
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in metadata.topics[t].partitions])
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                assert m.error() is None, m.error()
                out.append(Record(key=m.key(), value=m.value(), headers=tuple(m.headers() or ()),
                                  partition=m.partition(), timestamp=m.timestamp()[1], offset=m.offset(),
                                  topic=m.topic()))
    finally:
        consumer.close()
    return out


def stored_codecs(bootstrap: str, topic: str, partition: int = 0) -> set[int]:
    """The compression codecs of the batches the broker stored (raw Fetch v12, batch attributes)."""
    wire = Wire(bootstrap)
    try:
        v = 12
        body = request(apis.FETCH, v, "FetchRequest", max_wait=0, min_bytes=1, forgotten_topics_data=(), topics=(
            request(apis.FETCH, v, "FetchTopic", topic=topic, partitions=(
                request(apis.FETCH, v, "FetchPartition", partition=partition, fetch_offset=0,
                        partition_max_bytes=8 << 20),)),))
        data = wire.call(apis.FETCH, v, body).responses[0].partitions[0].records
    finally:
        wire.close()
    return {b.compression for b in decode_batches(bytes(data))}


def by_position(records: list[Record]) -> dict[tuple[str | None, int, int], tuple]:
    out = {(r.topic, r.partition, r.offset): (r.content(), r.timestamp) for r in records}
    assert len(out) == len(records), "a (topic, partition, offset) was read twice"
    return out


# ------------------------------------------------------------------------------------------------ defaults


def test_java_default_producer_and_consumer_round_trip_10k_records(broker, topic_name, java):
    create_topics(broker.bootstrap, [topic_name], 3)
    n = 10_000
    records = [Record(key=b"key-%d" % i, value=b"value-%d-" % i + bytes(range(i % 50)),
                      headers=(("seq", str(i).encode()), ("bin", bytes([i % 256, 0, 255]))))
               for i in range(n)]
    started = time.monotonic()
    acks = java.produce(broker.bootstrap, topic_name, records)  # producer defaults: idempotent, acks=all
    produced = time.monotonic()
    got = java.consume(broker.bootstrap, topic_name, count=n, assign="all")
    consumed = time.monotonic()

    assert {a.partition for a in acks} == {0, 1, 2}, "the default partitioner spreads keys over all partitions"
    for p in range(3):
        offsets = sorted(a.offset for a in acks if a.partition == p)
        assert offsets == list(range(len(offsets))), f"partition {p}: acked offsets are dense from 0"
    expected = {(topic_name, a.partition, a.offset): (records[a.index].content(), a.timestamp) for a in acks}
    assert len(got) == n, f"read {len(got)} records, want {n}"
    actual = by_position(got)
    assert actual.keys() == expected.keys()
    mismatched = [pos for pos in expected if actual[pos] != expected[pos]]
    assert not mismatched, f"{len(mismatched)} records differ, first at {mismatched[0]}: " \
                           f"{actual[mismatched[0]]} != {expected[mismatched[0]]}"
    # Same key, same partition (the Java partitioner is murmur2 of the key).
    key_partitions = {}
    for a in acks:
        assert key_partitions.setdefault(records[a.index].key, a.partition) == a.partition
    print(f"java: produced {n} in {produced - started:.1f} s, consumed in {consumed - produced:.1f} s")


# ------------------------------------------------------------------------------------------------ compression


def _codec_records(tag: str, n: int = 300) -> list[Record]:
    # Compressible values, so the codecs really shrink the batches.
    return [Record(key=b"%s-%d" % (tag.encode(), i), value=(b"%s value %d " % (tag.encode(), i)) * 20,
                   headers=(("codec", tag.encode()), ("i", b"%d" % i)), partition=0) for i in range(n)]


@pytest.fixture(scope="module")
def compression_round_trips(broker, java):
    """Per codec: Java-produced and confluent-produced topics, read by the Java consumer (all in one JVM) and by
    confluent-kafka. The Java producers run in parallel, one JVM per codec."""
    prefix = f"t-codec-{uuid.uuid4().hex[:8]}"
    java_topics = {c: f"{prefix}-java-{c}" for c in CODECS}
    conf_topics = {c: f"{prefix}-conf-{c}" for c in CODECS}
    create_topics(broker.bootstrap, [*java_topics.values(), *conf_topics.values()], 1)
    java_records = {c: _codec_records(f"java-{c}") for c in CODECS}
    conf_records = {c: _codec_records(f"conf-{c}") for c in CODECS}

    procs = {}
    for c in CODECS:
        argv = java.produce_command(broker.bootstrap, java_topics[c], {"compression.type": c, "linger.ms": 20})
        procs[c] = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)

    def finish(c):
        out, err = procs[c].communicate("".join(r.line() + "\n" for r in java_records[c]), timeout=120)
        assert procs[c].returncode == 0, f"java produce {c}: exit {procs[c].returncode}\n{out[-3000:]}\n{err[-5000:]}"
        return acks_of([json.loads(line) for line in out.splitlines() if line.startswith("{")], len(java_records[c]))

    with ThreadPoolExecutor(len(CODECS)) as pool:
        java_acks = dict(zip(CODECS, pool.map(finish, CODECS)))
        for c in CODECS:
            confluent_produce(broker.bootstrap, conf_topics[c], conf_records[c], **{"compression.type": c,
                                                                                    "linger.ms": 20})
    total = sum(len(v) for v in java_records.values()) + sum(len(v) for v in conf_records.values())
    read_by_java = java.consume(broker.bootstrap, [*java_topics.values(), *conf_topics.values()], count=total,
                                assign="all")
    read_by_confluent = confluent_consume(broker.bootstrap, list(java_topics.values()),
                                          sum(len(v) for v in java_records.values()))
    return dict(java_topics=java_topics, conf_topics=conf_topics, java_records=java_records,
                conf_records=conf_records, java_acks=java_acks, read_by_java=read_by_java,
                read_by_confluent=read_by_confluent)


def _contents(records: list[Record], topic: str) -> list[tuple]:
    return [(r.offset, r.content()) for r in records if r.topic == topic]


@pytest.mark.parametrize("codec", list(CODECS))
def test_compression_round_trips_between_java_and_confluent(broker, compression_round_trips, codec):
    rt = compression_round_trips
    java_topic, conf_topic = rt["java_topics"][codec], rt["conf_topics"][codec]
    want_java = [(i, r.content()) for i, r in enumerate(rt["java_records"][codec])]
    want_conf = [(i, r.content()) for i, r in enumerate(rt["conf_records"][codec])]
    assert [a.offset for a in rt["java_acks"][codec]] == list(range(len(want_java)))

    assert stored_codecs(broker.bootstrap, java_topic) == {CODECS[codec]}, "Java's batches keep their codec"
    assert stored_codecs(broker.bootstrap, conf_topic) == {CODECS[codec]}, "confluent's batches keep their codec"
    assert _contents(rt["read_by_java"], java_topic) == want_java, "Java -> Java"
    assert _contents(rt["read_by_confluent"], java_topic) == want_java, "Java -> confluent-kafka"
    assert _contents(rt["read_by_java"], conf_topic) == want_conf, "confluent-kafka -> Java"


# ------------------------------------------------------------------------------------------------ cross-client


def _edge_records(tag: bytes) -> list[Record]:
    ts = 1_700_000_000_000
    return [
        Record(key=tag + b"-plain", value=b"hello", headers=(("h", b"v"),), timestamp=ts),
        Record(key=None, value=b"no key", timestamp=ts + 1),
        Record(key=tag + b"-tombstone", value=None, timestamp=ts + 2),
        Record(key=b"", value=b"", headers=(("empty", b""),), timestamp=ts + 3),
        Record(key=bytes(range(256)), value=bytes(range(255, -1, -1)) * 4, timestamp=ts + 4),
        Record(key=tag + b"-headers", value=b"x", timestamp=ts + 5,
               headers=(("dup", b"1"), ("dup", b"2"), ("null", None), ("ünï", "çødé".encode()), ("bin", b"\0\xff"))),
        Record(key=tag + b"-big", value=b"\x5a" * 200_000, timestamp=ts - 86_400_000),  # older than its batch
        Record(key=tag + b"-now", value=b"stamped by the producer"),
    ]


def _assert_same(read: list[Record], written: list[Record], positions: list[tuple[int, int]]):
    assert len(read) == len(written), f"read {len(read)} records, want {len(written)}"
    by_offset = {(r.partition, r.offset): r for r in read}
    for w, pos in zip(written, positions):
        r = by_offset[pos]
        assert r.content() == w.content(), f"record at {pos}: {r} != {w}"
        if w.timestamp is not None:
            assert r.timestamp == w.timestamp, f"timestamp at {pos}"
        else:
            assert abs(r.timestamp - time.time() * 1000) < 600_000, f"producer-stamped timestamp at {pos}"


def test_java_records_read_identically_by_confluent(broker, topic_name, java):
    create_topics(broker.bootstrap, [topic_name], 1)
    records = [Record(r.key, r.value, r.headers, partition=0, timestamp=r.timestamp) for r in _edge_records(b"j")]
    acks = java.produce(broker.bootstrap, topic_name, records)
    read = confluent_consume(broker.bootstrap, [topic_name], len(records))
    _assert_same(read, records, [(a.partition, a.offset) for a in acks])
    # And the Java consumer agrees with confluent on the producer-stamped timestamp too.
    assert [(r.offset, r.content(), r.timestamp) for r in java.consume(broker.bootstrap, topic_name, len(records))] \
        == [(r.offset, r.content(), r.timestamp) for r in sorted(read, key=lambda r: r.offset)]


def test_confluent_records_read_identically_by_java(broker, topic_name, java):
    create_topics(broker.bootstrap, [topic_name], 1)
    records = [Record(r.key, r.value, r.headers, partition=0, timestamp=r.timestamp) for r in _edge_records(b"c")]
    positions = confluent_produce(broker.bootstrap, topic_name, records, **{"enable.idempotence": True})
    read = java.consume(broker.bootstrap, topic_name, len(records))
    _assert_same(read, records, positions)


# ------------------------------------------------------------------------------------------------ groups


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 3})
    try:
        return {tp.partition: tp.offset
                for tp in consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)}
    finally:
        consumer.close()


def test_java_classic_group_commits_and_the_next_member_resumes_after_them(broker, topic_name, java):
    create_topics(broker.bootstrap, [topic_name], 3)
    group = f"g-{topic_name}"
    first = [Record(key=b"first-%d" % i, value=b"v%d" % i) for i in range(30)]
    positions = confluent_produce(broker.bootstrap, topic_name, first)
    read = java.consume(broker.bootstrap, topic_name, len(first), assign=None, group=group, group_protocol="classic")
    assert sorted(r.content() for r in read) == sorted(r.content() for r in first)
    ends = {p: 1 + max(o for q, o in positions if q == p) for p in {q for q, _ in positions}}
    assert _committed(broker.bootstrap, group, topic_name, 3) == {p: ends.get(p, -1001) for p in range(3)}

    second = [Record(key=b"second-%d" % i, value=b"w%d" % i) for i in range(6)]
    confluent_produce(broker.bootstrap, topic_name, second)
    read = java.consume(broker.bootstrap, topic_name, len(second), assign=None, group=group,
                        group_protocol="classic")
    assert sorted(r.content() for r in read) == sorted(r.content() for r in second), "resumes after its commits"


# ------------------------------------------------------------------------------------------------ long-running


def test_long_running_java_consumer_streams_new_records_and_stops_when_stdin_closes(embedded_broker, topic_name,
                                                                                   java):
    """The mode the consumer group tests drive: events as they happen, exit on stdin close."""
    create_topics(embedded_broker.bootstrap, [topic_name], 2)
    with java.start_consumer(embedded_broker.bootstrap, topic_name, assign="all") as consumer:
        assigned = consumer.wait_for(lambda e: e.get("event") == "assigned")
        assert sorted(p["partition"] for p in assigned["partitions"]) == [0, 1]
        records = [Record(key=b"k%d" % i, value=b"v%d" % i, partition=i % 2) for i in range(6)]
        confluent_produce(embedded_broker.bootstrap, topic_name, records)
        consumer.wait_for(lambda e: len(consumer.records()) >= 6)
        assert consumer.close() == 0
    assert sorted(r.content() for r in consumer.records()) == sorted(r.content() for r in records)
    assert consumer.events[-1]["event"] == "done" and consumer.events[-1]["records"] == 6
