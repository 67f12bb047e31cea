"""Resident memory (RSS) of one broker with embedded defaults under the loads that used to grow it without bound:

    .venv/bin/python bench/memory.py idle --connections 10000   # idle client connections
    .venv/bin/python bench/memory.py claims --connections 8     # frames that announce 100 MiB and send nothing more
    .venv/bin/python bench/memory.py traffic --gb 5             # produce N GB with confluent-kafka, then consume it
    .venv/bin/python bench/memory.py all                        # the three, each on a fresh broker

Each phase starts its own broker (extra broker flags after --, e.g. `-- --fetch-cache-bytes 67108864`), reads its
RSS from /proc and prints the figures: idle prints RSS before, with the connections open (and per connection) and
after they close; claims prints the growth while the frames are announced and whether the broker still answers;
traffic prints RSS after start, the peak while producing and consuming, and RSS after each part and after the
broker has been idle for --settle seconds. The soft limit of open files is raised to the hard limit for the broker
and for this process (10,000 connections need 10,000 descriptors on each side).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from tests.integration.brokers import BrokerProcess  # noqa: E402

MiB = 1024 * 1024


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def mib(n: float) -> str:
    return f"{n / MiB:8.1f} MiB"


def api_versions_frame(correlation_id: int) -> bytes:
    client_id = b"memory-bench"
    payload = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    return struct.pack(">i", len(payload)) + payload


def answered(sock: socket.socket, correlation_id: int) -> bool:
    """Send ApiVersions v0 on sock and read the answer: True if it came back."""
    sock.sendall(api_versions_frame(correlation_id))
    head = _exactly(sock, 4)
    body = _exactly(sock, struct.unpack(">i", head)[0])
    return struct.unpack_from(">i", body)[0] == correlation_id


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def settle(pid: int, seconds: float) -> int:
    """RSS after waiting seconds (the broker trims idle buffers and returns freed memory meanwhile)."""
    time.sleep(seconds)
    return rss_bytes(pid)


def start_broker(tmp: str, name: str, extra: list[str], env: dict[str, str]) -> BrokerProcess:
    return BrokerProcess(Path(tmp) / name, extra_args=extra, env=env).start()


# --- phases -------------------------------------------------------------------------------------------------------


def idle(args, tmp: str) -> None:
    broker = start_broker(tmp, "idle", args.broker_args, args.env)
    pid = broker.proc.pid
    try:
        before = settle(pid, 1)
        socks = []
        started = time.perf_counter()
        for i in range(args.connections):
            s = socket.create_connection(("127.0.0.1", broker.port), timeout=30)
            if not answered(s, i):  # a live connection: it has been read from and answered once
                raise RuntimeError(f"connection {i} got a wrong answer")
            socks.append(s)
        opened_s = time.perf_counter() - started
        with_open = settle(pid, args.settle)
        for s in socks:
            s.close()
        after = settle(pid, args.settle)
        grew = with_open - before
        print(f"idle: {args.connections} connections opened in {opened_s:.1f} s (each answered one ApiVersions)")
        print(f"  RSS before        {mib(before)}")
        print(f"  RSS with them     {mib(with_open)}  (+{grew / MiB:.1f} MiB, {grew / args.connections / 1024:.1f} "
              "KiB per connection)")
        print(f"  RSS after close   {mib(after)}")
    finally:
        broker.stop()


def claims(args, tmp: str) -> None:
    broker = start_broker(tmp, "claims", args.broker_args, args.env)
    pid = broker.proc.pid
    try:
        before = settle(pid, 1)
        socks = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
            s.sendall(struct.pack(">i", args.claim_mib * MiB) + b"\x00\x00\x00\x00")  # then nothing more
            socks.append(s)
        claimed = settle(pid, args.settle)
        probe = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
        t0 = time.perf_counter()
        serving = answered(probe, 1)
        answer_ms = (time.perf_counter() - t0) * 1000
        probe.close()
        for s in socks:
            s.close()
        after = settle(pid, args.settle)
        print(f"claims: {args.connections} connections each announce a {args.claim_mib} MiB frame and send 4 bytes "
              "of it")
        print(f"  RSS before        {mib(before)}")
        print(f"  RSS with claims   {mib(claimed)}  (+{(claimed - before) / MiB:.1f} MiB)")
        print(f"  another client    {'answered' if serving else 'NOT answered'} in {answer_ms:.1f} ms")
        print(f"  RSS after close   {mib(after)}")
    finally:
        broker.stop()


class _Sampler(threading.Thread):
    """Samples a process's RSS every interval; peak is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(self.interval)

    def take_peak(self) -> int:
        peak, self.peak = max(self.peak, rss_bytes(self.pid)), 0
        return peak


