"""Memory is bounded by settings, not by clients (DESIGN.md invariant 8), and bad input gets a Kafka error and
loses nothing: hostile and greedy clients over real sockets against a broker process, whose resident memory is
read from /proc.

- a length prefix announcing 100 MiB allocates nothing until the bytes come; idle connections cost kilobytes;
- many large pipelined produce requests are held back by queued_max_request_bytes (reading pauses), all are
  committed, and another client is served meanwhile;
- a gzip bomb (a small batch, built by kafka-python, whose records inflate far beyond max.message.bytes) gets
  MESSAGE_TOO_LARGE and nothing is stored; so does an old client's compressed message set;
- a client that goes away with many produce requests pipelined leaves its records committed and no asyncio
  complaint (a coroutine never awaited, an exception never retrieved) in the broker's log.

The sizes in the assertions are generous: what they tell apart is kilobytes from megabytes per connection, and a
bound of megabytes from hundreds of them.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.protocol.old import produce as old_produce
from kafka.protocol.producer.produce import ProduceResponse
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from tests import services
from tests.integration.brokers import BrokerProcess, free_port
from tests.integration.clients import RawClient, create_topic, decode_records, make_batch
from tests.integration.java_client import JavaClient, ensure_built
from tests.integration.java_client import Record as JavaRecord

MiB = 1024 * 1024
MESSAGE_TOO_LARGE = 10
ASYNCIO_COMPLAINTS = ("was never awaited", "exception was never retrieved", "Task was destroyed but it is pending")


def _status(pid: int, field: str) -> int:
    """A size from /proc/<pid>/status (VmRSS: resident now, VmHWM: the most it ever was), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _api_versions(sock: socket.socket, correlation_id: int) -> None:
    """ApiVersions v0 on a raw socket, and its answer read."""
    payload = struct.pack(">hhih", 18, 0, correlation_id, 4) + b"idle"
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _exactly(sock, 4))[0]
    assert struct.unpack_from(">i", _exactly(sock, size))[0] == correlation_id


def _exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "the broker closed the connection"
        out += chunk
    return out


def _round_trip(bootstrap: str, topic: str, value: bytes) -> None:
    """Produce one record with librdkafka and read it back: the broker serves."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "message.timeout.ms": 10_000,
                         "enable.idempotence": False})
    delivered = []
    producer.produce(topic, value=value, partition=0,
                     on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
    producer.flush(10)
    assert delivered and delivered[0][0] is None, delivered
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "memory-test", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, delivered[0][1])])
        msg = _wait_for(lambda: consumer.poll(0.2), 10, "the record to come back")
        assert msg.error() is None and msg.value() == value
    finally:
        consumer.close()


def _log_end(bootstrap: str, topic: str, partition: int) -> int:
    with RawClient(bootstrap) as c:
        data = c.fetch({(topic, partition): 0}, max_wait_ms=0, partition_max_bytes=1024)[(topic, partition)]
    assert data.error_code == 0, data
    return data.high_watermark


@pytest.fixture(scope="module")
def java() -> JavaClient:
    return JavaClient(ensure_built())


@pytest.fixture
def own_broker(tmp_path):
    """Start a broker of this test's own (its memory is measured), stopped at the end; its log is printed."""
    started: list[BrokerProcess] = []

    def start(*extra_args: str) -> BrokerProcess:
        b = BrokerProcess(tmp_path / f"broker-{len(started)}", extra_args=list(extra_args)).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()
        print(f"--- log of broker {b.bootstrap} (last 30 lines)\n" + "\n".join(b.log().splitlines()[-30:]))


# --------------------------------------------------------------------------------------------- connections


def test_a_huge_length_prefix_allocates_nothing(own_broker):
    """Eight connections each announce a 100 MiB request and send 4 bytes of it (before: +800 MB at once); the
    broker stays small and keeps serving other clients."""
    b = own_broker()
    topic = _topic("prefix")
    _round_trip(b.bootstrap, topic, b"warm-up")
    before = _status(b.proc.pid, "VmRSS")
    hostile = []
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", b.port), timeout=10)
        s.sendall(struct.pack(">i", 100 * MiB) + b"\x00\x00\x00\x00")
        hostile.append(s)
    _round_trip(b.bootstrap, topic, b"served while 800 MiB are announced")
    assert _status(b.proc.pid, "VmRSS") - before < 64 * MiB
    for s in hostile:
        s.close()
    _round_trip(b.bootstrap, topic, b"served after")


def test_idle_connections_cost_kilobytes(own_broker):
    """300 connections, each answered once, then idle (before: 1 MiB of buffer each)."""
    b = own_broker()
    socks = [socket.create_connection(("127.0.0.1", b.port), timeout=10)]
    _api_versions(socks[0], 0)
    before = _status(b.proc.pid, "VmRSS")
    for i in range(1, 301):
        socks.append(socket.create_connection(("127.0.0.1", b.port), timeout=10))
        _api_versions(socks[-1], i)
    grown = _status(b.proc.pid, "VmRSS") - before
    assert grown < 300 * 100 * 1024, f"{grown / 300 / 1024:.0f} KiB per idle connection"
    for i, s in enumerate(socks):  # all still served
        _api_versions(s, 1000 + i)
        s.close()


