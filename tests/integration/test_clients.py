"""Real Kafka clients against a real broker, on both backends (embedded, Oxia + MinIO).

Each client produces 10,000 records with keys, headers and explicit timestamps (kcat: keys and -H headers) to a
3-partition topic with each compression codec, then the same client and another one read them back: the same
records, in order per partition, at the offsets the producer's delivery reports gave, and nothing else.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import replace

import pytest
from kafka.protocol.old import produce as old_produce
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from tests.integration.clients import (
    CLIENTS,
    CODECS,
    assert_offsets_as_kafka,
    by_partition,
    create_topic,
    expected_counts,
    make_records,
    produce,
    read_back,
)

PARTITIONS = 3
RECORDS = 10_000


def _other_reader(client: str, codec: str) -> str:
    """Another client to read what client produced: varied with the codec so each pair of clients meets."""
    others = [c for c in CLIENTS if c != client]
    return others[CODECS.index(codec) % len(others)]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("client", CLIENTS)
def test_produce_and_read_back(broker, topic_name, client, codec):
    create_topic(broker.bootstrap, topic_name, PARTITIONS)
    records = make_records(RECORDS, PARTITIONS, seed=10 * CLIENTS.index(client) + CODECS.index(codec), for_kcat=client == "kcat")
    acked = produce(client, broker.bootstrap, topic_name, records, codec=codec)
    if client != "kcat":  # kcat reports no offsets (clients.py): its reads below prove density and order
        assert_offsets_as_kafka(acked)
    counts = expected_counts(acked, PARTITIONS)
    assert all(counts.values()), counts

    read_back(client, broker.bootstrap, topic_name, acked, counts=counts)
    read_back(_other_reader(client, codec), broker.bootstrap, topic_name, acked, counts=counts)


def test_clients_append_to_one_topic_in_turn(broker, topic_name):
    """Each client appends to the same topic after the others: offsets continue where the last client stopped."""
    create_topic(broker.bootstrap, topic_name, PARTITIONS)
    acked = []
    for i, (client, codec) in enumerate(zip(CLIENTS, ("zstd", "lz4", "gzip", "snappy"))):
        records = make_records(1000, PARTITIONS, seed=100 + i, for_kcat=client == "kcat")
        start = expected_counts(acked, PARTITIONS)
        got = produce(client, broker.bootstrap, topic_name, records, codec=codec)
        if client == "kcat":  # offsets counted from a fresh topic: shift them to where the partition ended
            got = [replace(r, offset=r.offset + start[r.partition]) for r in got]
        assert_offsets_as_kafka(got, start)
        acked += got
    counts = expected_counts(acked, PARTITIONS)
    for reader in ("confluent", "kcat"):
        read_back(reader, broker.bootstrap, topic_name, acked, counts=counts)
    # A reader that starts in the middle of each partition gets exactly the rest.
    middle = {p: n // 2 for p, n in counts.items()}
    rest = [r for r in acked if r.offset >= middle[r.partition]]
    read_back("kafka-python", broker.bootstrap, topic_name, rest, counts={p: counts[p] - middle[p] for p in counts},
              start=middle)


def test_concurrent_producers_get_dense_unique_offsets(broker, topic_name):
    """Three client libraries produce to the same partitions at the same time: every acked record is stored once,
    at the offset its producer was given, and each partition's offsets are dense."""
    create_topic(broker.bootstrap, topic_name, PARTITIONS)
    jobs = {"confluent": "lz4", "aiokafka": "gzip", "kafka-python": "zstd"}
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def run(client, codec, seed):
        try:
            results[client] = produce(client, broker.bootstrap, topic_name,
                                      make_records(3000, PARTITIONS, seed=seed), codec=codec)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c, codec, 200 + i)) for i, (c, codec) in enumerate(jobs.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    acked = [r for client in jobs for r in results[client]]
    for client in jobs:  # each producer's own records keep their send order within a partition
        for p, recs in by_partition(results[client]).items():
            offsets = [r.offset for r in recs]
            assert offsets == sorted(offsets), f"{client} partition {p}: offsets out of send order"
    for p, recs in by_partition(acked).items():
        assert sorted(r.offset for r in recs) == list(range(len(recs))), f"partition {p}: offsets not dense/unique"
    read_back("confluent", broker.bootstrap, topic_name, acked, counts=expected_counts(acked, PARTITIONS))


# broker.version.fallback -> what librdkafka then sends without asking ApiVersions: Produce v1 (0.9.0) or v0 (0.8.2)
# with magic 0 messages, compressed in wrapper messages (LZ4 with Kafka's broken frame checksum, KAFKA-1493).
# (Any fallback from 0.10 on makes librdkafka ask ApiVersions, and then it sends v2 batches.)
LEGACY_PRODUCERS = [("0.9.0", "none"), ("0.9.0", "gzip"), ("0.9.0", "snappy"), ("0.9.0", "lz4"),
                    ("0.8.2", "gzip"), ("0.8.2", "lz4")]


@pytest.mark.parametrize(("fallback", "codec"), LEGACY_PRODUCERS)
def test_old_producers_send_legacy_message_sets(broker, topic_name, fallback, codec):
    """Produce v0/v1 with magic 0 message sets, up-converted on the way in: a current consumer reads the same keys,
    values and offsets the old producer was given (and no timestamp: magic 0 has none)."""
    create_topic(broker.bootstrap, topic_name, PARTITIONS)
    records = [replace(r, headers=(), timestamp=None)  # neither headers nor timestamps before magic 1 / 2
               for r in make_records(3000, PARTITIONS, seed=300 + LEGACY_PRODUCERS.index((fallback, codec)))]
    acked = produce("confluent", broker.bootstrap, topic_name, records, codec=codec,
                    confluent_config={"api.version.request": False, "broker.version.fallback": fallback})
    assert_offsets_as_kafka(acked)
    read = read_back("confluent", broker.bootstrap, topic_name, acked, counts=expected_counts(acked, PARTITIONS))
    assert {r.timestamp for r in read} == {-1}


LEGACY_CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3}


