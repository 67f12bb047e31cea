"""Produce and consume with real Kafka clients (confluent-kafka, aiokafka, kafka-python, kcat), the same way for each.

    create_topic(bootstrap, topic, 3)                                  # CreateTopics (confluent AdminClient)
    records = make_records(10_000, partitions=3, seed=1)              # what to send (partition chosen per record)
    acked = produce("aiokafka", bootstrap, topic, records, codec="lz4")  # the same records with their offsets
    read_back("kcat", bootstrap, topic, acked)                         # consume() + assert_same_records()

    with RawClient(bootstrap) as c:                                    # raw requests (kafka-python's classes)
        c.produce({(topic, 0): make_batch([(b"k", b"v")])}); c.fetch({(topic, 0): 0}, max_wait_ms=0)

A producer returns the records in the order given, each with the offset its delivery report (or send future)
gave. kcat reports no offsets: it produces each partition's records in one ordered stream, so on a fresh topic
their offsets are 0, 1, 2, ... in input order; produce("kcat") returns those.

A consumer assigns the partitions itself (no consumer group), starts at the given offsets (0 by default) and
reads until each partition has the expected number of records, then checks that the partition's high watermark
is exactly there (nothing more was stored). It returns the records in the order read.

Record data stays in what kcat's -f output and -H/-K input can carry (printable ASCII without tab, newline,
',' or '='), so that every client can read every other client's records. kcat cannot tell a null key or value from
an empty one (librdkafka hands both over as NULL): read_back() compares them as equal for kcat only.

Every produce, consume and read_back takes tls=ClientTls(ca, cert, key) to connect to an ssl listener (with a client
certificate: mTLS), each client configured as its users do.
"""

from __future__ import annotations

import asyncio
import random
import string
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
CLIENTS = ("confluent", "aiokafka", "kafka-python", "kcat")
KCAT = "/usr/bin/kcat"

# Timestamps the producers set explicitly (kcat cannot): a fixed base, so a read back proves they were kept.
BASE_TIMESTAMP = 1_700_000_000_000



@dataclass(frozen=True)
class ClientTls:
    """How a client connects to an ssl listener: the CA that signed the broker's certificate and, for mTLS, the
    client's certificate and key (bundle: both in one PEM file, as the Java client's PEM keystore)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    bundle: Path | None = None

    def librdkafka(self) -> dict[str, str]:
        """confluent-kafka's and kcat's properties."""
        props = {"security.protocol": "ssl", "ssl.ca.location": str(self.ca)}
        if self.cert is not None and self.key is not None:
            props |= {"ssl.certificate.location": str(self.cert), "ssl.key.location": str(self.key)}
        return props

    def kafka_python(self) -> dict[str, Any]:
        return {"security_protocol": "SSL", "ssl_cafile": str(self.ca), "ssl_check_hostname": True,
                "ssl_certfile": str(self.cert) if self.cert else None,
                "ssl_keyfile": str(self.key) if self.key else None}

    def aiokafka(self) -> dict[str, Any]:
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(cafile=str(self.ca), certfile=str(self.cert) if self.cert else None,
                                     keyfile=str(self.key) if self.key else None)
        return {"security_protocol": "SSL", "ssl_context": context}

    def java(self) -> dict[str, str]:
        """The Java client's properties (PEM trust and key stores, KIP-651)."""
        props = {"security.protocol": "SSL", "ssl.truststore.type": "PEM", "ssl.truststore.location": str(self.ca)}
        if self.bundle is not None:
            props |= {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(self.bundle)}
        return props

    def kcat(self) -> list[str]:
        return [arg for k, v in self.librdkafka().items() for arg in ("-X", f"{k}={v}")]


def _tls_config(tls: ClientTls | None, client: str) -> Any:
    if tls is None:
        return [] if client == "kcat" else {}
    return {"confluent": tls.librdkafka, "kafka-python": tls.kafka_python, "aiokafka": tls.aiokafka,
            "kcat": tls.kcat}[client]()


_TEXT = (string.ascii_letters + string.digits + " .:;_-+/()[]{}!?#$%&*").encode()


