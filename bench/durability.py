"""Kill -9 durability checker: several brokers on one store, idempotent and plain producers (confluent-kafka,
acks=all), a broker killed -9 and restarted at random intervals, then a full check of the log.

    .venv/bin/python bench/durability.py --cycles 100                 # embedded: SQLite + a local directory
    .venv/bin/python bench/durability.py --cycles 100 --oxia --s3     # Oxia + MinIO (tests/services.py)
    .venv/bin/python bench/durability.py --cycles 20 --compact        # also run `dray compact --all`, killed at
                                                                       # random, and check again after compacting
    .venv/bin/python bench/durability.py --cycles 20 --stall          # SIGSTOP brokers past the session timeout
                                                                       # instead of killing them

The check (check_log) consumes every partition from offset 0 and compares it with what the producers were told:
every acknowledged record must be at its acknowledged offset with identical key, value and headers. It prints
cycles, records acknowledged, lost (must be 0), duplicates (idempotent producers: must be 0; plain producers may
write a retried batch twice), records out of order (idempotent producers), offset gaps, fatal producer errors,
and "Future exception was never retrieved" lines in the broker logs. Exit status 0 when all of those are 0.

Faults are pluggable: a Fault gets `cycle(rng)` once per cycle (BrokerKiller, CompactionKiller) and `settle()`
when the cycles are over (then, if it says `recheck`, the log is checked a second time); run() takes more of them
in extra_faults, and check_log() is reusable on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import (  # noqa: E402
    OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from tests.integration.brokers import BrokerProcess  # noqa: E402

NEVER_RETRIEVED = "exception was never retrieved"


# --- what producers were told ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class Acks:
    """What one producer was told: acked records by (partition, offset), and its errors."""

    name: str
    idempotent: bool
    acked: dict[tuple[int, int], Record] = field(default_factory=dict)
    # Acked without an offset: librdkafka reports a batch delivered, offset unknown, when a later batch of the
    # producer was acked after it failed with a "possibly persisted" error. Such a record must be in the log.
    acked_anywhere: dict[bytes, tuple[int, Record]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)  # error name -> delivery reports failed with it
    fatal: int = 0  # fatal producer errors (the producer instance is replaced after each)
    crash: str | None = None  # the worker itself failed (a bug in the checker or the client)


def _record(producer: str, n: int, rng: random.Random, size: int) -> Record:
    key = f"{producer}-{n:09d}".encode()
    value = rng.randbytes(rng.randint(1, size))
    return Record(key, value, (("producer", producer.encode()), ("n", str(n).encode())))


class ProducerWorker(threading.Thread):
    """Produces numbered records round-robin over the partitions at about `rate` records/s until stopped."""

    def __init__(self, name: str, bootstrap: str, topic: str, partitions: int, *, idempotent: bool, rate: float,
                 value_size: int, seed: int, debug_log: Path | None = None):
        super().__init__(name=f"producer-{name}", daemon=True)
        self.acks = Acks(name, idempotent)
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.rate = rate
        self.value_size = value_size
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self._sent: dict[bytes, Record] = {}
        self._fatal = False
        self.logger = None
        if debug_log is not None:  # librdkafka's idempotence and message debug lines, to explain a failure
            self.logger = logging.getLogger(f"durability.{name}")
            self.logger.propagate = False
            self.logger.addHandler(logging.FileHandler(debug_log))
            self.logger.setLevel(logging.DEBUG)

    def config(self) -> dict:
        config = {"bootstrap.servers": self.bootstrap, "acks": "all", "enable.idempotence": self.acks.idempotent,
                  "linger.ms": 5, "message.timeout.ms": 180_000, "request.timeout.ms": 10_000,
                  "retry.backoff.ms": 100, "retry.backoff.max.ms": 1000, "log_level": 0,
                  "error_cb": self._on_error}
        if self.logger is not None:
            config.update({"debug": "eos,msg", "log_level": 7, "logger": self.logger})
        return config

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = True

    def _on_delivery(self, err: KafkaError | None, msg) -> None:
        record = self._sent.pop(msg.key(), None)  # (an exception here would only be swallowed by the client)
        if record is None:
            self.acks.errors["report for an unknown message"] += 1
        elif err is None and msg.offset() is None:
            self.acks.acked_anywhere[record.key] = (msg.partition(), record)
        elif err is None:
            self.acks.acked[(msg.partition(), msg.offset())] = record
        else:
            self.acks.errors[err.name()] += 1

    def run(self) -> None:
        try:
            self._produce()
        except Exception as e:  # noqa: BLE001 - reported, and fails the run
            self.acks.crash = repr(e)

    def _produce(self) -> None:
        producer = Producer(self.config())
        n = 0
        started = time.monotonic()
        while not self.stopping.is_set():
            if self._fatal:  # the instance is unusable: what it still holds is not acked; go on with a new one
                self.acks.fatal += 1
                producer = Producer(self.config())
                self._sent.clear()
                self._fatal = False
            record = _record(self.acks.name, n, self.rng, self.value_size)
            try:
                producer.produce(self.topic, record.value, record.key, partition=n % self.partitions,
                                 headers=list(record.headers), on_delivery=self._on_delivery)
                self._sent[record.key] = record
                n += 1
                producer.poll(max(0.0, n / self.rate - (time.monotonic() - started)))
            except BufferError:
                producer.poll(0.05)
            except (KafkaException, SystemError) as e:  # SystemError: the client after a fatal error, at times
                if isinstance(e, KafkaException) and (e.args[0].fatal() or e.args[0].code() == KafkaError._FATAL):
                    self._fatal = True
                elif not self._fatal:
                    raise
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                left = producer.flush(max(0.0, deadline - time.monotonic()))
                break
            except SystemError:  # confluent-kafka, at times, while failing timed-out messages: flush again
                self.acks.errors["client SystemError"] += 1
        else:
            left = len(producer)
        self.acks.errors["unflushed"] += left
        if self._fatal:
            self.acks.fatal += 1


# --- the check -------------------------------------------------------------------------------------------------


@dataclass
class Report:
    acked: int = 0
    lost: int = 0  # acked, but not at its offset with the same bytes
    duplicates: int = 0  # records of idempotent producers found more than once
    plain_duplicates: int = 0  # the same for plain producers (retries may write a batch twice: not an error)
    out_of_order: int = 0  # records of an idempotent producer found before an earlier one on the same partition
    gaps: int = 0  # offsets missing below the high watermark
    unacked_in_log: int = 0  # in the log, never acked (a timed-out request that did commit): not an error
    log_records: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicates == self.out_of_order == self.gaps == 0

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)


def read_partition(bootstrap: str, topic: str, partition: int, timeout: float = 60) -> dict[int, Record]:
    """Every record of a partition from offset 0 up to its high watermark: offset -> record (TimeoutError after
    timeout seconds without a new record)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"durability-check-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "log_level": 0})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        out: dict[int, Record] = {}
        deadline = time.monotonic() + timeout
        while (not out or max(out) < high - 1) and high > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"partition {partition}: read {len(out)} records up to "
                                   f"{max(out, default=-1)} of {high}, then nothing for {timeout} s")
            for m in consumer.consume(1000, 1.0):
                if m.error() is not None:
                    raise RuntimeError(f"partition {partition}: {m.error()}")
                out[m.offset()] = Record(m.key(), m.value(), tuple(m.headers() or ()))
                deadline = time.monotonic() + timeout
        return out
    finally:
        consumer.close()


