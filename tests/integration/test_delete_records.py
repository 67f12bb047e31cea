"""DeleteRecords (API 21, v0-2) with real admin clients: the log start moves (durably, on every broker), fetches
below it answer OFFSET_OUT_OF_RANGE, ListOffsets EARLIEST and consumers follow it. Both metadata backends."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition
from kafka.errors import OffsetOutOfRangeError
from kio.schema.errors import ErrorCode

from dray_broker.protocol import apis
from tests.integration.brokers import BrokerProcess
from tests.integration.clients import RawClient, decode_records
from tests.integration.java_client import JavaClient, ensure_built
from tests.integration.wire import Wire, request

TIMEOUT = 15
PER_PARTITION = 10

pytestmark = pytest.mark.timeout(900)  # the first Java test on a machine builds tests/java


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 3, "socket.timeout.ms": 10000})


def _create(bootstrap: str, topic: str, partitions: int, **configs: str) -> None:
    admin = _admin(bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1, config=configs)])[topic].result(TIMEOUT)


def _fill(bootstrap: str, topic: str, partitions: int, per_partition: int = PER_PARTITION) -> None:
    """per_partition keyed records in every partition: key k<p>-<i>, value v<p>-<i>, at offset i."""
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3, "linger.ms": 0})
    for i in range(per_partition):
        for p in range(partitions):
            producer.produce(topic, key=b"k%d-%d" % (p, i), value=b"v%d-%d" % (p, i), partition=p)
        producer.flush(TIMEOUT)  # one batch per round: offsets i, i+1, ... in separate batches
    assert producer.flush(TIMEOUT) == 0


def _delete(bootstrap: str, topic: str, offsets: dict[int, int]) -> dict[int, int | KafkaError]:
    """confluent-kafka's delete_records: partition -> new low watermark, or the error."""
    admin = _admin(bootstrap)
    futures = admin.delete_records([TopicPartition(topic, p, o) for p, o in offsets.items()],
                                               request_timeout=TIMEOUT, operation_timeout=TIMEOUT)
    out: dict[int, int | KafkaError] = {}
    for tp, future in futures.items():
        try:
            out[tp.partition] = future.result(TIMEOUT).low_watermark
        except KafkaException as e:
            out[tp.partition] = e.args[0]
    return out


def _watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm", "log_level": 3})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=TIMEOUT, cached=False)
    finally:
        consumer.close()