def test_back_pressure_holds_many_large_requests(own_broker):
    """32 connections each pipeline 10 produce requests of 900 KB (288 MB at once) into a broker whose
    queued_max_request_bytes is 8 MiB: its memory stays far below what is offered, every request is committed,
    and a librdkafka client is served meanwhile."""
    b = own_broker("--queued-max-request-bytes", str(8 * MiB), "--fetch-cache-bytes", str(MiB),
                   "--default-partitions", "4")
    topic, other = _topic("flood"), _topic("beside")
    batch = make_batch([(b"k%d" % i, bytes([i % 251]) * 1000) for i in range(900)])
    connections, requests = 32, 10
    with RawClient(b.bootstrap) as c:
        c.metadata([topic])
        assert c.produce({(topic, 0): batch})[(topic, 0)].error_code == 0  # warm-up
    _round_trip(b.bootstrap, other, b"warm-up")
    before = _status(b.proc.pid, "VmRSS")
    errors: list = []

    def flood(n: int) -> None:
        try:
            with RawClient(b.bootstrap, timeout=120) as c:
                ids = [c.send(RawClient.produce_request({(topic, n % 4): batch}), 9) for _ in range(requests)]
                for want in ids:
                    response = c.receive(ProduceResponse, 9)
                    assert response.header.correlation_id == want
                    p = response.responses[0].partition_responses[0]
                    assert p.error_code == 0, p
        except BaseException as e:  # noqa: BLE001 - checked below
            errors.append(e)

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    _round_trip(b.bootstrap, other, b"served during the flood")
    for t in threads:
        t.join(180)
    assert not errors, errors[:3]
    peak = _status(b.proc.pid, "VmHWM") - before
    offered = connections * requests * len(batch)
    assert peak < 128 * MiB, f"peak RSS grew {peak / MiB:.0f} MiB for {offered / MiB:.0f} MiB offered"
    total = sum(_log_end(b.bootstrap, topic, p) for p in range(4))
    assert total == 900 * (1 + connections * requests)


# --------------------------------------------------------------------------------------------- decompression bombs


