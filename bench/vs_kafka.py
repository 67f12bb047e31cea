"""Dray side by side with Apache Kafka 4.4: the same confluent-kafka workload against both, in interleaved rounds.

    .venv/bin/python bench/vs_kafka.py [--rounds 3] [--oxia --s3] [--kafka-fsync]

Starts Kafka 4.4.0 (a single KRaft node from Maven Central jars, default settings; bench/kafka_service.py) and a
Dray broker (embedded defaults; with --oxia and/or --s3 on an Oxia server and/or MinIO started here), warms both
up, then runs each round against both brokers, the order alternating from round to round:

- produce MB/s: --records x 1 KiB as fast as the client goes (acks=all, linger 5 ms), with the broker's CPU
  time per produced MB;
- consume MB/s: the same records read back from offset 0, with the broker's CPU time per consumed MB;
- produce latency p50 and p99 at 2k and 20k records/s for --seconds each (produce() to delivery report);
- small requests: 100 B records at --small-rate records/s with linger 0 (about one Produce request each): the
  broker's CPU time per Produce request (requests counted by the client).

Broker CPU comes from /proc (user + system time of the broker process). Every phase starts after a sync(), so
that one broker's page-cache writeback (Kafka's, which the kernel does up to 30 s later) does not land in the
other's latencies: without it, Dray's p99 at 2k/s was 37 ms in the two rounds that ran within 30 s of Kafka's and 12
ms in the first, as its fsyncs waited behind that writeback (measured: fsyncs of up to 115 ms 30 s after 400 MB
were written without one).

It prints the machine it ran on and a table of Dray/Kafka ratios: the median of the per-round ratios, with each
broker's median figure beside it. --kafka-fsync adds a Kafka topic with flush.messages=1 (an fsync per batch, as
durable as Dray's acks) as a third column. With --oxia/--s3 it also prints the CPU time of Oxia and MinIO per
produced MB (Dray's stores, which Kafka does not have). The machine should be otherwise idle: other load shows
in the latencies. Measured on ext4 without a journal: a new file skips the inodes deleted in the last minutes,
so a run right after many deletions (a test run's temporary directories) spent 14% of Dray's CPU on small
requests in allocating WAL files' inodes; wait a few minutes after such work.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import confluent_kafka  # noqa: E402

from bench import workload  # noqa: E402
from bench.kafka_service import start_kafka  # noqa: E402
from dray_broker.config import Settings  # noqa: E402
from tests.integration.brokers import BrokerProcess  # noqa: E402
from tests.services import start_minio, start_oxia  # noqa: E402

PARTITIONS = 8


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: str  # the target for the Dray/Kafka ratio, or ""


METRICS = [
    Metric("produce_mb_s", "produce MB/s (1 KiB, unthrottled)", "MB/s", True, ">= 1.0"),
    Metric("produce_cpu_mb", "broker CPU per produced MB", "ms", False, "< 1.0"),
    Metric("consume_mb_s", "consume MB/s", "MB/s", True, ""),
    Metric("consume_cpu_mb", "broker CPU per consumed MB", "ms", False, "<= 1.5"),
    Metric("p50_2k", "produce p50 at 2k records/s", "ms", False, "<= 1.5"),
    Metric("p99_2k", "produce p99 at 2k records/s", "ms", False, "<= 1.5"),
    Metric("p50_20k", "produce p50 at 20k records/s", "ms", False, "<= 1.5"),
    Metric("p99_20k", "produce p99 at 20k records/s", "ms", False, "<= 1.5"),
    Metric("small_cpu_request", "broker CPU per small Produce request", "us", False, "< 1.0"),
]
STORE_METRIC = Metric("stores_cpu_mb", "Oxia + MinIO CPU per produced MB", "ms", False, "")


@dataclass
class Target:
    """One broker (and topic settings) the workload runs against."""

    name: str
    bootstrap: str
    cpu: Callable[[], float]  # CPU seconds of the broker process so far
    topic_config: dict[str, str] = field(default_factory=dict)
    stores_cpu: Callable[[], float] | None = None  # CPU seconds of external stores (Dray on Oxia/MinIO)


def run_round(t: Target, label: str, args) -> dict[str, float]:
    """Every phase against one target; returns the round's figures by metric key."""
    out: dict[str, float] = {}

    def topic(phase: str) -> str:
        name = f"{label}-{phase}"
        workload.create_topic(t.bootstrap, name, PARTITIONS, t.topic_config)
        return name

    def checked(result: workload.ProduceResult, what: str) -> workload.ProduceResult:
        if result.errors:
            raise RuntimeError(f"{t.name}: {what}: {len(result.errors)} delivery errors, first {result.errors[0]}")
        return result

    name = topic("throughput")
    os.sync()  # each phase starts with no dirty page cache: a broker's late writeback stays out of the other's
    cpu0, stores0 = t.cpu(), t.stores_cpu() if t.stores_cpu else 0.0
    produced = checked(workload.produce(t.bootstrap, name, records=args.records, partitions=PARTITIONS),
                       "unthrottled produce")
    cpu1, stores1 = t.cpu(), t.stores_cpu() if t.stores_cpu else 0.0
    out["produce_mb_s"] = produced.mb_per_s
    out["produce_cpu_mb"] = (cpu1 - cpu0) / produced.mb * 1000
    if t.stores_cpu:
        out["stores_cpu_mb"] = (stores1 - stores0) / produced.mb * 1000
    consumed = workload.consume(t.bootstrap, name, records=args.records, partitions=PARTITIONS)
    if consumed.records < args.records:
        raise RuntimeError(f"{t.name}: consumed {consumed.records} of {args.records} records")
    out["consume_mb_s"] = consumed.mb_per_s
    out["consume_cpu_mb"] = (t.cpu() - cpu1) / (consumed.bytes / 1e6) * 1000

    for rate, suffix in ((2000, "2k"), (20000, "20k")):
        os.sync()
        fixed = checked(workload.produce(t.bootstrap, topic(f"rate{suffix}"), records=rate * args.seconds,
                                         partitions=PARTITIONS, rate=rate), f"produce at {rate}/s")
        out[f"p50_{suffix}"] = fixed.latency(0.5) * 1000
        out[f"p99_{suffix}"] = fixed.latency(0.99) * 1000

    name = topic("small")
    os.sync()
    cpu0 = t.cpu()
    small = checked(workload.produce(t.bootstrap, name, records=args.small_rate * args.seconds, size=100,
                                     partitions=PARTITIONS, rate=args.small_rate, linger_ms=0, count_requests=True),
                    "small requests")
    out["small_cpu_request"] = (t.cpu() - cpu0) / small.requests * 1e6 if small.requests else float("nan")
    return out


