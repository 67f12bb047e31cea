"""Fault matrix: brokers on one store, one fault at a time, and what the clients and the brokers did about it.

    python -m bench.faults [--backends embedded,oxia-s3] [--faults objects-unwritable,metadata-stall,...]
                           [--brokers 2] [--session-timeout-ms 3000] [--rate 200]

Each row starts a fresh cluster: --brokers brokers on one metadata store and one object store (embedded: one
SQLite file and one local directory; oxia-s3: an Oxia server and a MinIO server of its own). A producer streams
records (acks=all, retries on) through every broker, a probe producer with retries=0 shows what the brokers answer,
and a KIP-848 consumer group coordinated by broker 1 reads the topic and commits. Then the fault hits broker 1 (or
the store) for twice the session timeout, and is lifted. Faults:

    objects-unwritable  embedded: the objects directory made read-only (chattr +i as root, else chmod);
                        oxia-s3: MinIO killed, restarted on the same data after the fault
    metadata-stall      embedded: another process holds SQLite's write lock; oxia-s3: the Oxia server SIGSTOPped
    broker-stall        broker 1 SIGSTOPped
    broker-kill         broker 1 killed -9, restarted after the fault

Outcomes per row:
    acked/lost     records acknowledged, and of those not at their offset with their bytes afterwards (must be 0)
    during         of those, acked during the fault (through other brokers, or none when the store is down)
    probe          what the probe producer (retries=0) was answered during the fault: error names, (!) marks an
                   error that is not retriable (must be none)
    readyz         broker 1's /readyz during the fault (503 seen, or no answer) and seconds until 200 after it
    session        broker 1's metadata session generation afterwards (2+: lost and renewed by itself)
    group          the group read every acknowledged record and committed the end offsets, without a restart

tests/integration/test_faults.py runs short rows of this matrix in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from kio.schema.errors import ErrorCode  # noqa: E402

from dray_broker.groups.coordinator import rendezvous  # noqa: E402
from tests import services  # noqa: E402
from tests.integration.brokers import BrokerProcess, free_port  # noqa: E402

BACKENDS = ("embedded", "oxia-s3")
FAULTS = ("objects-unwritable", "metadata-stall", "broker-stall", "broker-kill")
PARTITIONS = 4
GROUP_FLAGS = ["--group-initial-rebalance-delay-ms", "0", "--group-consumer-heartbeat-interval-ms", "300",
               "--group-consumer-session-timeout-ms", "20000"]


# ---------------------------------------------------------------------------------------------------- the cluster


class Cluster:
    """Brokers 1..n on one metadata store and one object store, each with its /readyz and /metrics."""

    def __init__(self, backend: str, brokers: int, session_timeout_ms: int, workdir: Path):
        self.backend = backend
        self.workdir = workdir
        self.session_timeout_ms = session_timeout_ms
        self.oxia: services.OxiaService | None = None
        self.minio: services.MinioService | None = None
        if backend == "embedded":
            self.metadata_url = f"sqlite://{workdir}/meta.db"
            self.objects_dir: Path | None = workdir / "objects"
            object_store = f"file://{self.objects_dir}"
        else:
            self.oxia = services.start_oxia()
            self.minio = services.start_minio()
            self.metadata_url = f"oxia://{self.oxia.address}"
            self.objects_dir = None
            object_store = self.minio.url(f"faults-{uuid.uuid4().hex[:8]}")
        self.http_ports: dict[int, int] = {}
        self.brokers: dict[int, BrokerProcess] = {}
        for broker_id in range(1, brokers + 1):
            self.http_ports[broker_id] = free_port()
            self.brokers[broker_id] = BrokerProcess(
                workdir / f"broker-{broker_id}", metadata=self.metadata_url, object_store=object_store,
                extra_args=["--broker-id", str(broker_id), "--session-timeout-ms", str(session_timeout_ms),
                            "--http-listen", f"127.0.0.1:{self.http_ports[broker_id]}", *GROUP_FLAGS])

    def start(self) -> "Cluster":
        for b in self.brokers.values():
            b.start(timeout=60)
        return self

    def stop(self) -> None:
        for b in self.brokers.values():
            with contextlib.suppress(Exception):
                if b.proc is not None and b.proc.poll() is None:
                    os.killpg(b.proc.pid, signal.SIGCONT)
                b.stop()
        for service in (self.oxia, self.minio):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.resume()
                service.stop()

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers.values())

    def readyz(self, broker_id: int, timeout: float = 2.0) -> int | None:
        """/readyz's status, None if the broker does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[broker_id]}/readyz", timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def metric(self, broker_id: int, name: str) -> float | None:
        try:
            url = f"http://127.0.0.1:{self.http_ports[broker_id]}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return None
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else None

    def group_for(self, broker_id: int) -> str:
        """A group id that the brokers' rendezvous hash gives to broker_id (while every broker is live)."""
        ids = list(self.brokers)
        while True:
            group = f"faults-{uuid.uuid4().hex[:8]}"
            if rendezvous(group, ids) == broker_id:
                return group