def _read_all(bootstrap: str, topic: str, partition: int, count: int, start: int = -2) -> list[tuple[int, bytes]]:
    """(offset, value) of count records from start (-2: the log start), with confluent-kafka."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "read", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "log_level": 3})
    consumer.assign([TopicPartition(topic, partition, start)])
    out = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append((msg.offset(), msg.value()))
    finally:
        consumer.close()
    return out


def _fetch(bootstrap: str, topic: str, partition: int, offset: int) -> tuple[int, int, int, list[int]]:
    """One raw Fetch v12 at offset (kafka-python's codec): (error, log start, high watermark, offsets returned)."""
    with RawClient(bootstrap) as raw:
        p = raw.fetch({(topic, partition): offset}, min_bytes=0)[(topic, partition)]
    return p.error_code, p.log_start_offset, p.high_watermark, [o for o, _, _ in decode_records(p.records)]


def _values(p: int, offsets) -> list[tuple[int, bytes]]:
    return [(i, b"v%d-%d" % (p, i)) for i in offsets]


def test_delete_records_with_confluent_kafka(broker, topic_name):
    b = broker.bootstrap
    _create(b, topic_name, 3)
    _fill(b, topic_name, 3)
    # Partition 0 before offset 4, partition 1 all (-1: the high watermark), partition 2 nothing (offset 0).
    assert _delete(b, topic_name, {0: 4, 1: -1, 2: 0}) == {0: 4, 1: PER_PARTITION, 2: 0}
    assert _watermarks(b, topic_name, 0) == (4, PER_PARTITION)
    assert _watermarks(b, topic_name, 1) == (PER_PARTITION, PER_PARTITION)
    # Fetches below the log start are out of range; at it, the records are there with their offsets.
    error, log_start, hw, _ = _fetch(b, topic_name, 0, 3)
    assert (error, log_start, hw) == (ErrorCode.offset_out_of_range, 4, PER_PARTITION)
    error, log_start, hw, offsets = _fetch(b, topic_name, 0, 4)
    assert (error, log_start, offsets) == (ErrorCode.none, 4, list(range(4, PER_PARTITION)))
    # A consumer from the beginning starts at the log start.
    assert _read_all(b, topic_name, 0, PER_PARTITION - 4) == _values(0, range(4, PER_PARTITION))
    assert _read_all(b, topic_name, 2, PER_PARTITION) == _values(2, range(PER_PARTITION))
    # A consumer whose position fell below the log start is reset (auto.offset.reset=earliest) to it.
    assert _read_all(b, topic_name, 0, 2, start=1) == _values(0, range(4, 6))

    # A lower offset leaves the log start where it is; past the log end, an unknown partition: errors.
    assert _delete(b, topic_name, {0: 2}) == {0: 4}
    results = _delete(b, topic_name, {0: PER_PARTITION + 1})
    assert results[0].code() == KafkaError.OFFSET_OUT_OF_RANGE
    assert _watermarks(b, topic_name, 0) == (4, PER_PARTITION)
    # New records go on after the deleted ones; deleting up to the end leaves an empty log that still grows.
    _fill(b, topic_name, 3, 2)
    assert _delete(b, topic_name, {1: -1}) == {1: PER_PARTITION + 2}
    assert _read_all(b, topic_name, 0, PER_PARTITION - 2) == _values(0, range(4, PER_PARTITION)) + \
        [(PER_PARTITION, b"v0-0"), (PER_PARTITION + 1, b"v0-1")]


def test_delete_records_errors_on_the_wire_every_version(broker, topic_name):
    b = broker.bootstrap
    _create(b, topic_name, 1)
    _create(b, topic_name + "-c", 1, **{"cleanup.policy": "compact"})
    _fill(b, topic_name, 1)
    wire = Wire(b)
    try:
        for version in range(3):
            body = request(apis.DELETE_RECORDS, version, "DeleteRecordsRequest", timeout=TIMEOUT * 1000, topics=(
                request(apis.DELETE_RECORDS, version, "DeleteRecordsTopic", name=topic_name, partitions=(
                    request(apis.DELETE_RECORDS, version, "DeleteRecordsPartition", partition_index=0,
                            offset=version + 1),
                    request(apis.DELETE_RECORDS, version, "DeleteRecordsPartition", partition_index=1, offset=0),
                )),
                request(apis.DELETE_RECORDS, version, "DeleteRecordsTopic", name=topic_name + "-c", partitions=(
                    request(apis.DELETE_RECORDS, version, "DeleteRecordsPartition", partition_index=0, offset=0),
                )),
                request(apis.DELETE_RECORDS, version, "DeleteRecordsTopic", name=topic_name + "-missing",
                        partitions=(request(apis.DELETE_RECORDS, version, "DeleteRecordsPartition",
                                            partition_index=0, offset=0),)),
            ))
            moved, compacted, missing = wire.call(apis.DELETE_RECORDS, version, body).topics
            assert [(p.partition_index, p.error_code, p.low_watermark) for p in moved.partitions] == \
                [(0, ErrorCode.none, version + 1), (1, ErrorCode.unknown_topic_or_partition, -1)]
            # cleanup.policy=compact alone: deleting would drop keys' latest values (Kafka: POLICY_VIOLATION).
            assert compacted.partitions[0].error_code == ErrorCode.policy_violation
            assert missing.partitions[0].error_code == ErrorCode.unknown_topic_or_partition
        body = request(apis.DELETE_RECORDS, 2, "DeleteRecordsRequest", timeout=1000, topics=(
            request(apis.DELETE_RECORDS, 2, "DeleteRecordsTopic", name=topic_name, partitions=(
                request(apis.DELETE_RECORDS, 2, "DeleteRecordsPartition", partition_index=0, offset=-2),)),))
        (t,) = wire.call(apis.DELETE_RECORDS, 2, body).topics
        assert t.partitions[0].error_code == ErrorCode.offset_out_of_range
    finally:
        wire.close()
    assert _watermarks(b, topic_name, 0) == (3, PER_PARTITION)


def test_delete_records_with_kafka_python(broker, topic_name):
    b = broker.bootstrap
    _create(b, topic_name, 2)
    _fill(b, topic_name, 2)
    admin = KafkaAdminClient(bootstrap_servers=b, request_timeout_ms=TIMEOUT * 1000, client_id="dray-delete-records")
    try:
        result = admin.delete_records({KpTopicPartition(topic_name, 0): 6, KpTopicPartition(topic_name, 1): 1})
        assert {tp.partition: md["low_watermark"] for tp, md in result.items()} == {0: 6, 1: 1}
        with pytest.raises(OffsetOutOfRangeError):
            admin.delete_records({KpTopicPartition(topic_name, 0): 99})
    finally:
        admin.close()
    assert _watermarks(b, topic_name, 0) == (6, PER_PARTITION)
    assert _read_all(b, topic_name, 1, PER_PARTITION - 1) == _values(1, range(1, PER_PARTITION))


def test_delete_records_with_the_java_admin_client(broker, topic_name):
    b = broker.bootstrap
    _create(b, topic_name, 2)
    _fill(b, topic_name, 2)
    java = JavaClient(ensure_built())
    assert java.delete_records(b, topic_name, {0: 3, 1: -1}) == {0: 3, 1: PER_PARTITION}
    assert java.delete_records(b, topic_name, {0: PER_PARTITION + 5}) == {0: "OffsetOutOfRangeException"}
    got = java.consume(b, topic_name, PER_PARTITION - 3, assign="0", timeout_ms=TIMEOUT * 1000,
                       props={"auto.offset.reset": "earliest"})
    assert [(r.offset, r.value) for r in got] == _values(0, range(3, PER_PARTITION))


def test_log_start_is_durable_and_seen_by_every_broker(tmp_path, cluster_stores, topic_name):
    """Delete through one broker: another one refuses fetches below the new log start at once (it follows the
    index through the store's watch, or reads it), and brokers started afterwards on the same stores too."""
    shared = cluster_stores.args()
    one, two = (BrokerProcess(tmp_path / f"b{i}", extra_args=[*shared, f"--broker-id={i}"]).start() for i in (1, 2))
    try:
        _create(one.bootstrap, topic_name, 1)
        _fill(one.bootstrap, topic_name, 1)
        # The second broker has read the partition (its log start is cached) before the delete.
        assert _fetch(two.bootstrap, topic_name, 0, 0)[0] == ErrorCode.none
        assert _delete(one.bootstrap, topic_name, {0: 7}) == {0: 7}
        deadline = time.monotonic() + TIMEOUT
        while _fetch(two.bootstrap, topic_name, 0, 0)[0] != ErrorCode.offset_out_of_range:
            assert time.monotonic() < deadline, "the other broker still serves offsets below the log start"
            time.sleep(0.02)
        assert _watermarks(two.bootstrap, topic_name, 0) == (7, PER_PARTITION)
    finally:
        one.stop()  # deregistered: the next broker's Metadata lists only itself
        two.stop()
    three = BrokerProcess(tmp_path / "b3", extra_args=[*shared, "--broker-id=3"]).start()
    try:
        assert _watermarks(three.bootstrap, topic_name, 0) == (7, PER_PARTITION)
        assert _fetch(three.bootstrap, topic_name, 0, 6)[:2] == (ErrorCode.offset_out_of_range, 7)
        assert _read_all(three.bootstrap, topic_name, 0, 3) == _values(0, range(7, PER_PARTITION))
    finally:
        three.kill()
