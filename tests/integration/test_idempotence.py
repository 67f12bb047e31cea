"""Idempotent producers: default client settings, retries after a lost response, retries to another broker, and
a broker killed while it holds a reservation (produce/producers.py), on both metadata backends."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaProducer
from kio.schema.errors import ErrorCode

from dray_broker.keyspace import PRODUCER_OWNERS
from dray_broker.metadata import open_metadata_store
from dray_broker.protocol import apis
from tests.batches import make_batch
from tests.integration.brokers import BrokerProcess
from tests.integration.conftest import BACKENDS
from tests.integration.wire import Wire, request


def _read_all(bootstrap: str, topic: str, partition: int, expected: int, timeout: float = 20) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "read-all", "enable.auto.commit": False,
                         "log_level": 3})
    consumer.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                assert m.error() is None, m.error()
                out.append((m.offset(), m.key(), m.value()))
        # Nothing more than expected arrives (no duplicates appended after).
        out += [(m.offset(), m.key(), m.value()) for m in consumer.consume(1000, 0.5) if m.error() is None]
    finally:
        consumer.close()
    return out


def _assert_exactly_once(records, n):
    assert [o for o, _, _ in records] == list(range(n)), "offsets must be dense from 0"
    assert sorted(int(k) for _, k, _ in records) == list(range(n)), "each record exactly once"


def test_kafka_python_default_settings_store_each_record_once(broker, topic_name):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=10_000)  # idempotent by default
    futures = [producer.send(topic_name, key=b"%d" % i, value=b"v%d" % i, partition=0) for i in range(3000)]
    producer.flush(20)
    offsets = [f.get(10).offset for f in futures]
    producer.close(5)
    assert offsets == list(range(3000))
    _assert_exactly_once(_read_all(broker.bootstrap, topic_name, 0, 3000), 3000)


@pytest.fixture
def faulty_broker(tmp_path):
    """A broker that closes the connection instead of answering its first produce responses (after commit)."""
    b = BrokerProcess(tmp_path, env={"DRAY_FAULTS": "drop-produce-response=3"}).start()
    yield b
    b.stop()


def test_lost_responses_make_confluent_retry_and_each_record_lands_once(faulty_broker, topic_name):
    producer = Producer({"bootstrap.servers": faulty_broker.bootstrap, "enable.idempotence": True, "linger.ms": 5,
                         "message.timeout.ms": 30000, "log_level": 0})
    errors = []
    for i in range(2000):
        producer.produce(topic_name, key=b"%d" % i, value=b"v", partition=0,
                         on_delivery=lambda err, msg: err and errors.append(err))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []
    assert faulty_broker.log().count("injecting fault drop-produce-response") == 3
    _assert_exactly_once(_read_all(faulty_broker.bootstrap, topic_name, 0, 2000), 2000)


def test_lost_responses_make_kafka_python_retry_and_each_record_lands_once(faulty_broker, topic_name):
    producer = KafkaProducer(bootstrap_servers=faulty_broker.bootstrap, request_timeout_ms=10_000, retries=10,
                             linger_ms=5)
    futures = [producer.send(topic_name, key=b"%d" % i, value=b"v", partition=0) for i in range(1500)]
    producer.flush(30)
    for f in futures:
        f.get(10)
    producer.close(5)
    assert "injecting fault drop-produce-response" in faulty_broker.log()
    _assert_exactly_once(_read_all(faulty_broker.bootstrap, topic_name, 0, 1500), 1500)


# --- two brokers, raw protocol ---------------------------------------------------------------------------------


@pytest.fixture
def two_brokers(tmp_path):
    shared = [f"--metadata=sqlite://{tmp_path}/meta.db", f"--object-store=file://{tmp_path}/objects"]
    a = BrokerProcess(tmp_path / "a", extra_args=shared).start()
    b = BrokerProcess(tmp_path / "b", extra_args=shared).start()
    yield a, b
    a.stop()
    b.stop()


def _produce_request(topic: str, batch: bytes):
    return request(apis.PRODUCE, 9, "ProduceRequest", transactional_id=None, acks=-1, timeout=10_000, topic_data=(
        request(apis.PRODUCE, 9, "TopicProduceData", name=topic, partition_data=(
            request(apis.PRODUCE, 9, "PartitionProduceData", index=0, records=batch),)),))


def _produce(wire: Wire, topic: str, batch: bytes):
    part = wire.call(apis.PRODUCE, 9, _produce_request(topic, batch)).responses[0].partition_responses[0]
    return part.error_code, part.base_offset


def _init_producer_id(wire: Wire) -> tuple[int, int]:
    r = wire.call(apis.INIT_PRODUCER_ID, 4, request(apis.INIT_PRODUCER_ID, 4, "InitProducerIdRequest",
                                                    transactional_id=None, transaction_timeout=60_000,
                                                    producer_id=-1, producer_epoch=-1))
    assert r.error_code == ErrorCode.none
    return r.producer_id, r.producer_epoch


def _log_end(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "le", "log_level": 3})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        c.close()


def test_retries_of_one_batch_on_two_brokers_store_it_once(two_brokers, topic_name):
    a, b = two_brokers
    wa, wb = Wire(a.bootstrap), Wire(b.bootstrap)
    try:
        Producer({"bootstrap.servers": a.bootstrap, "log_level": 3}).list_topics(topic_name, timeout=10)  # create
        pid, epoch = _init_producer_id(wa)
        assert _init_producer_id(wb)[0] != pid, "producer ids are unique across brokers"

        def batch(seq, n=3):
            return make_batch([(b"k", b"%d" % (seq + i)) for i in range(n)], producer_id=pid, producer_epoch=epoch,
                              base_sequence=seq)

        assert _produce(wa, topic_name, batch(0)) == (ErrorCode.none, 0)
        assert _produce(wb, topic_name, batch(0)) == (ErrorCode.none, 0), "a retry on another broker is a duplicate"
        assert _produce(wa, topic_name, batch(0)) == (ErrorCode.none, 0)

        # The same next batch sent to both brokers at the same moment: stored once; both answer its offset
        # (or one answers a retriable error while the other appends, and its retry then gets the offset).
        results = {}

        def send(name, wire):
            deadline = time.monotonic() + 30
            while True:
                code, offset = _produce(wire, topic_name, batch(3))
                if code != ErrorCode.request_timed_out or time.monotonic() > deadline:
                    results[name] = (code, offset)
                    return
                time.sleep(0.2)

        threads = [threading.Thread(target=send, args=(n, w)) for n, w in (("a", wa), ("b", wb))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {"a": (ErrorCode.none, 3), "b": (ErrorCode.none, 3)}
        assert _log_end(a.bootstrap, topic_name) == 6

        # Sequence and epoch errors, on either broker.
        assert _produce(wb, topic_name, batch(10))[0] == ErrorCode.out_of_order_sequence_number
        assert _produce(wa, topic_name, batch(6)) == (ErrorCode.none, 6)
        old = make_batch([(b"k", b"x")], producer_id=pid, producer_epoch=epoch - 1 if epoch else 0,
                         base_sequence=9)
        if epoch > 0:
            assert _produce(wb, topic_name, old)[0] == ErrorCode.invalid_producer_epoch
        bumped = make_batch([(b"k", b"x")], producer_id=pid, producer_epoch=epoch + 1, base_sequence=0)
        assert _produce(wb, topic_name, bumped) == (ErrorCode.none, 9)
        stale = make_batch([(b"k", b"x")], producer_id=pid, producer_epoch=epoch, base_sequence=9)
        assert _produce(wa, topic_name, stale)[0] == ErrorCode.invalid_producer_epoch
        assert _log_end(a.bootstrap, topic_name) == 10
    finally:
        wa.close()
        wb.close()


def test_producer_state_survives_a_restart(tmp_path, topic_name):
    broker = BrokerProcess(tmp_path).start()
    try:
        wire = Wire(broker.bootstrap)
        Producer({"bootstrap.servers": broker.bootstrap, "log_level": 3}).list_topics(topic_name, timeout=10)
        pid, epoch = _init_producer_id(wire)
        first = make_batch([(b"k", b"1"), (b"k", b"2")], producer_id=pid, producer_epoch=epoch, base_sequence=0)
        assert _produce(wire, topic_name, first) == (ErrorCode.none, 0)
        wire.close()
        broker.kill()
        broker.start()
        wire = Wire(broker.bootstrap)
        assert _produce(wire, topic_name, first) == (ErrorCode.none, 0), "the retry after a restart is a duplicate"
        second = make_batch([(b"k", b"3")], producer_id=pid, producer_epoch=epoch, base_sequence=2)
        assert _produce(wire, topic_name, second) == (ErrorCode.none, 2)
        wire.close()
        assert _log_end(broker.bootstrap, topic_name) == 3
    finally:
        broker.stop()


def test_producer_state_expires(tmp_path, topic_name):
    """After producer.id.expiration.ms without writes, a producer is unknown again: any sequence is accepted."""
    broker = BrokerProcess(tmp_path, extra_args=["--producer-id-expiration-ms", "1000"]).start()
    try:
        wire = Wire(broker.bootstrap)
        Producer({"bootstrap.servers": broker.bootstrap, "log_level": 3}).list_topics(topic_name, timeout=10)
        pid, epoch = _init_producer_id(wire)
        first = make_batch([(b"k", b"1")], producer_id=pid, producer_epoch=epoch, base_sequence=0)
        assert _produce(wire, topic_name, first) == (ErrorCode.none, 0)
        gap = make_batch([(b"k", b"2")], producer_id=pid, producer_epoch=epoch, base_sequence=7)
        assert _produce(wire, topic_name, gap)[0] == ErrorCode.out_of_order_sequence_number
        # Until the state expires the gap stays refused (and nothing is written); then it is accepted.
        deadline = time.monotonic() + 15
        while (result := _produce(wire, topic_name, gap))[0] == ErrorCode.out_of_order_sequence_number:
            assert time.monotonic() < deadline, "the producer state never expired"
            time.sleep(0.1)
        assert result == (ErrorCode.none, 1)
        wire.close()
    finally:
        broker.stop()


# --- a broker killed while it holds a reservation ---------------------------------------------------------------

SESSION_TIMEOUT_MS = 4000


@pytest.fixture(params=BACKENDS)
def shared_storage(request, tmp_path) -> tuple[str, str]:
    """(metadata URL, object store URL) for brokers of one cluster: embedded, or Oxia + MinIO."""
    if request.param == "embedded":
        return f"sqlite://{tmp_path}/meta.db", f"file://{tmp_path}/objects"
    oxia, s3 = request.getfixturevalue("oxia_service"), request.getfixturevalue("s3_service")
    return f"oxia://{oxia.address}", s3.url(f"idem-{uuid.uuid4().hex[:8]}")


def _start(tmp_path, name: str, storage: tuple[str, str], faults: str = "") -> BrokerProcess:
    return BrokerProcess(tmp_path / name, metadata=storage[0], object_store=storage[1],
                         extra_args=["--session-timeout-ms", str(SESSION_TIMEOUT_MS)],
                         env={"DRAY_FAULTS": faults} if faults else {}).start()


def _owner_keys(metadata_url: str) -> set[str]:
    """The reservation owners alive: one ephemeral key per broker metadata session."""
    async def scan():
        store = await open_metadata_store(metadata_url)
        try:
            return set(await store.list(PRODUCER_OWNERS.prefix, PRODUCER_OWNERS.end))
        finally:
            await store.close()

    return asyncio.run(scan())


def _wait_for(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _batch(pid: int, epoch: int, seq: int, n: int = 3) -> bytes:
    return make_batch([(b"%d" % (seq + i), b"v") for i in range(n)], producer_id=pid, producer_epoch=epoch,
                      base_sequence=seq)


def test_a_killed_brokers_reservation_is_void_as_soon_as_its_session_ends(tmp_path, shared_storage, topic_name):
    """Broker a reserves sequence 3 and dies before its index append. While a's session lives nobody can know
    whether a still appends it: its retry and the next sequence get a retriable error, and nothing is accepted past
    it. The moment the session ends the reservation is void and the retry of sequence 3 is appended at once. A
    sequence past a gap is never accepted: past the voided batch (which the client resends first) it gets the
    retriable REQUEST_TIMED_OUT, past a batch nobody ever reserved OUT_OF_ORDER_SEQUENCE_NUMBER."""
    a = _start(tmp_path, "a", shared_storage, faults="stall-before-index=1")
    b = _start(tmp_path, "b", shared_storage)
    wa, wb = Wire(a.bootstrap), Wire(b.bootstrap)
    try:
        Producer({"bootstrap.servers": b.bootstrap, "log_level": 3}).list_topics(topic_name, timeout=10)
        pid, epoch = _init_producer_id(wb)
        assert _produce(wb, topic_name, _batch(pid, epoch, 0)) == (ErrorCode.none, 0)
        owners = _owner_keys(shared_storage[0])
        wa.send(apis.PRODUCE, 9, _produce_request(topic_name, _batch(pid, epoch, 3)))
        _wait_for(lambda: "injecting fault stall-before-index" in a.log(), "a to hang before its index append")
        a.kill()

        assert _produce(wb, topic_name, _batch(pid, epoch, 3))[0] == ErrorCode.request_timed_out
        assert _produce(wb, topic_name, _batch(pid, epoch, 6))[0] == ErrorCode.request_timed_out
        assert _owner_keys(shared_storage[0]) == owners, "a's session was still alive during those answers"

        _wait_for(lambda: len(_owner_keys(shared_storage[0])) == len(owners) - 1, "a's session to end")
        assert _produce(wb, topic_name, _batch(pid, epoch, 6))[0] == ErrorCode.request_timed_out
        assert _produce(wb, topic_name, _batch(pid, epoch, 3)) == (ErrorCode.none, 3)
        assert _produce(wb, topic_name, _batch(pid, epoch, 9))[0] == ErrorCode.out_of_order_sequence_number
        assert _produce(wb, topic_name, _batch(pid, epoch, 6)) == (ErrorCode.none, 6)
        _assert_exactly_once(_read_all(b.bootstrap, topic_name, 0, 9), 9)
    finally:
        wa.close()
        wb.close()
        a.kill()
        b.stop()


def test_a_retry_after_a_crash_gets_the_offset_committed_before_it(tmp_path, shared_storage, topic_name):
    """Broker a commits sequence 3, then dies before answering: the retry on b gets offset 3 at once, while a's
    session still lives (the index shows the batch), and the next sequence follows."""
    a = _start(tmp_path, "a", shared_storage, faults="drop-produce-response=1")
    b = _start(tmp_path, "b", shared_storage)
    wa, wb = Wire(a.bootstrap), Wire(b.bootstrap)
    try:
        Producer({"bootstrap.servers": b.bootstrap, "log_level": 3}).list_topics(topic_name, timeout=10)
        pid, epoch = _init_producer_id(wb)
        assert _produce(wb, topic_name, _batch(pid, epoch, 0)) == (ErrorCode.none, 0)
        owners = _owner_keys(shared_storage[0])
        with pytest.raises(ConnectionError):
            _produce(wa, topic_name, _batch(pid, epoch, 3))
        a.kill()

        assert _produce(wb, topic_name, _batch(pid, epoch, 3)) == (ErrorCode.none, 3)
        assert _produce(wb, topic_name, _batch(pid, epoch, 6)) == (ErrorCode.none, 6)
        assert _owner_keys(shared_storage[0]) == owners, "answered while a's session was still alive"
        _assert_exactly_once(_read_all(b.bootstrap, topic_name, 0, 9), 9)
    finally:
        wa.close()
        wb.close()
        a.kill()
        b.stop()