def warm_up(t: Target) -> None:
    """JIT (Kafka), caches and connections: a short run of every kind of phase, not counted."""
    name = f"warmup-{time.time_ns()}"
    workload.create_topic(t.bootstrap, name, PARTITIONS, t.topic_config)
    workload.produce(t.bootstrap, name, records=50_000, partitions=PARTITIONS)
    workload.consume(t.bootstrap, name, records=50_000, partitions=PARTITIONS)
    workload.produce(t.bootstrap, name, records=20_000, partitions=PARTITIONS, rate=20_000)
    workload.produce(t.bootstrap, name, records=5_000, size=100, partitions=PARTITIONS, rate=5_000, linger_ms=0)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, Python {platform.python_version()}, "
            f"librdkafka {confluent_kafka.libversion()[0]}")


def report(targets: list[Target], rounds: list[dict[str, dict[str, float]]], metrics: list[Metric]) -> None:
    dray, kafka, *others = [t.name for t in targets]
    header = f"| metric | {dray} | {kafka} | " + "".join(f"{o} | " for o in others)
    header += f"{dray}/{kafka} | " + "".join(f"{dray}/{o} | " for o in others) + "target |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for m in metrics:
        if not all(m.key in r[dray] for r in rounds):
            continue
        cells = []
        for name in [dray, kafka, *others]:
            values = [r[name][m.key] for r in rounds if m.key in r[name]]
            cells.append(f"{statistics.median(values):.3g} {m.unit}" if values else "-")
        for name in [kafka, *others]:
            ratios = [r[dray][m.key] / r[name][m.key] for r in rounds
                      if m.key in r[name] and r[name][m.key] > 0]
            cells.append(f"{statistics.median(ratios):.2g}x" if ratios else "-")
        print(f"| {m.label} | " + " | ".join(cells) + f" | {m.target} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--records", type=int, default=200_000, help="1 KiB records of the throughput phase")
    p.add_argument("--seconds", type=int, default=5, help="length of each fixed-rate phase")
    p.add_argument("--small-rate", type=int, default=5_000, help="records/s of the small-request phase")
    p.add_argument("--oxia", action="store_true", help="Dray's metadata on an Oxia server (else embedded SQLite)")
    p.add_argument("--s3", action="store_true", help="Dray's WAL objects on MinIO (else a local directory)")
    p.add_argument("--kafka-fsync", action="store_true", help="also Kafka with flush.messages=1 topics")
    p.add_argument("--flush-ms", type=float, default=Settings.model_fields["flush_ms"].default,
                   help="Dray's --flush-ms (default: the broker's default)")
    args = p.parse_args()

    print(f"machine: {machine()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    services = []
    with tempfile.TemporaryDirectory(prefix="dray-vs-kafka-") as tmp:
        broker = BrokerProcess(Path(tmp) / "dray", extra_args=["--flush-ms", str(args.flush_ms)])
        kafka = None
        try:
            store_pids = []
            if args.oxia:
                oxia = start_oxia()
                services.append(oxia)
                store_pids.append(oxia._server.process.pid)
                broker.metadata = f"oxia://{oxia.address}"
            if args.s3:
                minio = start_minio()
                services.append(minio)
                store_pids.append(minio._server.process.pid)
                broker.object_store = minio.url("vs-kafka")
            broker.start()
            kafka = start_kafka(PARTITIONS)
            dray_name = "Dray" + ("" if not services else " (" + " + ".join(
                n for n, on in (("Oxia", args.oxia), ("MinIO", args.s3)) if on) + ")")
            targets = [
                Target(dray_name, broker.bootstrap, lambda: workload.cpu_seconds(broker.proc.pid),
                       stores_cpu=(lambda: sum(map(workload.cpu_seconds, store_pids))) if store_pids else None),
                Target("Kafka 4.4", kafka.bootstrap, lambda: workload.cpu_seconds(kafka.pid)),
            ]
            if args.kafka_fsync:
                targets.append(Target("Kafka fsync", kafka.bootstrap, targets[1].cpu, {"flush.messages": "1"}))
            print(f"{dray_name}: flush_ms {args.flush_ms}; Kafka 4.4.0 defaults, acks=all; {PARTITIONS} partitions; "
                  f"{args.rounds} rounds of {args.records} x 1 KiB, {args.seconds} s at 2k/s and 20k/s, "
                  f"{args.seconds} s of 100 B at {args.small_rate}/s")
            for t in targets:
                warm_up(t)
            rounds = []
            for r in range(args.rounds):
                order = targets if r % 2 == 0 else targets[::-1]
                figures = {}
                for i, t in enumerate(order):
                    started = time.perf_counter()
                    figures[t.name] = run_round(t, f"r{r}-{i}-{time.time_ns()}", args)
                    print(f"round {r + 1} {t.name} ({time.perf_counter() - started:.0f} s): " + ", ".join(
                        f"{k} {v:.3g}" for k, v in figures[t.name].items()), flush=True)
                rounds.append(figures)
        finally:
            if kafka is not None:
                kafka.stop()
            broker.stop()
            for s in services:
                s.stop()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    report(targets, rounds, METRICS + ([STORE_METRIC] if args.oxia or args.s3 else []))


if __name__ == "__main__":
    main()
