"""The client workload of the produce/consume benchmarks (bench/produce_consume.py, bench/vs_kafka.py): one
confluent-kafka producer (acks=all) and one consumer, measured from the client, plus the broker's CPU time.

Latency is librdkafka's own (Message.latency(): from produce() to the delivery report). A fixed rate is kept by
producing what is due every millisecond and waiting in poll() in between, so the client does not spin a core
that the broker needs."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TICK_S = 0.001  # a fixed-rate producer produces what is due, then waits this long for delivery reports
STATS_INTERVAL_MS = 1000  # librdkafka's statistics granularity


@dataclass
class ProduceResult:
    records: int
    size: int
    seconds: float
    latencies: list[float] = field(repr=False)  # seconds, one per acknowledged record
    errors: list = field(repr=False)
    requests: int | None = None  # Produce requests the client sent (when counted)

    @property
    def mb(self) -> float:
        return self.records * self.size / 1e6

    @property
    def mb_per_s(self) -> float:
        return self.mb / self.seconds

    def latency(self, p: float) -> float:
        return percentile(self.latencies, p)


@dataclass
class ConsumeResult:
    records: int
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_topic(bootstrap: str, topic: str, partitions: int, config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    futures = admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})], operation_timeout=30)
    futures[topic].result(60)
    # Wait until the topic's partitions show in Metadata with a leader (Kafka creates them asynchronously).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) == partitions and all(
                p.leader >= 0 for p in md.partitions.values()):
            return
        time.sleep(0.1)
    raise RuntimeError(f"topic {topic} did not get {partitions} partitions with leaders")


def produce(bootstrap: str, topic: str, *, records: int, size: int = 1024, partitions: int = 8, rate: int = 0,
            linger_ms: float = 5, count_requests: bool = False, compression: str = "none",
            values: list[bytes] | None = None, idempotent: bool = False) -> ProduceResult:
    """Produce records (keys "0", "1", ..., round-robin over the partitions) as fast as possible, or at a fixed
    rate (records/s); wait for every delivery report. Values cycle through `values` (default: one random value of
    `size` bytes)."""
    values = values or [os.urandom(size)]
    stats: list[dict] = []
    config = {
        "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms, "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 2_000_000,
        "enable.idempotence": idempotent, "log_level": 3, "compression.type": compression,
    }
    if count_requests:
        config.update({"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": lambda s: stats.append(json.loads(s))})
    producer = Producer(config)
    producer.list_topics(topic, timeout=10)
    latencies: list[float] = []
    errors: list = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err)
        else:
            latencies.append(msg.latency())

    def send(i: int) -> None:
        while True:
            try:
                producer.produce(topic, value=values[i % len(values)], key=b"%d" % i, partition=i % partitions,
                                 on_delivery=delivered)
                return
            except BufferError:
                producer.poll(0.001)

    start = time.perf_counter()
    if rate:
        i = 0
        while i < records:
            due = min(records, int((time.perf_counter() - start) * rate) + 1)
            while i < due:
                send(i)
                i += 1
            producer.poll(TICK_S)
    else:
        for i in range(records):
            send(i)
            if i % 1000 == 0:
                producer.poll(0)
    if producer.flush(120):
        raise RuntimeError(f"{len(producer)} records not delivered in 120 s")
    seconds = time.perf_counter() - start
    requests = None
    if count_requests:  # the statistics are cumulative: wait for one emitted after the last delivery
        done = len(stats)
        deadline = time.monotonic() + 3 * STATS_INTERVAL_MS / 1000
        while len(stats) <= done and time.monotonic() < deadline:
            producer.poll(0.05)
        if stats:
            requests = sum(b.get("req", {}).get("Produce", 0) for b in stats[-1]["brokers"].values())
    return ProduceResult(records, size, seconds, latencies, errors, requests)


def consume(bootstrap: str, topic: str, *, records: int, partitions: int = 8, timeout: float = 120) -> ConsumeResult:
    """Read every partition of topic from offset 0 until records records arrived (or timeout)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{os.getpid()}-{time.time_ns()}",
                         "enable.auto.commit": False, "fetch.max.bytes": 50 * 1024 * 1024,
                         "max.partition.fetch.bytes": 8 * 1024 * 1024, "log_level": 3})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        start = time.perf_counter()
        got = size = 0
        while got < records and time.perf_counter() - start < timeout:
            for m in consumer.consume(10000, timeout=1):
                if m.error() is None:
                    got += 1
                    size += len(m.value())
                elif m.error().fatal():
                    raise KafkaException(m.error())
        return ConsumeResult(got, size, time.perf_counter() - start)
    finally:
        consumer.close()