# ---------------------------------------------------------------------------------------------------- faults


class Fault:
    """begin() hits, end() lifts; both return once done."""

    name = ""

    def __init__(self, cluster: Cluster, broker_id: int):
        self.cluster = cluster
        self.broker_id = broker_id

    def begin(self) -> None: ...

    def end(self) -> None: ...


class ObjectsUnwritable(Fault):
    name = "objects-unwritable"

    def begin(self) -> None:
        c = self.cluster
        if c.minio is not None:
            c.minio.crash()
            return
        self.dirs = [c.objects_dir, *(p for p in c.objects_dir.rglob("*") if p.is_dir())]
        # As root, permissions do not stop writes: mark the directories immutable instead.
        self.immutable = os.geteuid() == 0 and shutil.which("chattr") is not None
        for d in self.dirs:
            if self.immutable:
                subprocess.run(["chattr", "+i", str(d)], check=True)
            else:
                d.chmod(0o555)

    def end(self) -> None:
        c = self.cluster
        if c.minio is not None:
            c.minio.restart()
            return
        for d in self.dirs:
            if self.immutable:
                subprocess.run(["chattr", "-i", str(d)], check=True)
            else:
                d.chmod(0o755)


class MetadataStall(Fault):
    name = "metadata-stall"

    def begin(self) -> None:
        c = self.cluster
        if c.oxia is not None:
            c.oxia.pause()
            return
        path = c.metadata_url[len("sqlite://"):]
        hold = ("import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n"
                "c.execute('BEGIN IMMEDIATE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(3600)\n")
        self.holder = subprocess.Popen([sys.executable, "-c", hold, path], stdout=subprocess.PIPE)
        if self.holder.stdout.readline().strip() != b"locked":
            raise RuntimeError("could not take SQLite's write lock")

    def end(self) -> None:
        c = self.cluster
        if c.oxia is not None:
            c.oxia.resume()
            return
        self.holder.kill()  # its transaction and lock go with it
        self.holder.wait()


class BrokerStall(Fault):
    name = "broker-stall"

    def begin(self) -> None:
        os.killpg(self.cluster.brokers[self.broker_id].proc.pid, signal.SIGSTOP)

    def end(self) -> None:
        os.killpg(self.cluster.brokers[self.broker_id].proc.pid, signal.SIGCONT)


class BrokerKill(Fault):
    name = "broker-kill"

    def begin(self) -> None:
        self.cluster.brokers[self.broker_id].kill()

    def end(self) -> None:
        # Same id: it waits for its predecessor's registration to expire, then registers.
        self.cluster.brokers[self.broker_id].start(timeout=60)


FAULT_TYPES = {f.name: f for f in (ObjectsUnwritable, MetadataStall, BrokerStall, BrokerKill)}


# ---------------------------------------------------------------------------------------------------- clients


class StreamProducer:
    """Produces numbered records at a fixed rate in a thread; keeps what was acked and what failed."""

    def __init__(self, bootstrap: str, topic: str, rate: float, *, name: str, retries: bool, timeout_ms: int):
        self.topic = topic
        self.rate = rate
        self.name = name
        self.producer = Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False, "linger.ms": 5,
            "message.timeout.ms": timeout_ms, "retries": 2_147_483_647 if retries else 0,
            "client.id": name, "log_level": 2,
        })
        self.acked: list[tuple[int, int, bytes, float]] = []  # partition, offset, value, when
        self.failed: list[tuple[KafkaError, float]] = []
        self.sent = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.thread.start()

    def _delivered(self, err, msg) -> None:
        now = time.monotonic()
        if err is None:
            self.acked.append((msg.partition(), msg.offset(), msg.value(), now))
        else:
            self.failed.append((err, now))

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            value = f"{self.name}-{self.sent}-{uuid.uuid4().hex}".encode()
            try:
                self.producer.produce(self.topic, value=value, partition=self.sent % PARTITIONS,
                                      on_delivery=self._delivered)
                self.sent += 1
            except BufferError:
                pass
            next_at += interval
            self.producer.poll(max(0.0, next_at - time.monotonic()))

    def stop(self, flush_s: float = 90) -> int:
        """Stop producing and wait for every outstanding delivery; returns how many are left (0)."""
        self._stop.set()
        self.thread.join()
        return self.producer.flush(flush_s)