@dataclass(frozen=True)
class Rec:
    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int | None = None  # None: not set by the producer, not compared
    offset: int = -1

    def comparable(self, with_timestamp: bool, nulls_as_empty: bool = False) -> tuple:
        key, value = self.key, self.value
        if nulls_as_empty:
            key, value = key or b"", value or b""
        return (self.partition, self.offset, key, value, self.headers, self.timestamp if with_timestamp else None)


# --------------------------------------------------------------------------------------------- records


def kcat_headers(partition: int) -> tuple[tuple[str, bytes], ...]:
    """kcat sends the same -H headers with every record of an invocation: one set per partition (a repeated key
    included, to check that order and duplicates survive)."""
    return (("part", str(partition).encode()), ("tool", b"kcat"), ("part", b"again-%d" % partition))


def make_records(n: int, partitions: int, *, seed: int = 0, for_kcat: bool = False) -> list[Rec]:
    """n records spread over partitions (round robin with random runs), with keys, values of 0 B to ~2 KiB,
    0-3 headers (repeated keys included) and explicit timestamps. for_kcat: what kcat can send (non-empty keys,
    non-null values, the fixed per-partition headers, no timestamps)."""
    rnd = random.Random(seed)
    out = []
    partition = 0
    for i in range(n):
        if rnd.random() < 0.3:
            partition = rnd.randrange(partitions)
        size = rnd.choice((0, 1, 8, 40, 100, 300)) if rnd.random() < 0.97 else rnd.randrange(500, 2048)
        value = bytes(rnd.choices(_TEXT, k=size))
        key = b"key-%d-%d" % (i, rnd.randrange(1000))
        if for_kcat:
            out.append(Rec(partition, key, value, kcat_headers(partition)))
            continue
        if i % 97 == 5:
            key = None
        if i % 89 == 7 and key is not None:  # aiokafka refuses a record with neither
            value = None
        headers = tuple((rnd.choice(("a", "b", "trace-id")), bytes(rnd.choices(_TEXT, k=rnd.randrange(0, 20))))
                        for _ in range(rnd.choice((0, 0, 1, 2, 3))))
        out.append(Rec(partition, key, value, headers, BASE_TIMESTAMP + i))
    return out


def expected_counts(records: Iterable[Rec], partitions: int | None = None) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    for r in records:
        counts[r.partition] += 1
    if partitions is not None:
        for p in range(partitions):
            counts.setdefault(p, 0)
    return dict(counts)


def by_partition(records: Iterable[Rec]) -> dict[int, list[Rec]]:
    out: dict[int, list[Rec]] = defaultdict(list)
    for r in records:
        out[r.partition].append(r)
    return dict(out)


def assert_offsets_as_kafka(acked: list[Rec], start: dict[int, int] | None = None) -> None:
    """Per partition, the producer's records got dense offsets in the order they were sent."""
    for p, recs in by_partition(acked).items():
        first = (start or {}).get(p, 0)
        offsets = [r.offset for r in recs]
        assert offsets == list(range(first, first + len(recs))), (
            f"partition {p}: offsets are not dense from {first} in send order: {_first_gap(offsets, first)}")


def assert_same_records(acked: list[Rec], read: list[Rec], *, nulls_as_empty: bool = False) -> None:
    """What was read is exactly what was acked: per partition the same records (key, value, headers, timestamp
    where the producer set one) at the same offsets, in offset order, and nothing else.

    nulls_as_empty: the reader cannot tell a null key or value from an empty one (kcat: librdkafka hands both
    over as a NULL pointer, so -Z prints NULL for both)."""
    with_ts = all(r.timestamp is not None for r in acked)
    want = by_partition(acked)
    got = by_partition(read)
    assert sorted(got) == sorted(p for p, rs in want.items() if rs), f"partitions read {sorted(got)} != {sorted(want)}"
    for p, recs in want.items():
        expected = [r.comparable(with_ts, nulls_as_empty) for r in sorted(recs, key=lambda r: r.offset)]
        actual = [r.comparable(with_ts, nulls_as_empty) for r in got.get(p, [])]
        if expected != actual:
            for i, (e, a) in enumerate(zip(expected, actual)):
                if e != a:
                    raise AssertionError(f"partition {p}, record #{i}: expected {e!r}, read {a!r}")
            raise AssertionError(f"partition {p}: expected {len(expected)} records, read {len(actual)}")