def _gzip_bomb(inflated_mib: int) -> bytes:
    """A v2 batch built by kafka-python's producer code: inflated_mib records of 1 MiB of zeros, gzip."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=1, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 31)
    for i in range(inflated_mib):
        builder.append(i, 1_700_000_000_000, b"k", bytes(MiB), [])
    return bytes(builder.build())


def test_a_gzip_bomb_is_refused_and_nothing_is_stored(broker):
    """A 256 KiB gzip batch whose records inflate to 256 MiB (max.message.bytes: 1 MiB) gets MESSAGE_TOO_LARGE;
    the other partition of the same request is stored; the partition holds nothing; the broker serves on."""
    topic = _topic("bomb")
    create_topic(broker.bootstrap, topic, 2)
    bomb = _gzip_bomb(256)
    assert len(bomb) < MiB
    good = make_batch([(b"k", b"fits")], codec="gzip")
    with RawClient(broker.bootstrap) as c:
        c.metadata([topic])
        response = c.produce({(topic, 0): bomb, (topic, 1): good})
        assert response[(topic, 0)].error_code == MESSAGE_TOO_LARGE, response
        assert response[(topic, 1)].error_code == 0, response
        fetched = c.fetch({(topic, 0): 0, (topic, 1): 0})
    assert fetched[(topic, 0)].high_watermark == 0 and not decode_records(fetched[(topic, 0)].records)
    assert [v for _, _, v in decode_records(fetched[(topic, 1)].records)] == [b"fits"]
    _round_trip(broker.bootstrap, topic, b"served after the bomb")


def test_an_old_clients_compressed_message_set_is_bounded_too(broker):
    """Produce v1 with a gzip wrapper of magic 0 messages inflating to 64 MiB: MESSAGE_TOO_LARGE, nothing stored."""
    topic = _topic("legacy-bomb")
    create_topic(broker.bootstrap, topic, 1)
    legacy = LegacyRecordBatchBuilder(0, LegacyRecordBatchBuilder.CODEC_GZIP, 1 << 31)
    for i in range(64):
        legacy.append(i, None, b"k", bytes(MiB))
    request = old_produce.ProduceRequest_v1(acks=-1, timeout_ms=10_000,
                                            topic_data=[(topic, [(0, bytes(legacy.build()))])])
    request.with_header(correlation_id=7, client_id="kafka-0.9")
    with RawClient(broker.bootstrap) as c:
        c.sock.sendall(request.encode(header=True, framed=True))
        response = old_produce.ProduceResponse_v1.decode(c.receive_frame(), header=True)
    [(name, [partition])] = response.responses
    assert name == topic and partition[1] == MESSAGE_TOO_LARGE, response
    assert _log_end(broker.bootstrap, topic, 0) == 0


def _text_records(n: int, size: int = 1000) -> list[bytes]:
    """Values of text that compress about 5x."""
    words = [b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot", b"golf", b"hotel", b"india"]
    return [b" ".join(words[(i * 7 + j * 3) % len(words)] + b"%d" % (j % 97) for j in range(200))[:size]
            for i in range(n)]


def test_librdkafka_gets_message_too_large_for_a_batch_that_inflates_too_far(broker):
    """librdkafka batches up to 1 MB of records before compressing: into a topic whose max.message.bytes is 64 KiB,
    such a batch (about 200 KiB gzip) is refused and reported to the application at once (librdkafka treats
    MSG_SIZE_TOO_LARGE as permanent), nothing of it is stored, and small batches (the first ones librdkafka sends
    before its batches fill, and later ones) go in."""
    topic = _topic("inflate-rdkafka")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": str(64 * 1024)})])[topic].result(15)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": "gzip", "linger.ms": 200,
                         "batch.size": 1_000_000, "message.timeout.ms": 20_000, "enable.idempotence": False})
    reports = []
    for value in _text_records(1000):
        producer.produce(topic, value=value, partition=0, on_delivery=lambda err, msg: reports.append(err))
    started = time.monotonic()
    assert producer.flush(30) == 0
    assert time.monotonic() - started < 15, "the refusal came only when the messages timed out"
    refused = [e for e in reports if e is not None]
    assert len(reports) == 1000 and len(refused) > 500, {str(e) for e in reports}
    assert all(e.code() == KafkaError.MSG_SIZE_TOO_LARGE for e in refused), {str(e) for e in refused}
    assert _log_end(broker.bootstrap, topic, 0) == 1000 - len(refused)  # what was acked, nothing refused
    _round_trip(broker.bootstrap, topic, b"a small batch fits")


def test_the_java_producer_splits_a_batch_that_inflates_too_far(broker, java):
    """The Java producer answers MESSAGE_TOO_LARGE by splitting the batch (its estimate of the compression ratio
    lets a batch's records grow past batch.size, here the topic's max.message.bytes): every record is acked once,
    in order, and reads back the same."""
    topic = _topic("inflate-java")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "100000"})])[topic].result(15)
    values = _text_records(3000)
    records = [JavaRecord(key=b"k%d" % i, value=v, partition=0) for i, v in enumerate(values)]
    acks = java.produce(broker.bootstrap, topic, records,
                        props={"compression.type": "gzip", "batch.size": 100000, "linger.ms": 50})
    assert [a.offset for a in sorted(acks, key=lambda a: a.offset)] == list(range(3000))
    assert all(a.offset == a.index for a in acks), "records were acked out of order"
    got = java.consume(broker.bootstrap, topic, count=3000, assign="all")
    assert [(r.offset, r.value) for r in got] == list(enumerate(values))


# --------------------------------------------------------------------------------------------- closing


def _metric(http_port: int, name: str) -> float:
    """A sample of the broker's /metrics (0 when a labelled counter has not been counted yet)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_client_gone_with_produces_in_flight_leaves_them_committed(own_broker, s3_service):
    """30 produce requests pipelined on one socket, which is reset while they wait for their WAL flush (the object
    store is stalled: a MinIO of the test's own, SIGSTOPped): every record is committed once the store answers
    again (a produce that was committed stays committed; its answer is dropped), the request bytes all go back to
    the budget, and the broker logs no asyncio complaint."""
    minio = services.start_minio()
    try:
        _client_gone_with_produces_in_flight(own_broker, minio)
    finally:
        minio.resume()
        minio.stop()


def _client_gone_with_produces_in_flight(own_broker, minio) -> None:
    http_port = free_port()
    b = own_broker("--object-store", minio.url("gone"), "--http-listen", f"127.0.0.1:{http_port}")
    topic = _topic("gone")
    create_topic(b.bootstrap, topic, 1)
    produced = _metric(http_port, 'dray_requests_total{api="Produce"}')
    batch = make_batch([(b"k%d" % i, b"v%d" % i) for i in range(10)])
    request = RawClient.produce_request({(topic, 0): batch}, acks=-1)
    request.with_header(correlation_id=1, client_id="gone")
    data = bytes(request.encode(version=9, header=True, framed=True))
    minio.pause()
    with RawClient(b.bootstrap) as c:
        c.sock.sendall(data * 30)
        _wait_for(lambda: _metric(http_port, 'dray_requests_total{api="Produce"}') == produced + 30, 10,
                  "the broker to read the 30 requests")
        assert _log_end(b.bootstrap, topic, 0) == 0  # they wait for the flush
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
    minio.resume()
    _wait_for(lambda: _log_end(b.bootstrap, topic, 0) == 300, 30, "all 300 records to be committed")
    _wait_for(lambda: _metric(http_port, "dray_request_bytes") == 0, 10, "the request bytes to be given back")
    _round_trip(b.bootstrap, topic, b"served after")
    b.stop()
    complaints = [line for line in b.log().splitlines() if any(c in line for c in ASYNCIO_COMPLAINTS)]
    assert not complaints, complaints