class GroupConsumer:
    """A KIP-848 group member that commits after every batch, in a thread."""

    def __init__(self, bootstrap: str, group: str, topic: str):
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "group.protocol": "consumer",
            "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 2,
        })
        self.group = group
        self.read: set[tuple[int, int]] = set()
        self.commit_errors: list[str] = []
        self._stop = threading.Event()
        self.consumer.subscribe([topic])
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"group-{group}")
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = [m for m in self.consumer.consume(500, 0.2) if m.error() is None]
            if not messages:
                continue
            self.read.update((m.partition(), m.offset()) for m in messages)
            try:
                self.consumer.commit(asynchronous=False)
            except KafkaException as e:
                self.commit_errors.append(str(e))
        self.consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(30)


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 2})
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in parts}
    finally:
        c.close()


def read_log(bootstrap: str, topic: str, timeout: float = 60) -> dict[tuple[int, int], bytes]:
    """Every record of the topic by (partition, offset), read from offset 0 to the end offsets."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "faults-reader", "enable.auto.commit": False,
                  "log_level": 2})
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        out: dict[tuple[int, int], bytes] = {}
        deadline = time.monotonic() + timeout
        while len(out) < sum(ends.values()) and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is None:
                    out[(m.partition(), m.offset())] = m.value()
        return out
    finally:
        c.close()


def error_name(err: KafkaError) -> tuple[str, bool]:
    """(name, retriable): a broker's error code by Kafka's definition; a local error (timeout, transport) means
    the client got no answer, and retrying is what it should do."""
    code = err.code()
    if code > 0:
        try:
            kafka = ErrorCode(code)
            return kafka.name.upper(), bool(kafka.retriable)
        except ValueError:
            return f"ERROR_{code}", False
    return err.name(), not err.fatal()


# ---------------------------------------------------------------------------------------------------- one row


@dataclass
class Outcome:
    backend: str
    fault: str
    acked: int = 0
    acked_during: int = 0  # acks from one second into the fault until its end (requests sent before it excepted)
    lost: list[str] = field(default_factory=list)
    probe_errors: dict[str, int] = field(default_factory=dict)
    not_retriable: list[str] = field(default_factory=list)
    readyz_during: set = field(default_factory=set)
    ready_after_s: float | None = None
    generation: float | None = None
    group_ok: bool = False
    group_detail: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return (not self.lost and not self.not_retriable and self.ready_after_s is not None and self.group_ok)

    def cells(self) -> list[str]:
        during = "/".join(sorted("no answer" if s is None else str(s) for s in self.readyz_during)) or "-"
        probe = ", ".join(f"{name} x{n}" + (" (!)" if name in self.not_retriable else "")
                          for name, n in sorted(self.probe_errors.items())) or "none"
        return [self.backend, self.fault, str(self.acked), str(self.acked_during), str(len(self.lost)), probe,
                f"{during}; 200 after {self.ready_after_s:.1f} s" if self.ready_after_s is not None else
                f"{during}; NOT READY", "-" if self.generation is None else f"{self.generation:.0f}",
                "ok" if self.group_ok else f"FAILED {self.group_detail}"]


def run_row(backend: str, fault_name: str, *, brokers: int = 2, session_timeout_ms: int = 3000, rate: float = 200,
            fault_s: float | None = None, workdir: Path | None = None, log=print) -> Outcome:
    """One row of the matrix: a fresh cluster, the fault on broker 1 (or its store), and the outcome."""
    fault_s = fault_s if fault_s is not None else 2 * session_timeout_ms / 1000 + 1
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dray-faults-")) if own_dir else workdir
    out = Outcome(backend, fault_name)
    cluster = Cluster(backend, brokers, session_timeout_ms, workdir)
    stream = probe = group = None
    try:
        cluster.start()
        topic = f"faults-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 2})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        group = GroupConsumer(cluster.bootstrap, cluster.group_for(1), topic)
        stream = StreamProducer(cluster.bootstrap, topic, rate, name="stream", retries=True,
                                timeout_ms=int(fault_s * 1000) + 120_000)
        probe = StreamProducer(cluster.bootstrap, topic, 20, name="probe", retries=False, timeout_ms=3_000)
        _wait(lambda: len(group.read) >= 50, 60, "the group to read before the fault")
        log(f"[{backend} {fault_name}] fault for {fault_s:.1f} s")

        fault = FAULT_TYPES[fault_name](cluster, 1)
        fault.begin()
        begun = time.monotonic()
        try:
            while time.monotonic() - begun < fault_s:
                out.readyz_during.add(cluster.readyz(1, timeout=4.0))
                time.sleep(0.25)
        finally:
            fault.end()
        ended = time.monotonic()
        for err, when in probe.failed:
            if begun <= when:
                name, retriable = error_name(err)
                out.probe_errors[name] = out.probe_errors.get(name, 0) + 1
                if not retriable and name not in out.not_retriable:
                    out.not_retriable.append(name)

        heal_deadline = ended + 90
        while time.monotonic() < heal_deadline:
            if all(cluster.readyz(b) == 200 for b in cluster.brokers):
                out.ready_after_s = time.monotonic() - ended
                break
            time.sleep(0.1)
        log(f"[{backend} {fault_name}] lifted; ready after {out.ready_after_s} s")
        time.sleep(2)  # records produced after the heal, too

        for producer in (stream, probe):
            left = producer.stop()
            if left:
                out.notes.append(f"{producer.name}: {left} deliveries never reported")
        stream_errors = [error_name(err)[0] for err, _ in stream.failed]
        if stream_errors:
            out.notes.append(f"stream producer errors (after its retries): {sorted(set(stream_errors))}")
        acked = stream.acked + probe.acked
        out.acked = len(acked)
        out.acked_during = sum(1 for *_, when in acked if begun + 1 <= when <= ended)
        log_records = read_log(cluster.bootstrap, topic)
        for p, offset, value, _ in acked:
            if log_records.get((p, offset)) != value:
                out.lost.append(f"{p}@{offset}")
        out.generation = cluster.metric(1, "dray_metadata_session_generation")

        expected = {(p, o) for p, o, _, _ in acked}
        ends = {p: 1 + max((o for q, o in expected if q == p), default=-1) for p in range(PARTITIONS)}
        try:
            _wait(lambda: expected <= group.read, 60, "the group to read every acked record")
            _wait(lambda: all(committed(cluster.bootstrap, group.group, topic).get(p, -1) >= end
                              for p, end in ends.items()), 60, "the group's commits to reach the end offsets")
            out.group_ok = True
        except TimeoutError as e:
            out.group_detail = f"{e}; read {len(expected & group.read)} of {len(expected)}; commit errors " \
                               f"{group.commit_errors[-3:]}"
    finally:
        for client in (stream, probe):
            if client is not None and client.thread.is_alive():
                client.stop(5)
        if group is not None:
            group.stop()
        cluster.stop()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def print_matrix(outcomes: list[Outcome]) -> None:
    header = ["backend", "fault", "acked", "during", "lost", "probe answers during the fault",
              "broker 1 /readyz during; after", "session", "group"]
    rows = [header, *(o.cells() for o in outcomes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for o in outcomes:
        for note in o.notes:
            print(f"note [{o.backend} {o.fault}]: {note}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--brokers", type=int, default=2)
    p.add_argument("--session-timeout-ms", type=int, default=3000)
    p.add_argument("--rate", type=float, default=200, help="records/s of the streaming producer")
    args = p.parse_args()
    outcomes = []
    for backend in args.backends.split(","):
        for fault in args.faults.split(","):
            outcomes.append(run_row(backend, fault, brokers=args.brokers, session_timeout_ms=args.session_timeout_ms,
                                    rate=args.rate))
    print()
    print_matrix(outcomes)
    sys.exit(0 if all(o.healthy for o in outcomes) else 1)


if __name__ == "__main__":
    main()
