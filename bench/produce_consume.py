"""Produce and consume throughput and produce latency of one broker with embedded defaults, driven by
confluent-kafka (acks=all, 1 KiB records, several partitions).

    .venv/bin/python bench/produce_consume.py [--records 300000] [--partitions 8] [--rate 0]

--rate N produces at a fixed N records/s for the latency figures (0 = as fast as possible).
Prints produce MB/s, consume MB/s, produce latency p50/p99 (produce() call to delivery report) and the broker's
CPU time per produced and consumed MB (from /proc; a broker given with --port is not measured).
--linger-ms 0 --size 100 stresses the per-request cost (many small produce requests). --compression gzip (snappy, lz4,
zstd) makes the producer compress its batches; --compressible makes values text-like (compressing 3-4x) instead of
random bytes."""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import workload  # noqa: E402
from tests.integration.brokers import BrokerProcess, free_port  # noqa: E402


def run(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        http_port = free_port()
        broker = BrokerProcess(Path(tmp), extra_args=["--default-partitions", str(args.partitions),
                                                      "--flush-ms", str(args.flush_ms),
                                                      "--http-listen", f"127.0.0.1:{http_port}"])
        broker.port = args.port or broker.port
        broker.start()
        try:
            produce_cpu = bench(broker.bootstrap, args, lambda: workload.cpu_seconds(broker.proc.pid))
            requests = _produce_requests(http_port)
            print(f"produce requests: {requests:.0f} ({produce_cpu / requests * 1e6:.0f} us of broker CPU each)")
        finally:
            broker.stop()


def _produce_requests(http_port: int) -> float:
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    found = re.search(r'^dray_requests_total\{api="Produce"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else float("nan")


def bench(bootstrap: str, args, broker_cpu=None) -> float:
    """Run the benchmark, print its figures; return the broker CPU seconds spent producing (0: not measured)."""
    topic = "bench"
    # Distinct values, so that a compressed batch does not shrink to one value repeated.
    rnd = random.Random(7)
    values = [_compressible(rnd, args.size) if args.compressible else rnd.randbytes(args.size) for _ in range(1024)]
    cpu_start = broker_cpu() if broker_cpu else 0.0
    produced = workload.produce(bootstrap, topic, records=args.records, size=args.size, partitions=args.partitions,
                                rate=args.rate, linger_ms=args.linger_ms, compression=args.compression,
                                values=values, idempotent=args.idempotent)
    cpu_produced = broker_cpu() if broker_cpu else 0.0
    if produced.errors:
        print(f"produce errors: {len(produced.errors)} (first: {produced.errors[0]})")
    consumed = workload.consume(bootstrap, topic, records=args.records, partitions=args.partitions)
    cpu_consumed = broker_cpu() if broker_cpu else 0.0
    mode = f"at {args.rate} records/s" if args.rate else "unthrottled"
    print(f"records: {args.records} x {args.size} B over {args.partitions} partitions, flush {args.flush_ms} ms, "
          f"{mode}, compression {args.compression}{' (compressible values)' if args.compressible else ''}")
    print(f"produce: {produced.mb_per_s:8.1f} MB/s  {args.records / produced.seconds:10.0f} records/s")
    print(f"consume: {consumed.mb_per_s:8.1f} MB/s  {consumed.records / consumed.seconds:10.0f} records/s "
          f"({consumed.records} read)")
    print(f"produce latency: p50 {produced.latency(0.5) * 1000:.1f} ms  p99 {produced.latency(0.99) * 1000:.1f} ms")
    if broker_cpu:
        produce_cpu, consume_cpu = cpu_produced - cpu_start, cpu_consumed - cpu_produced
        print(f"broker CPU: produce {produce_cpu:.2f} s ({produced.mb / produce_cpu:.0f} MB/CPU-s, "
              f"{produce_cpu / args.records * 1e6:.1f} us/record), consume {consume_cpu:.2f} s "
              f"({consumed.bytes / 1e6 / consume_cpu:.0f} MB/CPU-s)")
        return produce_cpu
    return 0.0


_WORDS = [bytes(random.Random(i).choices(b"abcdefghijklmnopqrstuvwxyz", k=2 + i % 7)) for i in range(500)]


def _compressible(rnd: random.Random, size: int) -> bytes:
    """Text-like bytes: words drawn from a small vocabulary (gzip makes them 3-4x smaller)."""
    words = _WORDS
    out = bytearray()
    while len(out) < size:
        out += rnd.choice(words) + b" "
    return bytes(out[:size])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=300_000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--rate", type=int, default=0)
    p.add_argument("--flush-ms", type=float, default=10)
    p.add_argument("--linger-ms", type=float, default=5)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--compression", default="none", choices=("none", "gzip", "snappy", "lz4", "zstd"))
    p.add_argument("--compressible", action="store_true", help="text-like values instead of random bytes")
    p.add_argument("--idempotent", action="store_true", help="an idempotent producer (one producer state CAS per "
                   "group of batches per partition: produce/producers.py)")
    run(p.parse_args())


if __name__ == "__main__":
    main()