def check_log(bootstrap: str, topic: str, partitions: int, acks: list[Acks]) -> Report:
    """Consume the whole topic and hold it against what the producers were told (see the module docstring)."""
    report = Report()
    log = {p: read_partition(bootstrap, topic, p) for p in range(partitions)}
    report.log_records = sum(len(records) for records in log.values())
    for p, records in log.items():
        expected = set(range(min(records, default=0), max(records, default=-1) + 1))
        report.gaps += len(expected - set(records))
    acked_keys = set()
    by_key = {p: {r.key: r for r in records.values()} for p, records in log.items()}
    for a in acks:
        report.acked += len(a.acked) + len(a.acked_anywhere)
        for key, (p, record) in a.acked_anywhere.items():
            acked_keys.add(key)
            if by_key.get(p, {}).get(key) != record:
                report.lost += 1
                report.note(f"lost: {key.decode()} acked (offset unknown) on partition {p}, not in the log")
        for (p, offset), record in a.acked.items():
            acked_keys.add(record.key)
            found = log.get(p, {}).get(offset)
            if found != record:
                report.lost += 1
                report.note(f"lost: {record.key.decode()} acked at {p}/{offset}, log has "
                            f"{found.key.decode() if found else 'nothing'}")
    idempotent = {a.name for a in acks if a.idempotent}
    acked_at = {k: r for a in acks for k, r in a.acked.items()}
    for p, records in log.items():
        seen = Counter()
        last_n: dict[str, int] = {}
        for offset in sorted(records):
            record = records[offset]
            seen[record.key] += 1
            producer, n = record.key.decode().rsplit("-", 1)
            if record.key not in acked_keys:
                report.unacked_in_log += 1
            if producer in idempotent:
                if int(n) <= last_n.get(producer, -1):
                    report.out_of_order += 1
                    report.note(f"out of order: {record.key.decode()} at {p}/{offset} after n={last_n[producer]}")
                last_n[producer] = max(int(n), last_n.get(producer, -1))
        for key, count in seen.items():
            if count > 1:
                if key.decode().rsplit("-", 1)[0] in idempotent:
                    report.duplicates += count - 1
                    offsets = [o for o, r in records.items() if r.key == key]
                    report.note(f"duplicate: {key.decode()} at {p}/{offsets}, acked at "
                                f"{[o for (ap, o), r in acked_at.items() if ap == p and r.key == key]}")
                else:
                    report.plain_duplicates += count - 1
    return report