def _first_gap(offsets: list[int], first: int) -> str:
    for i, o in enumerate(offsets):
        if o != first + i:
            return f"record #{i} has offset {o}, expected {first + i}"
    return "ok"


# --------------------------------------------------------------------------------------------- topics


def create_topic(bootstrap: str, name: str, partitions: int, timeout: float = 10.0) -> None:
    """CreateTopics through confluent-kafka's AdminClient; fails the test if the broker refuses."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000)})
    futures = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=timeout, request_timeout=timeout)
    futures[name].result(timeout)


# --------------------------------------------------------------------------------------------- produce


def produce(client: str, bootstrap: str, topic: str, records: list[Rec], *, codec: str = "none",
            acks: int | str = "all", timeout: float = 15.0, confluent_config: dict | None = None,
            tls: ClientTls | None = None) -> list[Rec]:
    """Send records with client and codec; return them with their offsets. With acks=0 no offset comes back:
    confluent and kcat give -1, kafka-python makes some up (do not use them). confluent_config: more librdkafka
    properties for the confluent producer."""
    assert codec in CODECS, codec
    if client == "confluent":
        return _produce_confluent(bootstrap, topic, records, codec, acks, timeout,
                                  {**_tls_config(tls, client), **(confluent_config or {})})
    assert confluent_config is None, "confluent_config is for the confluent producer"
    fn = {"aiokafka": _produce_aiokafka, "kafka-python": _produce_kafka_python, "kcat": _produce_kcat}[client]
    return fn(bootstrap, topic, records, codec, acks, timeout, _tls_config(tls, client))


def _produce_confluent(bootstrap, topic, records, codec, acks, timeout, config):
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap, "compression.type": codec, "acks": str(acks), "linger.ms": 5,
        "message.timeout.ms": int(timeout * 1000), "socket.timeout.ms": int(timeout * 1000),
        "enable.idempotence": False, **config,
    })
    offsets: list[int | None] = [None] * len(records)
    errors = []

    def report(i):
        def on_delivery(err, msg):
            if err is not None:
                errors.append((i, err))
            else:
                offset = msg.offset()  # None when acks=0: the broker tells nothing
                offsets[i] = -1 if offset is None or offset < 0 else offset
        return on_delivery

    for i, r in enumerate(records):
        while True:
            try:
                producer.produce(topic, value=r.value, key=r.key, partition=r.partition, headers=list(r.headers),
                                 timestamp=r.timestamp or 0, on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(timeout)
    assert left == 0, f"confluent: {left} records not delivered in {timeout}s"
    assert not errors, f"confluent delivery errors: {errors[:5]}"
    return [replace(r, offset=o) for r, o in zip(records, offsets)]


def _produce_aiokafka(bootstrap, topic, records, codec, acks, timeout, tls):
    from aiokafka import AIOKafkaProducer

    async def run():
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, compression_type=None if codec == "none" else codec, acks=acks,
            linger_ms=5, request_timeout_ms=int(timeout * 1000), enable_idempotence=False, **tls,
        )
        await producer.start()
        try:
            futures = [await producer.send(topic, value=r.value, key=r.key, partition=r.partition,
                                           timestamp_ms=r.timestamp, headers=list(r.headers)) for r in records]
            metadata = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        finally:
            await producer.stop()
        return metadata

    metadata = asyncio.run(run())
    return [replace(r, offset=m.offset) for r, m in zip(records, metadata)]


def _produce_kafka_python(bootstrap, topic, records, codec, acks, timeout, tls):
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, compression_type=None if codec == "none" else codec, acks=acks, linger_ms=5,
        enable_idempotence=False, request_timeout_ms=int(timeout * 1000), max_block_ms=int(timeout * 1000), **tls,
    )
    try:
        futures = [producer.send(topic, value=r.value, key=r.key, partition=r.partition, timestamp_ms=r.timestamp,
                                 headers=list(r.headers)) for r in records]
        producer.flush(timeout)
        metadata = [f.get(timeout) for f in futures]
    finally:
        producer.close(timeout=5)
    return [replace(r, offset=m.offset) for r, m in zip(records, metadata)]


def _produce_kcat(bootstrap, topic, records, codec, acks, timeout, tls):
    assert acks in ("all", -1, 1, "1", 0, "0")
    out = list(records)
    next_offset: dict[int, int] = defaultdict(int)
    for p, recs in sorted(by_partition(records).items()):
        headers = recs[0].headers
        for r in recs:
            assert r.key and r.value is not None and r.timestamp is None and r.headers == headers, r
            assert b"\t" not in r.key and b"\n" not in r.key + r.value, r
        args = [KCAT, "-P", "-b", bootstrap, "-t", topic, "-p", str(p), "-K", "\\t", "-D", "\\n",
                "-X", f"compression.codec={codec}", "-X", f"acks={acks}", "-X", "linger.ms=5",
                "-X", f"message.timeout.ms={int(timeout * 1000)}", "-m", str(int(timeout)), *tls]
        for k, v in headers:
            args += ["-H", f"{k}={v.decode()}"]
        data = b"".join(r.key + b"\t" + r.value + b"\n" for r in recs)
        done = subprocess.run(args, input=data, capture_output=True, timeout=timeout + 5)
        assert done.returncode == 0 and b"fail" not in done.stderr.lower(), (
            f"kcat -P exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    for i, r in enumerate(out):
        out[i] = replace(r, offset=next_offset[r.partition])
        next_offset[r.partition] += 1
    return out


# --------------------------------------------------------------------------------------------- consume


def consume(client: str, bootstrap: str, topic: str, counts: dict[int, int], *, start: dict[int, int] | None = None,
            timeout: float = 15.0, tls: ClientTls | None = None, dense: bool = True) -> list[Rec]:
    """Read counts[p] records of each partition p from start[p] (default 0), then check that the high watermark is
    start + count: exactly these records are stored (not with dense=False: a compacted topic's offsets have gaps).
    Records come back in the order read."""
    start = {p: (start or {}).get(p, 0) for p in counts}
    fn = {"confluent": _consume_confluent, "aiokafka": _consume_aiokafka, "kafka-python": _consume_kafka_python,
          "kcat": _consume_kcat}[client]
    records, high_watermarks = fn(bootstrap, topic, counts, start, timeout, _tls_config(tls, client))
    got = expected_counts(records, None)
    for p, n in counts.items():
        assert got.get(p, 0) == n, f"{client}: partition {p}: read {got.get(p, 0)} records, expected {n}"
        assert not dense or high_watermarks.get(p) == start[p] + n, (
            f"{client}: partition {p}: high watermark {high_watermarks.get(p)}, expected {start[p] + n}")
    return records


def read_back(reader: str, bootstrap: str, topic: str, acked: list[Rec], *, counts: dict[int, int] | None = None,
              start: dict[int, int] | None = None, timeout: float = 15.0, tls: ClientTls | None = None) -> list[Rec]:
    """consume() with reader what acked says is there, and assert_same_records() on it."""
    counts = expected_counts(acked) if counts is None else counts
    read = consume(reader, bootstrap, topic, counts, start=start, timeout=timeout, tls=tls)
    assert_same_records(acked, read, nulls_as_empty=reader == "kcat")
    return read


def _headers(h) -> tuple[tuple[str, bytes], ...]:
    return tuple((k, v) for k, v in (h or ()))


def _consume_confluent(bootstrap, topic, counts, start, timeout, tls):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "dray-tests-unused", "enable.auto.commit": False,
        "enable.partition.eof": False, "socket.timeout.ms": int(timeout * 1000), "fetch.wait.max.ms": 100, **tls,
    })
    try:
        consumer.assign([TopicPartition(topic, p, start[p]) for p in counts])
        records = []
        need = sum(counts.values())
        deadline = time.monotonic() + timeout
        while len(records) < need and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                if m.error():
                    raise AssertionError(f"confluent consumer error: {m.error()}")
                records.append(Rec(m.partition(), m.key(), m.value(), _headers(m.headers()), m.timestamp()[1],
                                   m.offset()))
        high = {}
        for p in counts:
            _, hw = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            high[p] = hw
        if any(n == 0 for n in counts.values()):
            # No fetch response may have come for an empty partition yet: wait a little for one.
            _await(lambda: all(consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1] >= 0
                               for p in counts), 5)
            high = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1] for p in counts}
        return records, high
    finally:
        consumer.close()


def _consume_aiokafka(bootstrap, topic, counts, start, timeout, tls):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    request_timeout_ms=int(timeout * 1000), fetch_max_wait_ms=100, **tls)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in counts]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, start[tp.partition])
            records = []
            need = sum(counts.values())
            deadline = time.monotonic() + timeout
            while len(records) < need and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                for tp, msgs in batches.items():
                    records.extend(Rec(m.partition, m.key, m.value, _headers(m.headers), m.timestamp, m.offset)
                                   for m in msgs)
            high = {tp.partition: consumer.highwater(tp) for tp in tps}
            return records, high
        finally:
            await consumer.stop()

    return asyncio.run(run())


def _consume_kafka_python(bootstrap, topic, counts, start, timeout, tls):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             request_timeout_ms=int(timeout * 1000), fetch_max_wait_ms=100, **tls)
    try:
        tps = [TopicPartition(topic, p) for p in counts]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        records = []
        need = sum(counts.values())
        deadline = time.monotonic() + timeout
        while len(records) < need and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=200).items():
                records.extend(Rec(m.partition, m.key, m.value, _headers(m.headers), m.timestamp, m.offset)
                               for m in msgs)
        high = {tp.partition: consumer.highwater(tp) for tp in tps}
        return records, high
    finally:
        consumer.close()


def _consume_kcat(bootstrap, topic, counts, start, timeout, tls):
    """kcat -C -e reads every partition to its end and exits; %h prints headers as k=v,k=v."""
    records = []
    high = {}
    for p in counts:
        args = [KCAT, "-C", "-b", bootstrap, "-t", topic, "-p", str(p), "-o", str(start[p]), "-e", "-Z", "-q",
                "-m", str(int(timeout)), "-f", "%p\\t%o\\t%T\\t%k\\t%s\\t%h\\n", *tls]
        done = subprocess.run(args, capture_output=True, timeout=timeout + 5)
        assert done.returncode == 0, f"kcat -C exited {done.returncode}: {done.stderr.decode(errors='replace')}"
        lines = done.stdout.split(b"\n")
        assert lines[-1] == b"", lines[-1]
        for line in lines[:-1]:
            part, offset, ts, key, value, headers = line.split(b"\t")
            records.append(Rec(
                int(part), None if key == b"NULL" else key, None if value == b"NULL" else value,
                tuple((k.decode(), v) for k, _, v in (h.partition(b"=") for h in headers.split(b",") if h)),
                int(ts), int(offset),
            ))
        # -e stops at the end of the partition: the last offset read + 1 is the end kcat saw.
        mine = [r for r in records if r.partition == p]
        high[p] = mine[-1].offset + 1 if mine else start[p]
    return records, high


def _await(condition, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


# --------------------------------------------------------------------------------------------- raw protocol


class RawClient:
    """One plain socket speaking the Kafka protocol through kafka-python's message classes (an implementation
    independent of the broker's kio): for requests no client library sends, garbage, and exact error codes."""

    def __init__(self, bootstrap: str, timeout: float = 10.0):
        import socket

        host, _, port = bootstrap.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.correlation_id = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, request, version: int) -> int:
        self.correlation_id += 1
        request.with_header(correlation_id=self.correlation_id, client_id="dray-raw-test")
        self.sock.sendall(request.encode(version=version, header=True, framed=True))
        return self.correlation_id

    def receive_frame(self) -> bytes:
        size = int.from_bytes(self._exactly(4), "big", signed=True)
        return self._exactly(size)

    def receive(self, response_cls, version: int):
        frame = self.receive_frame()
        response = response_cls[version].decode(frame, header=True)
        return response

    def call(self, request, response_cls, version: int):
        correlation_id = self.send(request, version)
        response = self.receive(response_cls, version)
        assert response.header.correlation_id == correlation_id, (response.header.correlation_id, correlation_id)
        return response

    def _exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the broker closes this connection (EOF or reset) within timeout; False if it stays open."""
        import socket

        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    # --- requests -----------------------------------------------------------------------------------------

    @staticmethod
    def metadata_request(topics: list[str] | None, *, auto_create: bool = True):
        from kafka.protocol.metadata.metadata import MetadataRequest

        return MetadataRequest(
            topics=None if topics is None else [MetadataRequest.MetadataRequestTopic(name=t) for t in topics],
            allow_auto_topic_creation=auto_create,
        )

    def metadata(self, topics: list[str] | None, *, auto_create: bool = True, version: int = 12):
        from kafka.protocol.metadata.metadata import MetadataResponse

        return self.call(self.metadata_request(topics, auto_create=auto_create), MetadataResponse, version)

    @staticmethod
    def produce_request(data: dict[tuple[str, int], bytes], *, acks: int = -1, timeout_ms: int = 10_000):
        from kafka.protocol.producer.produce import ProduceRequest

        T = ProduceRequest.TopicProduceData
        topics: dict[str, list] = defaultdict(list)
        for (topic, partition), records in data.items():
            topics[topic].append(T.PartitionProduceData(index=partition, records=records))
        return ProduceRequest(transactional_id=None, acks=acks, timeout_ms=timeout_ms,
                              topic_data=[T(name=t, partition_data=ps) for t, ps in topics.items()])

    def produce(self, data: dict[tuple[str, int], bytes], *, acks: int = -1, version: int = 9):
        """{(topic, partition): record batches} -> {(topic, partition): PartitionProduceResponse}"""
        from kafka.protocol.producer.produce import ProduceResponse

        response = self.call(self.produce_request(data, acks=acks), ProduceResponse, version)
        return {(t.name, p.index): p for t in response.responses for p in t.partition_responses}

    @staticmethod
    def fetch_request(wanted: dict[tuple[str, int], int], *, max_wait_ms: int = 0, min_bytes: int = 1,
                      max_bytes: int = 50 << 20, partition_max_bytes: int = 1 << 20):
        """{(topic, partition): fetch offset} -> a FetchRequest (send it as v12: topics by name)."""
        from kafka.protocol.consumer.fetch import FetchRequest

        T = FetchRequest.FetchTopic
        topics: dict[str, list] = defaultdict(list)
        for (topic, partition), offset in wanted.items():
            topics[topic].append(T.FetchPartition(partition=partition, current_leader_epoch=-1, fetch_offset=offset,
                                                  last_fetched_epoch=-1, log_start_offset=-1,
                                                  partition_max_bytes=partition_max_bytes))
        return FetchRequest(replica_id=-1, max_wait_ms=max_wait_ms, min_bytes=min_bytes, max_bytes=max_bytes,
                            isolation_level=0, session_id=0, session_epoch=-1,
                            topics=[T(topic=t, partitions=ps) for t, ps in topics.items()],
                            forgotten_topics_data=[], rack_id="")

    def receive_fetch(self, version: int = 12):
        """The response to a fetch_request sent earlier: {(topic, partition): PartitionData}."""
        from kafka.protocol.consumer.fetch import FetchResponse

        response = self.receive(FetchResponse, version)
        return {(t.topic, p.partition_index): p for t in response.responses for p in t.partitions}

    def fetch(self, wanted: dict[tuple[str, int], int], *, version: int = 12, **kw):
        """{(topic, partition): fetch offset} -> {(topic, partition): PartitionData} (Fetch v12 uses names);
        kw as for fetch_request."""
        self.send(self.fetch_request(wanted, **kw), version)
        return self.receive_fetch(version)


def decode_records(data: bytes | None) -> list[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of each record in fetched record batches, decoded by kafka-python."""
    from kafka.record import MemoryRecords

    out = []
    if not data:
        return out
    records = MemoryRecords(bytes(data))
    while True:
        batch = records.next_batch()
        if batch is None:
            return out
        out.extend((r.offset, r.key, r.value) for r in batch)


def make_batch(records: list[tuple[bytes | None, bytes | None]], *, codec: str = "none",
               timestamp: int = BASE_TIMESTAMP) -> bytes:
    """One v2 record batch built by kafka-python (headers h=<index>)."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=CODECS.index(codec), is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for i, (key, value) in enumerate(records):
        builder.append(i, timestamp + i, key, value, [("h", b"%d" % i)])
    return bytes(builder.build())