@pytest.mark.parametrize("codec", LEGACY_CODECS)
def test_magic_1_message_sets_keep_their_timestamps(broker, topic_name, codec):
    """Produce v2 with magic 1 messages (timestamps, CreateTime), as a Kafka 0.10 client sends them: no client here
    still speaks it (librdkafka asks ApiVersions from 0.10 on), so kafka-python's own legacy encoders build the
    request. The broker answers each partition's base offset; a current consumer reads the records and timestamps."""
    create_topic(broker.bootstrap, topic_name, PARTITIONS)
    records = [replace(r, headers=()) for r in make_records(600, PARTITIONS, seed=400 + LEGACY_CODECS[codec])]
    acked = []
    for round_ in range(2):  # twice: the second request's offsets continue after the first
        part = records[round_ * 300:(round_ + 1) * 300]
        sets = {}
        for p, recs in by_partition(part).items():
            builder = LegacyRecordBatchBuilder(1, LEGACY_CODECS[codec], 1 << 20)
            for i, r in enumerate(recs):
                builder.append(i, r.timestamp, r.key, r.value)
            sets[p] = bytes(builder.build())
        request = old_produce.ProduceRequest_v2(acks=-1, timeout_ms=10_000,
                                                topic_data=[(topic_name, sorted(sets.items()))])
        request.with_header(correlation_id=7, client_id="kafka-0.10")
        with socket.create_connection(tuple(broker.bootstrap.rsplit(":", 1)), timeout=10) as s:
            s.sendall(request.encode(header=True, framed=True))
            size = struct.unpack(">i", _read_exactly(s, 4))[0]
            response = old_produce.ProduceResponse_v2.decode(_read_exactly(s, size), header=True)
        [(name, partitions)] = response.responses
        assert name == topic_name
        base = {p[0]: p[2] for p in partitions}
        assert all(p[1] == 0 for p in partitions), partitions
        start = expected_counts(acked, PARTITIONS)
        assert base == {p: start[p] for p in sets}
        for p, recs in by_partition(part).items():
            acked += [replace(r, offset=base[p] + i) for i, r in enumerate(recs)]
    read_back("confluent", broker.bootstrap, topic_name, acked, counts=expected_counts(acked, PARTITIONS))


def _read_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "the broker closed the connection"
        data += chunk
    return data