# --- faults ----------------------------------------------------------------------------------------------------


class Fault(Protocol):
    name: str
    recheck: bool  # whether settle() changes how the log is stored (then the log is checked again after it)

    def cycle(self, rng: random.Random) -> None: ...

    def settle(self) -> None: ...

    def describe(self) -> str: ...

    def stop(self) -> None: ...


class BrokerKiller:
    """Each cycle: wait 1-4 s (min_s-max_s), kill -9 a random broker, restart it on the same port."""

    name = "broker kill -9"
    recheck = False

    def __init__(self, brokers: list[BrokerProcess], min_s: float, max_s: float):
        self.brokers = brokers
        self.min_s, self.max_s = min_s, max_s
        self.kills = 0

    def cycle(self, rng: random.Random) -> None:
        time.sleep(rng.uniform(self.min_s, self.max_s))
        victim = rng.choice(self.brokers)
        victim.kill()
        self.kills += 1
        victim.start()

    def settle(self) -> None:
        pass

    def describe(self) -> str:
        return f"brokers killed -9 and restarted: {self.kills}"

    def stop(self) -> None:
        pass


class BrokerStaller:
    """Each cycle: wait min_s-max_s, SIGSTOP a random broker for 1.2-2 session timeouts (its metadata session ends
    meanwhile, and other brokers take over its reservations), then SIGCONT it: it must renew its session and must
    not append what it had reserved before."""

    name = "broker SIGSTOP past the session timeout"
    recheck = False

    def __init__(self, brokers: list[BrokerProcess], min_s: float, max_s: float, session_timeout_ms: int):
        self.brokers = brokers
        self.min_s, self.max_s = min_s, max_s
        self.session_timeout_s = session_timeout_ms / 1000
        self.stalls = 0

    def cycle(self, rng: random.Random) -> None:
        time.sleep(rng.uniform(self.min_s, self.max_s))
        victim = rng.choice(self.brokers)
        os.killpg(victim.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(rng.uniform(1.2, 2.0) * self.session_timeout_s)
        finally:
            os.killpg(victim.proc.pid, signal.SIGCONT)
        self.stalls += 1

    def settle(self) -> None:
        pass

    def describe(self) -> str:
        return f"brokers stalled (SIGSTOP) past the session timeout: {self.stalls}"

    def stop(self) -> None:
        pass


class CompactionKiller:
    """Keeps a `dray compact --all` run going next to the brokers; each cycle kills -9 the one running with some
    probability (so at a random stage: planning, Parquet upload, Iceberg commit, index swap, GC). settle() lets the
    last one finish and runs one more to the end, so the check after it reads compacted data."""

    name = "compaction kill -9"
    recheck = True

    def __init__(self, storage_args: list[str], workdir: Path, kill_probability: float = 0.3):
        self.args = [sys.executable, "-m", "dray_broker.cli", "compact", "--all", "--grace-ms", "0", "-q",
                     *storage_args]
        self.log = workdir / "compaction.log"
        self.kill_probability = kill_probability
        self.proc: subprocess.Popen | None = None
        self.killed = self.finished = self.failed = 0

    def _start(self) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            return subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.finished += self.proc.returncode == 0
            self.failed += self.proc.returncode != 0
            self.proc = None

    def cycle(self, rng: random.Random) -> None:
        self._reap()
        if self.proc is None:
            self.proc = self._start()
        elif rng.random() < self.kill_probability:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self.killed += 1

    def settle(self) -> None:
        if self.proc is not None:
            self.proc.wait(600)
            self._reap()
        self.proc = self._start()
        self.proc.wait(600)
        self._reap()
        if self.failed:
            raise RuntimeError(f"{self.failed} compaction runs failed: see {self.log}")

    def describe(self) -> str:
        return f"compaction runs: {self.killed} killed, {self.finished} finished, {self.failed} failed"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# --- a run -----------------------------------------------------------------------------------------------------


@dataclass
class Config:
    cycles: int = 10
    brokers: int = 2
    partitions: int = 2
    idempotent_producers: int = 3
    plain_producers: int = 1
    rate: float = 300.0  # records/s per producer
    value_size: int = 1000
    min_interval_s: float = 1.0
    max_interval_s: float = 4.0
    session_timeout_ms: int = 6000
    compact: bool = False
    stall: bool = False  # SIGSTOP/SIGCONT brokers instead of killing them
    oxia: str | None = None  # address of an Oxia server (else the embedded SQLite store)
    s3: str | None = None  # an s3:// object store URL (else a local directory)
    seed: int = 0
    client_debug: bool = False  # librdkafka debug logs of each producer in the work directory


@dataclass
class Result:
    config: Config
    cycles: int
    fatal: int
    errors: Counter
    report: Report
    after_compaction: Report | None
    never_retrieved: int  # "Future exception was never retrieved" lines in broker logs
    crashes: list[str]  # producer workers that failed
    faults: list[str]  # what each fault did
    seconds: dict[str, float]  # wall time of each phase

    @property
    def ok(self) -> bool:
        return (self.report.ok and self.fatal == 0 and self.never_retrieved == 0 and not self.crashes
                and (self.after_compaction is None or self.after_compaction.ok))

    def summary(self) -> str:
        r = self.report
        lines = [
            f"cycles: {self.cycles} ({', '.join(f'{k} {v:.0f} s' for k, v in self.seconds.items())})",
            f"records acknowledged: {r.acked} (log: {r.log_records}, of which never acked: {r.unacked_in_log})",
            f"lost: {r.lost}",
            f"duplicates: {r.duplicates} (plain producers: {r.plain_duplicates})",
            f"out of order: {r.out_of_order}",
            f"offset gaps: {r.gaps}",
            f"fatal producer errors: {self.fatal}",
            f"'{NEVER_RETRIEVED}' in broker logs: {self.never_retrieved}",
            f"failed deliveries (retried away or timed out, not acked): {dict(self.errors) or 0}",
        ]
        lines += self.faults
        lines += [f"producer worker failed: {c}" for c in self.crashes]
        if self.after_compaction is not None:
            c = self.after_compaction
            lines.append(f"after compaction: lost {c.lost}, duplicates {c.duplicates}, out of order "
                         f"{c.out_of_order}, gaps {c.gaps}")
        lines += [f"  {e}" for e in r.examples + (self.after_compaction.examples if self.after_compaction else [])]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def run(config: Config, workdir: Path, extra_faults: list[Fault] = ()) -> Result:
    """Start the brokers, produce while the faults strike for config.cycles cycles, then check the log."""
    rng = random.Random(config.seed)
    metadata = f"oxia://{config.oxia}" if config.oxia else f"sqlite://{workdir}/meta.db"
    objects = config.s3 or f"file://{workdir}/objects"
    storage = ["--metadata", metadata, "--object-store", objects]
    brokers = [BrokerProcess(workdir / f"broker-{i}", metadata=metadata, object_store=objects,
                             extra_args=["--session-timeout-ms", str(config.session_timeout_ms)])
               for i in range(config.brokers)]
    broker_fault = (BrokerStaller(brokers, config.min_interval_s, config.max_interval_s, config.session_timeout_ms)
                    if config.stall else BrokerKiller(brokers, config.min_interval_s, config.max_interval_s))
    faults: list[Fault] = [broker_fault, *extra_faults]
    if config.compact:
        faults.append(CompactionKiller([*storage, "--data-dir", str(workdir)], workdir))
    seconds: dict[str, float] = {}
    started = time.monotonic()

    def phase(name: str) -> None:
        nonlocal started
        seconds[name] = time.monotonic() - started
        started = time.monotonic()

    for b in brokers:
        b.start()
    try:
        bootstrap = ",".join(b.bootstrap for b in brokers)
        topic = f"durability-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        admin.create_topics([NewTopic(topic, config.partitions, 1)])[topic].result(30)
        def worker(name: str, idempotent: bool, seed: int) -> ProducerWorker:
            return ProducerWorker(name, bootstrap, topic, config.partitions, idempotent=idempotent, rate=config.rate,
                                  value_size=config.value_size, seed=seed,
                                  debug_log=workdir / f"{name}.log" if config.client_debug else None)

        workers = [worker(f"idem{i}", True, config.seed * 100 + i) for i in range(config.idempotent_producers)]
        workers += [worker(f"plain{i}", False, config.seed * 100 + 50 + i) for i in range(config.plain_producers)]
        for w in workers:
            w.start()
        phase("start")
        for cycle in range(config.cycles):
            for fault in faults:
                fault.cycle(rng)
        phase("faults")
        for w in workers:
            w.stopping.set()
        for w in workers:
            w.join()
        phase("flush")
        acks = [w.acks for w in workers]
        report = check_log(bootstrap, topic, config.partitions, acks)
        phase("check")
        after = None
        if any(f.recheck for f in faults):
            for fault in faults:
                fault.settle()
            phase("settle")
            after = check_log(bootstrap, topic, config.partitions, acks)
            phase("check again")
    finally:
        for fault in faults:
            fault.stop()
        for b in brokers:
            b.stop()
    never_retrieved = sum(b.log().count(NEVER_RETRIEVED) for b in brokers)
    errors = sum((a.errors for a in acks), Counter())
    return Result(config, config.cycles, sum(a.fatal for a in acks), errors, report, after, never_retrieved,
                  [f"{a.name}: {a.crash}" for a in acks if a.crash], [f.describe() for f in faults], seconds)


def main(argv: list[str] | None = None) -> int:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--brokers", type=int, default=defaults.brokers)
    parser.add_argument("--partitions", type=int, default=defaults.partitions)
    parser.add_argument("--idempotent-producers", type=int, default=defaults.idempotent_producers)
    parser.add_argument("--plain-producers", type=int, default=defaults.plain_producers)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="records/s per producer")
    parser.add_argument("--value-size", type=int, default=defaults.value_size, help="largest value, bytes")
    parser.add_argument("--min-interval", type=float, default=defaults.min_interval_s, help="seconds between kills")
    parser.add_argument("--max-interval", type=float, default=defaults.max_interval_s)
    parser.add_argument("--session-timeout-ms", type=int, default=defaults.session_timeout_ms)
    parser.add_argument("--compact", action="store_true", help="also kill `dray compact --all` runs at random")
    parser.add_argument("--stall", action="store_true", help="SIGSTOP brokers past the session timeout (then "
                        "SIGCONT) instead of killing them")
    parser.add_argument("--oxia", action="store_true", help="Oxia metadata store (started by tests/services.py)")
    parser.add_argument("--s3", action="store_true", help="MinIO object store (started by tests/services.py)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (broker logs)")
    parser.add_argument("--client-debug", action="store_true", help="librdkafka debug logs (eos,msg) of each "
                        "producer in the work directory")
    args = parser.parse_args(argv)
    config = Config(cycles=args.cycles, brokers=args.brokers, partitions=args.partitions,
                    idempotent_producers=args.idempotent_producers, plain_producers=args.plain_producers,
                    rate=args.rate, value_size=args.value_size, min_interval_s=args.min_interval,
                    max_interval_s=args.max_interval, session_timeout_ms=args.session_timeout_ms,
                    compact=args.compact, stall=args.stall, seed=args.seed, client_debug=args.client_debug)
    services = []
    try:
        from tests import services as test_services

        if args.oxia:
            services.append(test_services.start_oxia())
            config.oxia = services[-1].address
        if args.s3:
            services.append(test_services.start_minio())
            config.s3 = services[-1].url(f"durability-{uuid.uuid4().hex[:8]}")
        workdir = Path(tempfile.mkdtemp(prefix="dray-durability-"))
        print(f"seed {config.seed}, work directory {workdir}, {config.brokers} brokers on "
              f"{'Oxia' if config.oxia else 'SQLite'} + {'MinIO' if config.s3 else 'a local directory'}", flush=True)
        result = run(config, workdir)
        print(result.summary())
        if not args.keep and result.ok:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        return 0 if result.ok else 1
    finally:
        for s in services:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
