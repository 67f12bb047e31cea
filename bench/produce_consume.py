"""Produce and consume throughput and produce latency of one broker with embedded defaults, driven by
confluent-kafka (acks=all, 1 KiB records, several partitions).

    .venv/bin/python bench/produce_consume.py [--records 300000] [--partitions 8] [--rate 0]

--rate N produces at a fixed N records/s for the latency figures (0 = as fast as possible).
Prints produce MB/s, consume MB/s, produce latency p50/p99 (produce() call to delivery report) and the broker's
CPU time per produced and consumed MB (from /proc; a broker given with --port is not measured).
--linger-ms 0 --size 100 stresses the per-request cost (many small produce requests); --idempotent adds the
producer state checks (produce/producers.py)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from tests.integration.brokers import BrokerProcess, free_port  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def run(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        http_port = free_port()
        broker = BrokerProcess(Path(tmp), extra_args=["--default-partitions", str(args.partitions),
                                                      "--flush-ms", str(args.flush_ms),
                                                      "--http-listen", f"127.0.0.1:{http_port}"])
        broker.port = args.port or broker.port
        broker.start()
        try:
            produce_cpu = bench(broker.bootstrap, args, lambda: _cpu_seconds(broker.proc.pid))
            requests = _produce_requests(http_port)
            print(f"produce requests: {requests:.0f} ({produce_cpu / requests * 1e6:.0f} us of broker CPU each)")
        finally:
            broker.stop()


def _produce_requests(http_port: int) -> float:
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    found = re.search(r'^dray_requests_total\{api="Produce"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(bootstrap: str, args, broker_cpu=None) -> float:
    """Run the benchmark, print its figures; return the broker CPU seconds spent producing (0: not measured)."""
    topic = "bench"
    value = os.urandom(args.size)
    producer = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": args.linger_ms, "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 2_000_000,
        "enable.idempotence": args.idempotent, "log_level": 3,
    })
    producer.list_topics(topic, timeout=10)  # auto-creates with --default-partitions
    latencies: list[float] = []
    errors = []

    def delivered(err, msg, sent=None):
        if err is not None:
            errors.append(err)

    cpu_start = broker_cpu() if broker_cpu else 0.0
    start = time.perf_counter()
    interval = 1.0 / args.rate if args.rate else 0.0
    for i in range(args.records):
        sent = time.perf_counter()
        if interval:
            target = start + i * interval
            while sent < target:
                producer.poll(0)
                sent = time.perf_counter()
        def cb(err, msg, sent=sent):
            latencies.append(time.perf_counter() - sent)
            delivered(err, msg)

        while True:
            try:
                producer.produce(topic, value=value, key=b"%d" % i, partition=i % args.partitions, on_delivery=cb)
                break
            except BufferError:
                producer.poll(0.001)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    produce_s = time.perf_counter() - start
    cpu_produced = broker_cpu() if broker_cpu else 0.0
    total_mb = args.records * args.size / 1e6
    if errors:
        print(f"produce errors: {len(errors)} (first: {errors[0]})")

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False,
                         "fetch.max.bytes": 50 * 1024 * 1024, "max.partition.fetch.bytes": 8 * 1024 * 1024,
                         "log_level": 3})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(args.partitions)])
    start = time.perf_counter()
    got = 0
    while got < args.records and time.perf_counter() - start < 120:
        for m in consumer.consume(10000, timeout=1):
            if m.error() is None:
                got += 1
    consume_s = time.perf_counter() - start
    cpu_consumed = broker_cpu() if broker_cpu else 0.0
    consumer.close()
    mode = f"at {args.rate} records/s" if args.rate else "unthrottled"
    print(f"records: {args.records} x {args.size} B over {args.partitions} partitions, flush {args.flush_ms} ms, {mode}")
    print(f"produce: {total_mb / produce_s:8.1f} MB/s  {args.records / produce_s:10.0f} records/s")
    print(f"consume: {got * args.size / 1e6 / consume_s:8.1f} MB/s  {got / consume_s:10.0f} records/s ({got} read)")
    print(f"produce latency: p50 {percentile(latencies, 0.5) * 1000:.1f} ms  p99 {percentile(latencies, 0.99) * 1000:.1f} ms")
    if broker_cpu:
        produce_cpu, consume_cpu = cpu_produced - cpu_start, cpu_consumed - cpu_produced
        print(f"broker CPU: produce {produce_cpu:.2f} s ({total_mb / produce_cpu:.0f} MB/CPU-s, "
              f"{produce_cpu / args.records * 1e6:.1f} us/record), consume {consume_cpu:.2f} s "
              f"({got * args.size / 1e6 / consume_cpu:.0f} MB/CPU-s)")
        return produce_cpu
    return 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=300_000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--rate", type=int, default=0)
    p.add_argument("--idempotent", action="store_true", help="an idempotent producer (one producer state CAS per "
                   "group of batches per partition)")
    p.add_argument("--flush-ms", type=float, default=10)
    p.add_argument("--linger-ms", type=float, default=5)
    p.add_argument("--port", type=int, default=0)
    run(p.parse_args())


if __name__ == "__main__":
    main()