def traffic(args, tmp: str) -> None:
    extra = ["--default-partitions", str(args.partitions), *args.broker_args]
    broker = start_broker(tmp, "traffic", extra, args.env)
    pid = broker.proc.pid
    sampler = _Sampler(pid)
    try:
        at_start = settle(pid, 1)
        sampler.start()
        topic = "memory"
        n = int(args.gb * 1e9 // args.size)
        value = os.urandom(args.size)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5,
                             "batch.size": 1_000_000, "compression.type": args.compression,
                             "queue.buffering.max.kbytes": 1_000_000, "enable.idempotence": False, "log_level": 3})
        producer.list_topics(topic, timeout=10)
        errors = []
        started = time.perf_counter()
        for i in range(n):
            while True:
                try:
                    producer.produce(topic, value=value, key=b"%d" % i, partition=i % args.partitions,
                                     on_delivery=lambda err, msg: err is not None and errors.append(err))
                    break
                except BufferError:
                    producer.poll(0.005)
            if i % 2000 == 0:
                producer.poll(0)
        producer.flush(300)
        del producer  # its threads would try to reconnect once the broker stops
        produce_s = time.perf_counter() - started
        produce_peak = sampler.take_peak()
        after_produce = rss_bytes(pid)

        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "memory", "log_level": 3,
                             "enable.auto.commit": False, "fetch.max.bytes": 50 * MiB,
                             "max.partition.fetch.bytes": 8 * MiB})
        consumer.assign([TopicPartition(topic, p, 0) for p in range(args.partitions)])
        got = 0
        started = time.perf_counter()
        while got < n and time.perf_counter() - started < 600:
            got += sum(1 for m in consumer.consume(10_000, timeout=1) if m.error() is None)
        consume_s = time.perf_counter() - started
        consumer.close()
        consume_peak = sampler.take_peak()
        after_consume = rss_bytes(pid)
        settled = settle(pid, args.settle)
        sampler.done.set()
        total = n * args.size
        print(f"traffic: {n} records x {args.size} B ({total / 1e9:.2f} GB, {args.compression}) over "
              f"{args.partitions} partitions; produced in {produce_s:.0f} s ({len(errors)} errors), "
              f"consumed {got} in {consume_s:.0f} s")
        print(f"  RSS at start      {mib(at_start)}")
        print(f"  RSS peak produce  {mib(produce_peak)}")
        print(f"  RSS after produce {mib(after_produce)}")
        print(f"  RSS peak consume  {mib(consume_peak)}")
        print(f"  RSS after consume {mib(after_consume)}")
        print(f"  RSS idle {args.settle:.0f} s    {mib(settled)}")
    finally:
        sampler.done.set()
        broker.stop(timeout=60)


PHASES = {"idle": idle, "claims": claims, "traffic": traffic}


def main() -> None:
    argv = sys.argv[1:]
    broker_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=[*PHASES, "all"])
    p.add_argument("--connections", type=int, default=None,
                   help="idle: connections to open (10000); claims: frames to announce (8)")
    p.add_argument("--claim-mib", type=int, default=100, help="claims: size each frame announces")
    p.add_argument("--gb", type=float, default=5.0, help="traffic: GB to produce and consume")
    p.add_argument("--size", type=int, default=1024, help="traffic: record value bytes")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--compression", default="none", help="traffic: the producer's compression.type")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to wait before reading RSS after a step")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="broker environment")
    args = p.parse_args(argv)
    args.broker_args = broker_args
    args.env = dict(e.split("=", 1) for e in args.env)
    limit = raise_open_files_limit()
    phases = list(PHASES) if args.phase == "all" else [args.phase]
    with tempfile.TemporaryDirectory() as tmp:
        for name in phases:
            phase_args = argparse.Namespace(**vars(args))
            if phase_args.connections is None:
                phase_args.connections = 10_000 if name == "idle" else 8
            if name == "idle" and phase_args.connections > limit - 100:
                raise SystemExit(f"{phase_args.connections} connections need more than the open files limit {limit}")
            PHASES[name](phase_args, tmp)


if __name__ == "__main__":
    main()
