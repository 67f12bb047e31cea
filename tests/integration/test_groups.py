"""Consumer groups (classic protocol) with real clients: confluent-kafka, aiokafka and kafka-python.

Consumers run as subprocesses (this module is also the worker: `python -m tests.integration.test_groups worker
CONFIG_JSON`), so that one can be SIGKILLed like a crashed application. A worker subscribes, reports each new
assignment and every record it reads as JSON lines, commits synchronously after each batch, and on "stop" on its
stdin commits and closes (leaving the group).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

TOPIC_PARTITIONS = 6
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_MS = 500
REPO = Path(__file__).resolve().parents[2]


# --- the worker (runs in a subprocess) ------------------------------------------------------------------------


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _stop_flag() -> threading.Event:
    stop = threading.Event()

    def read():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=read, daemon=True).start()
    return stop


def _worker_confluent(cfg: dict, stop: threading.Event) -> None:
    from confluent_kafka import Consumer, KafkaException

    conf = {
        "bootstrap.servers": cfg["bootstrap"], "group.id": cfg["group"], "client.id": cfg["name"],
        "session.timeout.ms": cfg["session_ms"], "heartbeat.interval.ms": HEARTBEAT_MS,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "partition.assignment.strategy": cfg["assignor"], "topic.metadata.refresh.interval.ms": 2_000,
    }
    if cfg.get("instance"):
        conf["group.instance.id"] = cfg["instance"]
    consumer = Consumer(conf)
    consumer.subscribe([cfg["topic"]])
    assigned = None
    while not stop.is_set():
        messages = consumer.consume(num_messages=500, timeout=0.2)
        records = [[m.partition(), m.offset()] for m in messages if m.error() is None]
        if records:
            _emit(ev="records", records=records)
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as e:
                _emit(ev="commit_failed", error=str(e))
        now = sorted(tp.partition for tp in consumer.assignment())
        if now != assigned:
            assigned = now
            _emit(ev="assignment", partitions=now)
    try:
        consumer.commit(asynchronous=False)
    except KafkaException:
        pass
    consumer.close()


def _worker_kafka_python(cfg: dict, stop: threading.Event) -> None:
    from kafka import KafkaConsumer
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
    from kafka.errors import KafkaError

    assignors = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor,
                 "sticky": StickyPartitionAssignor}
    consumer = KafkaConsumer(
        cfg["topic"], bootstrap_servers=cfg["bootstrap"].split(","), group_id=cfg["group"], client_id=cfg["name"],
        session_timeout_ms=cfg["session_ms"], heartbeat_interval_ms=HEARTBEAT_MS, auto_offset_reset="earliest",
        enable_auto_commit=False, partition_assignment_strategy=[assignors[cfg["assignor"]]],
        group_instance_id=cfg.get("instance"), metadata_max_age_ms=2_000,
    )
    assigned = None
    while not stop.is_set():
        batches = consumer.poll(timeout_ms=200, max_records=500)
        records = [[tp.partition, r.offset] for tp, rs in batches.items() for r in rs]
        if records:
            _emit(ev="records", records=records)
            try:
                consumer.commit()
            except KafkaError as e:
                _emit(ev="commit_failed", error=repr(e))
        now = sorted(tp.partition for tp in consumer.assignment())
        if now != assigned:
            assigned = now
            _emit(ev="assignment", partitions=now)
    try:
        consumer.commit()
    except KafkaError:
        pass
    consumer.close()


def _worker_aiokafka(cfg: dict, stop: threading.Event) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
    from aiokafka.errors import KafkaError

    assignors = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor,
                 "sticky": StickyPartitionAssignor}

    async def run():
        consumer = AIOKafkaConsumer(
            cfg["topic"], bootstrap_servers=cfg["bootstrap"], group_id=cfg["group"], client_id=cfg["name"],
            session_timeout_ms=cfg["session_ms"], heartbeat_interval_ms=HEARTBEAT_MS,
            auto_offset_reset="earliest", enable_auto_commit=False,
            partition_assignment_strategy=(assignors[cfg["assignor"]],), group_instance_id=cfg.get("instance"),
            metadata_max_age_ms=2_000,
        )
        await consumer.start()
        assigned = None
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            records = [[tp.partition, r.offset] for tp, rs in batches.items() for r in rs]
            if records:
                _emit(ev="records", records=records)
                try:
                    await consumer.commit()
                except KafkaError as e:
                    _emit(ev="commit_failed", error=repr(e))
            now = sorted(tp.partition for tp in consumer.assignment())
            if now != assigned:
                assigned = now
                _emit(ev="assignment", partitions=now)
        try:
            await consumer.commit()
        except KafkaError:
            pass
        await consumer.stop()

    asyncio.run(run())


WORKERS = {"confluent": _worker_confluent, "kafka-python": _worker_kafka_python, "aiokafka": _worker_aiokafka}


def worker_main(cfg: dict) -> None:
    stop = _stop_flag()
    _emit(ev="started")
    WORKERS[cfg["client"]](cfg, stop)
    _emit(ev="closed")


# --- driving workers from tests -------------------------------------------------------------------------------


class Worker:
    """A consumer subprocess; its events are collected by a reader thread."""

    def __init__(self, tmp: Path, client: str, bootstrap: str, group: str, topic: str, assignor: str,
                 name: str, instance: str | None = None, session_ms: int = SESSION_TIMEOUT_MS):
        self.name = name
        cfg = {"client": client, "bootstrap": bootstrap, "group": group, "topic": topic, "assignor": assignor,
               "name": name, "instance": instance, "session_ms": session_ms}
        self.stderr_path = tmp / f"worker-{name}-{uuid.uuid4().hex[:6]}.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_groups", "worker", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=REPO, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.assignment: frozenset[int] = frozenset()
        self.records: list[tuple[int, int]] = []
        self.commit_failures: list[str] = []
        self.closed = False
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if event["ev"] == "assignment":
                    self.assignment = frozenset(event["partitions"])
                elif event["ev"] == "records":
                    self.records.extend((p, o) for p, o in event["records"])
                elif event["ev"] == "commit_failed":
                    self.commit_failures.append(event["error"])
                elif event["ev"] == "closed":
                    self.closed = True

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """Commit, leave the group and exit."""
        if self.alive:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"worker {self.name} did not stop:\n{self.log()}")
        self._reader.join(5)
        assert self.closed, f"worker {self.name} did not close cleanly:\n{self.log()}"

    def kill(self) -> None:
        """SIGKILL: no commit, no LeaveGroup; the group must notice by the session timeout."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.assignment = frozenset()

    def log(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-5000:]


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll condition until it is true (and return its value); the time it took goes to stderr."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = condition()
        if value:
            print(f"[{time.monotonic() - start:5.1f} s] {what}", file=sys.stderr)
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def balanced(workers: list[Worker], partitions: int = TOPIC_PARTITIONS) -> bool:
    """Every partition assigned to exactly one live worker, spread as evenly as possible."""
    live = [w for w in workers if w.alive]
    sets = [w.assignment for w in live]
    union = frozenset().union(*sets)
    counts = sorted(len(s) for s in sets)
    return (sum(counts) == len(union) == partitions and counts[-1] - counts[0] <= 1)


def consumed(workers: list[Worker]) -> set[tuple[int, int]]:
    out = set()
    for w in workers:
        with w._lock:
            out.update(w.records)
    return out


def create_topic(bootstrap: str, topic: str, partitions: int = TOPIC_PARTITIONS) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def produce(bootstrap: str, topic: str, per_partition: int, partitions: int = TOPIC_PARTITIONS) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    failures = []
    for i in range(per_partition):
        for p in range(partitions):
            producer.produce(topic, value=b"v-%d-%d" % (p, i), partition=p,
                             on_delivery=lambda err, _m: err and failures.append(err))
    assert producer.flush(60) == 0 and not failures, failures


def end_offsets(bootstrap: str, topic: str, partitions: int = TOPIC_PARTITIONS) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        c.close()


def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        return {(tp.topic, tp.partition): o.offset for tp, o in admin.list_group_offsets(group)[group].items()}
    finally:
        admin.close()


def _all_records(ends: dict[int, int], start: dict[int, int] | None = None) -> set[tuple[int, int]]:
    start = start or {}
    return {(p, o) for p, end in ends.items() for o in range(start.get(p, 0), end)}


# --- tests ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group_broker(tmp_path_factory):
    """An embedded broker for these tests, with a short initial rebalance delay when the build has that setting
    (Kafka's 3 s default makes every new group wait; the unit tests cover the delay itself)."""
    from tests.integration.brokers import BrokerProcess

    b = BrokerProcess(tmp_path_factory.mktemp("group-broker"),
                      extra_args=["--group-initial-rebalance-delay-ms", "500"]).start()
    yield b
    b.stop()

CLIENT_ASSIGNORS = [("confluent", "range"), ("aiokafka", "roundrobin"), ("kafka-python", "sticky")]


def _group_lifecycle(tmp_path: Path, bootstrap: str, client: str, assignor: str) -> None:
    topic = f"grp-{client}-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, 50)
    workers = [Worker(tmp_path, client, bootstrap, group, topic, assignor, f"{client}-{i}") for i in range(3)]
    try:
        # Three consumers share the six partitions, two each, no overlap.
        wait_for(lambda: balanced(workers) and all(len(w.assignment) == 2 for w in workers), 60,
                 "three consumers to share the partitions")
        # One leaves: the other two take its partitions.
        workers[0].stop()
        wait_for(lambda: balanced(workers[1:]) and all(len(w.assignment) == 3 for w in workers[1:]), 60,
                 "two consumers to take over the partitions of the one that left")
        # One is killed: after the session timeout the last one has them all.
        workers[1].kill()
        wait_for(lambda: workers[2].assignment == frozenset(range(TOPIC_PARTITIONS)), 60,
                 "the session timeout to hand the killed consumer's partitions over")
        produce(bootstrap, topic, 50)
        ends = end_offsets(bootstrap, topic)
        wanted = _all_records(ends)
        wait_for(lambda: wanted <= consumed(workers), 60, "every record to be consumed")
        workers[2].stop()
        # Committed offsets are where the consumers stopped; after a restart they resume exactly there.
        committed = committed_offsets(bootstrap, group)
        assert committed == {(topic, p): end for p, end in ends.items()}
        produce(bootstrap, topic, 20)
        new_ends = end_offsets(bootstrap, topic)
        restarted = [Worker(tmp_path, client, bootstrap, group, topic, assignor, f"{client}-r{i}")
                     for i in range(3)]
        workers.extend(restarted)
        wanted = _all_records(new_ends, ends)
        wait_for(lambda: wanted <= consumed(restarted), 60, "the restarted consumers to read the new records")
        assert consumed(restarted) == wanted, "restarted consumers read records before their committed offsets"
        wait_for(lambda: balanced(restarted), 60, "the restarted consumers to share the partitions")
    finally:
        for w in workers:
            if w.alive:
                w.kill()


@pytest.mark.parametrize("client,assignor", CLIENT_ASSIGNORS)
def test_group_lifecycle(tmp_path, group_broker, client, assignor):
    _group_lifecycle(tmp_path, group_broker.bootstrap, client, assignor)


@pytest.mark.parametrize("broker", ["oxia-s3"], indirect=True)
def test_group_lifecycle_on_oxia(tmp_path, broker):
    _group_lifecycle(tmp_path, broker.bootstrap, "confluent", "roundrobin")


@pytest.mark.parametrize("client,assignor", [("confluent", "cooperative-sticky"), ("kafka-python", "range"),
                                             ("aiokafka", "sticky")])
def test_assignors_pass_through(tmp_path, group_broker, client, assignor):
    """The broker only relays protocol metadata and assignments: every client-side assignor works."""
    bootstrap = group_broker.bootstrap
    topic = f"asg-{client}-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, 10)
    workers = [Worker(tmp_path, client, bootstrap, f"g-{topic}", topic, assignor, f"{client}-{i}") for i in range(2)]
    try:
        wait_for(lambda: balanced(workers), 60, "two consumers to share the partitions")
        workers[0].stop()
        wait_for(lambda: workers[1].assignment == frozenset(range(TOPIC_PARTITIONS)), 60,
                 "the remaining consumer to take every partition")
        wait_for(lambda: _all_records(end_offsets(bootstrap, topic)) <= consumed(workers), 60, "every record")
    finally:
        for w in workers:
            if w.alive:
                w.kill()


def test_static_member_restart_keeps_its_partitions(tmp_path, group_broker):
    bootstrap = group_broker.bootstrap
    topic = f"static-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    # A long session: the restarted process must come back before it ends (slow machines included).
    workers = [Worker(tmp_path, "confluent", bootstrap, group, topic, "range", f"s{i}", instance=f"inst-{i}",
                      session_ms=60_000) for i in range(2)]
    try:
        wait_for(lambda: balanced(workers), 60, "two static consumers to share the partitions")
        before = {w.name: w.assignment for w in workers}
        assert len(_describe(bootstrap, group).members) == 2
        workers[1].kill()  # a static member that comes back within its session keeps its assignment
        workers[1] = Worker(tmp_path, "confluent", bootstrap, group, topic, "range", "s1", instance="inst-1",
                            session_ms=60_000)
        wait_for(lambda: workers[1].assignment, 30, "the restarted static member to get its partitions back")
        assert {w.name: w.assignment for w in workers} == before
        description = _describe(bootstrap, group)
        assert sorted(m.group_instance_id for m in description.members) == ["inst-0", "inst-1"]
    finally:
        for w in workers:
            if w.alive:
                w.kill()


def test_java_classic_consumers_share_and_hand_over(group_broker):
    """The Java client (kafka-clients 4.x, group.protocol=classic, its default range+cooperative-sticky)."""
    from tests.integration.java_client import JavaClient, ensure_built

    java = JavaClient(ensure_built())
    bootstrap = group_broker.bootstrap
    topic = f"java-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, 20)
    props = {"session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": HEARTBEAT_MS}

    def assignment(c) -> frozenset[int]:
        events = [e for e in list(c.events) if "assignment" in e]
        return frozenset(p["partition"] for p in events[-1]["assignment"]) if events else frozenset()

    def records(*clients) -> set[tuple[int, int]]:
        return {(r.partition, r.offset) for c in clients for r in c.records()}

    with java.start_consumer(bootstrap, topic, group=group, group_protocol="classic", props=props) as c1, \
            java.start_consumer(bootstrap, topic, group=group, group_protocol="classic", props=props) as c2:
        wait_for(lambda: len(assignment(c1)) == len(assignment(c2)) == 3
                 and assignment(c1) | assignment(c2) == frozenset(range(TOPIC_PARTITIONS)), 60,
                 "two Java consumers to share the partitions")
        wait_for(lambda: _all_records(end_offsets(bootstrap, topic)) <= records(c1, c2), 60, "every record")
        assert c1.close() == 0
        wait_for(lambda: assignment(c2) == frozenset(range(TOPIC_PARTITIONS)), 60,
                 "the remaining Java consumer to take every partition")
        produce(bootstrap, topic, 10)
        ends = end_offsets(bootstrap, topic)
        wait_for(lambda: _all_records(ends) <= records(c1, c2), 60, "the new records")
        assert c2.close() == 0
    assert committed_offsets(bootstrap, group) == {(topic, p): end for p, end in ends.items()}


def _describe(bootstrap: str, group: str):
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    return admin.describe_consumer_groups([group])[group].result(30)


@pytest.mark.parametrize("broker", ["embedded", "oxia-s3"], indirect=True)
def test_coordinator_failover(tmp_path, broker):
    """A second broker joins the session's broker (same metadata and object store); the group is coordinated by
    the new one, which is killed mid-group: the group continues on the other broker, members keep consuming,
    rebalance there, and committed offsets are kept. (All brokers on one store are one cluster: the second broker
    must share the session broker's object store, and the session broker must survive for the other tests.)"""
    from confluent_kafka.admin import AdminClient

    from dray_broker.groups.coordinator import rendezvous
    from tests.integration.brokers import BrokerProcess

    second = BrokerProcess(
        tmp_path / "second",
        metadata=broker.metadata or f"sqlite://{broker.data_dir.resolve()}/meta.db",
        object_store=broker.object_store or f"file://{broker.data_dir.resolve()}/objects",
        extra_args=["--session-timeout-ms", "3000", "--group-initial-rebalance-delay-ms", "500"],
    ).start()
    bootstrap = f"{broker.bootstrap},{second.bootstrap}"
    topic = f"failover-{uuid.uuid4().hex[:8]}"
    workers = []
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        nodes = wait_for(lambda: (lambda n: len(n) >= 2 and n)(admin.describe_cluster().result(30).nodes), 30,
                         "the second broker to be registered")
        second_id = next(n.id for n in nodes if n.port == second.port)
        live = [n.id for n in nodes]
        group = next(g for g in (f"g-{topic}-{i}" for i in range(1000)) if rendezvous(g, live) == second_id)
        create_topic(bootstrap, topic)
        produce(bootstrap, topic, 30)
        workers = [Worker(tmp_path, "confluent", bootstrap, group, topic, "range", f"f{i}") for i in range(2)]
        wait_for(lambda: balanced(workers), 60, "two consumers to share the partitions")
        assert _describe(bootstrap, group).coordinator.port == second.port
        wait_for(lambda: _all_records(end_offsets(bootstrap, topic)) <= consumed(workers), 60, "the first records")
        second.kill()
        produce(broker.bootstrap, topic, 30)
        ends = end_offsets(broker.bootstrap, topic)
        wait_for(lambda: _all_records(ends) <= consumed(workers), 90, "every record after the coordinator died")
        wait_for(lambda: _coordinator_port(broker.bootstrap, group) == broker.port, 60,
                 "the surviving broker to coordinate the group")
        moved_at = time.monotonic()
        # The members' sessions continue on the new coordinator (no eviction after a session timeout) ...
        wait_for(lambda: time.monotonic() - moved_at > SESSION_TIMEOUT_MS / 1000 + 1, 30, "a session timeout")
        description = _describe(broker.bootstrap, group)
        assert str(description.state).endswith("STABLE") and len(description.members) == 2
        # ... and it runs rebalances: a third consumer joins.
        workers.append(Worker(tmp_path, "confluent", broker.bootstrap, group, topic, "range", "f2"))
        wait_for(lambda: balanced(workers) and all(len(w.assignment) == 2 for w in workers), 60,
                 "three consumers to share the partitions on the new coordinator")
        produce(broker.bootstrap, topic, 10)
        ends = end_offsets(broker.bootstrap, topic)
        wait_for(lambda: _all_records(ends) <= consumed(workers), 60, "the records produced after the rebalance")
        for w in workers:
            w.stop()
        assert committed_offsets(broker.bootstrap, group) == {(topic, p): end for p, end in ends.items()}
    finally:
        for w in workers:
            if w.alive:
                w.kill()
        second.stop()


def _coordinator_port(bootstrap: str, group: str) -> int | None:
    try:
        return _describe(bootstrap, group).coordinator.port
    except Exception:
        return None


def test_admin_kafka_python_lists_describes_and_deletes_groups(tmp_path, group_broker):
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.errors import GroupIdNotFoundError

    bootstrap = group_broker.bootstrap
    topic = f"adm-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, 10)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    workers = [Worker(tmp_path, "kafka-python", bootstrap, group, topic, "range", f"a{i}") for i in range(2)]
    try:
        wait_for(lambda: balanced(workers), 60, "two consumers to share the partitions")
        wait_for(lambda: _all_records(end_offsets(bootstrap, topic)) <= consumed(workers), 60, "every record")
        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert listed[group]["protocol_type"] == "consumer"
        assert group in {g["group_id"] for g in admin.list_groups(states_filter=["Stable"])}
        assert group not in {g["group_id"] for g in admin.list_groups(states_filter=["Empty"])}
        assert group in {g["group_id"] for g in admin.list_groups(types_filter=["classic"])}
        described = admin.describe_groups([group], include_authorized_operations=True)[group]
        assert described["error"] is None and described["group_state"] == "Stable"
        assert described["protocol_type"] == "consumer" and described["protocol_data"] == "range"
        assert len(described["members"]) == 2
        owned = sorted(p for m in described["members"] for t in m["member_assignment"]["assigned_partitions"]
                       for p in t["partitions"])
        assert owned == list(range(TOPIC_PARTITIONS))
        assert all(topic in m["member_metadata"]["topics"] for m in described["members"])
        assert admin.delete_groups([group]) == {group: "NonEmptyGroupError"}
        offsets = admin.list_group_offsets(group)[group]
        ends = end_offsets(bootstrap, topic)
        wait_for(lambda: {tp.partition: o.offset for tp, o in admin.list_group_offsets(group)[group].items()} == ends,
                 30, "the commits of every partition")
        assert all(o.metadata == "" for o in offsets.values())
        for w in workers:
            w.stop()
        assert admin.describe_groups([group])[group]["group_state"] == "Empty"
        # Offsets of topics the group no longer consumes can be deleted one by one.
        result = admin.delete_group_offsets(group, [TopicPartition(topic, 0)])
        assert [e.__name__ for e in result.values()] == ["NoError"]
        assert TopicPartition(topic, 0) not in admin.list_group_offsets(group)[group]
        assert admin.delete_groups([group, "never-existed-" + group]) == {
            group: "OK", "never-existed-" + group: "GroupIdNotFoundError"}
        assert group not in {g["group_id"] for g in admin.list_groups()}
        assert admin.list_group_offsets(group)[group] == {}
        assert "GroupIdNotFound" in admin.describe_groups([group])[group]["error"]
        with pytest.raises(GroupIdNotFoundError):
            admin.delete_group_offsets(group, [TopicPartition(topic, 1)])
    finally:
        admin.close()
        for w in workers:
            if w.alive:
                w.kill()


# --- every API version over the wire, and bad input -----------------------------------------------------------

SESSION_WIRE_MS = 60_000


def _subscription(*topics: str) -> bytes:
    import struct

    out = struct.pack(">hi", 0, len(topics))
    for t in topics:
        out += struct.pack(">h", len(t)) + t.encode()
    return out + struct.pack(">i", -1)


def _wire_join(bootstrap: str, version: int, group: str, topic: str, *, member_id: str = "",
               instance: str | None = None, session: int = SESSION_WIRE_MS, protocol_type: str = "consumer"):
    """JoinGroup at this version on a fresh connection (with the MEMBER_ID_REQUIRED round on v4+)."""
    from kio.schema.errors import ErrorCode

    from dray_broker.protocol import apis
    from tests.integration.wire import Wire, request

    wire = Wire(bootstrap)
    wire.sock.settimeout(60)
    try:
        def join(mid):
            return wire.call(apis.JOIN_GROUP, version, request(
                apis.JOIN_GROUP, version, "JoinGroupRequest", group_id=group, session_timeout=session,
                rebalance_timeout=20_000, member_id=mid, group_instance_id=instance, protocol_type=protocol_type,
                protocols=(request(apis.JOIN_GROUP, version, "JoinGroupRequestProtocol", name="range",
                                   metadata=_subscription(topic)),), reason="test"))

        r = join(member_id)
        if r.error_code == ErrorCode.member_id_required:
            assert version >= 4 and instance is None and r.member_id
            r = join(r.member_id)
        return r
    finally:
        wire.close()


def _topic_id(wire, topic: str):
    from dray_broker.protocol import apis
    from tests.integration.wire import request

    md = wire.call(apis.METADATA, 12, request(
        apis.METADATA, 12, "MetadataRequest", topics=(request(apis.METADATA, 12, "MetadataRequestTopic", name=topic,
                                                              topic_id=None),),
        allow_auto_topic_creation=False, include_topic_authorized_operations=False))
    return md.topics[0].topic_id


def test_every_group_api_version_and_bad_input_over_the_wire(embedded_broker):
    from concurrent.futures import ThreadPoolExecutor

    from kio.schema.errors import ErrorCode

    from dray_broker.protocol import apis
    from tests.integration.wire import Wire, request

    bootstrap = embedded_broker.bootstrap
    topic = f"wire-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic, 2)
    wire = Wire(bootstrap)
    wire.sock.settimeout(60)
    try:
        topic_id = _topic_id(wire, topic)
        for v in range(7):
            found = wire.call(apis.FIND_COORDINATOR, v, request(
                apis.FIND_COORDINATOR, v, "FindCoordinatorRequest", key=group, key_type=0, coordinator_keys=(group,)))
            node = found.coordinators[0] if v >= 4 else found
            assert node.error_code == ErrorCode.none and node.port == embedded_broker.port, (v, found)
        txn = wire.call(apis.FIND_COORDINATOR, 4, request(apis.FIND_COORDINATOR, 4, "FindCoordinatorRequest",
                                                          key_type=1, coordinator_keys=("tx",)))
        assert txn.coordinators[0].error_code == ErrorCode.transactional_id_authorization_failed

        # JoinGroup v0-9: ten members join one group at once and share one generation.
        with ThreadPoolExecutor(10) as pool:
            joins = list(pool.map(lambda v: _wire_join(bootstrap, v, group, topic), range(10)))
        assert all(j.error_code == ErrorCode.none for j in joins), joins
        generation = joins[0].generation_id
        assert {j.generation_id for j in joins} == {generation} and {j.leader for j in joins} == {joins[0].leader}
        leader_version = next(v for v, j in enumerate(joins) if j.member_id == j.leader)
        assert sorted(m.member_id for m in joins[leader_version].members) == sorted(j.member_id for j in joins)
        assert all(j.members == () for j in joins if j.member_id != j.leader)
        assert all(j.protocol_name == "range" for j in joins)
        assert all(j.protocol_type == "consumer" for j in joins[7:])
        ids = [j.member_id for j in joins]

        # SyncGroup v0-5: the followers wait for the leader's assignment.
        def sync(v):
            w = Wire(bootstrap)
            w.sock.settimeout(60)
            try:
                sv = min(v, 5)
                assignments = tuple(request(apis.SYNC_GROUP, sv, "SyncGroupRequestAssignment", member_id=m,
                                            assignment=b"assignment-%d" % i) for i, m in enumerate(ids)) \
                    if v == leader_version else ()
                return w.call(apis.SYNC_GROUP, sv, request(
                    apis.SYNC_GROUP, sv, "SyncGroupRequest", group_id=group, generation_id=generation,
                    member_id=ids[v], group_instance_id=None, protocol_type="consumer", protocol_name="range",
                    assignments=assignments))
            finally:
                w.close()

        with ThreadPoolExecutor(10) as pool:
            syncs = list(pool.map(sync, range(10)))
        assert [s.assignment for s in syncs] == [b"assignment-%d" % i for i in range(10)], syncs
        assert all(s.error_code == ErrorCode.none for s in syncs)

        for v in range(5):
            hb = wire.call(apis.HEARTBEAT, v, request(apis.HEARTBEAT, v, "HeartbeatRequest", group_id=group,
                                                      generation_id=generation, member_id=ids[v]))
            assert hb.error_code == ErrorCode.none, (v, hb)

        # OffsetCommit v2-10 then OffsetFetch v1-10 see the last commit.
        def commit(v, offset, *, member=ids[0], gen=generation, tid=topic_id, metadata="m"):
            return wire.call(apis.OFFSET_COMMIT, v, request(
                apis.OFFSET_COMMIT, v, "OffsetCommitRequest", group_id=group, generation_id_or_member_epoch=gen,
                member_id=member, group_instance_id=None, retention_time=-1, topics=(request(
                    apis.OFFSET_COMMIT, v, "OffsetCommitRequestTopic", name=topic, topic_id=tid, partitions=(request(
                        apis.OFFSET_COMMIT, v, "OffsetCommitRequestPartition", partition_index=0,
                        committed_offset=offset, committed_leader_epoch=7, committed_metadata=metadata),)),)))

        def fetch(v):
            if v >= 8:
                r = wire.call(apis.OFFSET_FETCH, v, request(
                    apis.OFFSET_FETCH, v, "OffsetFetchRequest", require_stable=False, groups=(request(
                        apis.OFFSET_FETCH, v, "OffsetFetchRequestGroup", group_id=group, member_id=None,
                        member_epoch=-1, topics=(request(apis.OFFSET_FETCH, v, "OffsetFetchRequestTopics", name=topic,
                                                         topic_id=topic_id, partition_indexes=(0, 1)),)),)))
                assert r.groups[0].error_code == ErrorCode.none
                topics = r.groups[0].topics
            else:
                r = wire.call(apis.OFFSET_FETCH, v, request(
                    apis.OFFSET_FETCH, v, "OffsetFetchRequest", group_id=group, require_stable=False, topics=(
                        request(apis.OFFSET_FETCH, v, "OffsetFetchRequestTopic", name=topic,
                                partition_indexes=(0, 1)),)))
                topics = r.topics
            return {p.partition_index: (p.committed_offset, getattr(p, "committed_leader_epoch", None), p.metadata,
                                         p.error_code) for p in topics[0].partitions}

        for v in range(2, 11):
            r = commit(v, 100 + v)
            assert [p.error_code for p in r.topics[0].partitions] == [ErrorCode.none], (v, r)
        for v in range(1, 11):
            with_epoch = v >= 5  # the leader epoch is in OffsetFetch v5+
            assert fetch(v) == {0: (110, 7 if with_epoch else None, "m", ErrorCode.none),
                                1: (-1, -1 if with_epoch else None, "", ErrorCode.none)}, v

        # Bad input: nothing is committed, and each gets Kafka's error.
        def commit_error(*args, **kwargs):
            return commit(*args, **kwargs).topics[0].partitions[0].error_code

        assert commit_error(8, 1, member="ghost") == ErrorCode.unknown_member_id
        assert commit_error(8, 1, gen=generation - 1) == ErrorCode.illegal_generation
        assert commit_error(8, 1, member="", gen=-1) == ErrorCode.unknown_member_id
        assert commit_error(8, 1, metadata="x" * 5000) == ErrorCode.offset_metadata_too_large
        assert commit_error(10, 1, tid=uuid.uuid4()) == ErrorCode.unknown_topic_id
        assert fetch(8)[0] == (110, 7, "m", ErrorCode.none)
        hb = wire.call(apis.HEARTBEAT, 4, request(apis.HEARTBEAT, 4, "HeartbeatRequest", group_id=group,
                                                  generation_id=generation + 1, member_id=ids[0]))
        assert hb.error_code == ErrorCode.illegal_generation
        hb = wire.call(apis.HEARTBEAT, 4, request(apis.HEARTBEAT, 4, "HeartbeatRequest", group_id=group,
                                                  generation_id=generation, member_id="ghost"))
        assert hb.error_code == ErrorCode.unknown_member_id
        bad_sync = wire.call(apis.SYNC_GROUP, 5, request(
            apis.SYNC_GROUP, 5, "SyncGroupRequest", group_id=group, generation_id=generation - 1, member_id=ids[1],
            protocol_type="consumer", protocol_name="range", assignments=()))
        assert bad_sync.error_code == ErrorCode.illegal_generation
        assert _wire_join(bootstrap, 9, group, topic, session=1_000).error_code == ErrorCode.invalid_session_timeout
        assert _wire_join(bootstrap, 9, group, topic, member_id="ghost").error_code == ErrorCode.unknown_member_id
        assert _wire_join(bootstrap, 9, "", topic).error_code == ErrorCode.invalid_group_id
        assert _wire_join(bootstrap, 9, group, topic, protocol_type="connect").error_code == \
            ErrorCode.inconsistent_group_protocol
        none = wire.call(apis.OFFSET_COMMIT, 9, request(
            apis.OFFSET_COMMIT, 9, "OffsetCommitRequest", group_id="no-such-" + group, generation_id_or_member_epoch=1,
            member_id="m", topics=(request(apis.OFFSET_COMMIT, 9, "OffsetCommitRequestTopic", name=topic, partitions=(
                request(apis.OFFSET_COMMIT, 9, "OffsetCommitRequestPartition", partition_index=0, committed_offset=1,
                        committed_leader_epoch=-1, committed_metadata=None),)),)))
        assert none.topics[0].partitions[0].error_code == ErrorCode.group_id_not_found

        # DescribeGroups v0-6 and ListGroups v0-5.
        for v in range(7):
            d = wire.call(apis.DESCRIBE_GROUPS, v, request(apis.DESCRIBE_GROUPS, v, "DescribeGroupsRequest",
                                                           groups=(group, "absent-" + group),
                                                           include_authorized_operations=True))
            found, absent = d.groups
            assert (found.error_code, found.group_state, found.protocol_type, found.protocol_data) == \
                (ErrorCode.none, "Stable", "consumer", "range"), (v, found)
            assert sorted(m.member_id for m in found.members) == sorted(ids)
            assert {m.member_assignment for m in found.members} == {b"assignment-%d" % i for i in range(10)}
            assert absent.group_state == "Dead"
            assert absent.error_code == (ErrorCode.group_id_not_found if v >= 6 else ErrorCode.none)
        for v in range(6):
            listed = wire.call(apis.LIST_GROUPS, v, request(apis.LIST_GROUPS, v, "ListGroupsRequest",
                                                            states_filter=("stable",), types_filter=("classic",)))
            mine = [g for g in listed.groups if g.group_id == group]
            assert len(mine) == 1 and mine[0].protocol_type == "consumer", (v, listed)
            if v >= 4:
                assert mine[0].group_state == "Stable"
        empty = wire.call(apis.LIST_GROUPS, 4, request(apis.LIST_GROUPS, 4, "ListGroupsRequest",
                                                       states_filter=("Empty",)))
        assert group not in [g.group_id for g in empty.groups]
        refused = wire.call(apis.DELETE_GROUPS, 2, request(apis.DELETE_GROUPS, 2, "DeleteGroupsRequest",
                                                           groups_names=(group,)))
        assert refused.results[0].error_code == ErrorCode.non_empty_group

        # LeaveGroup v0-2 (one member each) and v3-5 (a batch, with an unknown member).
        for v in range(3):
            left = wire.call(apis.LEAVE_GROUP, v, request(apis.LEAVE_GROUP, v, "LeaveGroupRequest", group_id=group,
                                                          member_id=ids[v]))
            assert left.error_code == ErrorCode.none, (v, left)
        left = wire.call(apis.LEAVE_GROUP, 1, request(apis.LEAVE_GROUP, 1, "LeaveGroupRequest", group_id=group,
                                                      member_id=ids[0]))
        assert left.error_code == ErrorCode.unknown_member_id
        rest = ids[3:]
        for v, chunk in zip(range(3, 6), (rest[:2], rest[2:4], rest[4:] + ["ghost"])):
            left = wire.call(apis.LEAVE_GROUP, v, request(apis.LEAVE_GROUP, v, "LeaveGroupRequest", group_id=group,
                                                          members=tuple(request(apis.LEAVE_GROUP, v, "MemberIdentity",
                                                                                member_id=m, group_instance_id=None,
                                                                                reason="done") for m in chunk)))
            assert left.error_code == ErrorCode.none
            assert [m.error_code for m in left.members] == \
                [ErrorCode.unknown_member_id if m == "ghost" else ErrorCode.none for m in chunk]
        d = wire.call(apis.DESCRIBE_GROUPS, 5, request(apis.DESCRIBE_GROUPS, 5, "DescribeGroupsRequest",
                                                       groups=(group,), include_authorized_operations=False))
        assert d.groups[0].group_state == "Empty" and d.groups[0].members == ()

        # An empty group takes commits without a generation (the admin client's way), and OffsetDelete.
        assert commit_error(8, 55, member="", gen=-1) == ErrorCode.none
        assert fetch(3)[0][0] == 55
        deleted = wire.call(apis.OFFSET_DELETE, 0, request(
            apis.OFFSET_DELETE, 0, "OffsetDeleteRequest", group_id=group, topics=(request(
                apis.OFFSET_DELETE, 0, "OffsetDeleteRequestTopic", name=topic, partitions=(request(
                    apis.OFFSET_DELETE, 0, "OffsetDeleteRequestPartition", partition_index=0),)),)))
        assert deleted.error_code == ErrorCode.none and deleted.topics[0].partitions[0].error_code == ErrorCode.none
        assert fetch(2)[0][0] == -1

        # DeleteGroups v0-2.
        others = [f"{group}-{v}" for v in range(3)]
        for v, g in enumerate(others):
            c = wire.call(apis.OFFSET_COMMIT, 8, request(
                apis.OFFSET_COMMIT, 8, "OffsetCommitRequest", group_id=g, generation_id_or_member_epoch=-1,
                member_id="", topics=(request(apis.OFFSET_COMMIT, 8, "OffsetCommitRequestTopic", name=topic,
                                              partitions=(request(apis.OFFSET_COMMIT, 8, "OffsetCommitRequestPartition",
                                                                  partition_index=1, committed_offset=3,
                                                                  committed_leader_epoch=-1,
                                                                  committed_metadata=None),)),)))
            assert c.topics[0].partitions[0].error_code == ErrorCode.none
            r = wire.call(apis.DELETE_GROUPS, v, request(apis.DELETE_GROUPS, v, "DeleteGroupsRequest",
                                                         groups_names=(g, "absent-" + g)))
            assert [x.error_code for x in r.results] == [ErrorCode.none, ErrorCode.group_id_not_found], (v, r)
        r = wire.call(apis.DELETE_GROUPS, 0, request(apis.DELETE_GROUPS, 0, "DeleteGroupsRequest",
                                                     groups_names=(group,)))
        assert r.results[0].error_code == ErrorCode.none
        assert group not in [g.group_id for g in wire.call(apis.LIST_GROUPS, 0, request(
            apis.LIST_GROUPS, 0, "ListGroupsRequest")).groups]
    finally:
        wire.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m tests.integration.test_groups worker CONFIG_JSON")


@pytest.mark.parametrize("broker", ["embedded", "oxia-s3"], indirect=True)
def test_offset_commit_to_an_unknown_topic_or_partition_is_refused(broker):
    """As Kafka (librdkafka's test 0030): a commit to a topic that does not exist, or to a partition index out of
    range, is UNKNOWN_TOPIC_OR_PARTITION (by id in v10: UNKNOWN_TOPIC_ID) and stores nothing; the valid
    partitions of the same request are committed."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
    from kio.schema.errors import ErrorCode

    from dray_broker.protocol import apis
    from tests.integration.wire import Wire, request

    bootstrap = broker.bootstrap
    topic, missing = f"commit-{uuid.uuid4().hex[:8]}", f"missing-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    group = f"g-{uuid.uuid4().hex[:8]}"

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "socket.timeout.ms": 10_000})
    try:
        for offsets in ([TopicPartition(missing, 0, 10)], [TopicPartition(topic, 2, 10)]):
            with pytest.raises(KafkaException) as refused:
                consumer.commit(offsets=offsets, asynchronous=False)
            assert refused.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        # One bad partition does not stop the good one.
        with pytest.raises(KafkaException):
            consumer.commit(offsets=[TopicPartition(topic, 0, 10), TopicPartition(topic, 7, 1)], asynchronous=False)
        assert [(tp.partition, tp.offset) for tp in consumer.committed(
            [TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)] == [(0, 10), (1, -1001)]
    finally:
        consumer.close()

    # Every version over the wire, as a simple group (no member): nothing is stored for the refused ones.
    wire = Wire(bootstrap)
    try:
        topic_id = _topic_id(wire, topic)

        def commit(v, name, tid, partition):
            r = wire.call(apis.OFFSET_COMMIT, v, request(
                apis.OFFSET_COMMIT, v, "OffsetCommitRequest", group_id=group, generation_id_or_member_epoch=-1,
                member_id="", group_instance_id=None, retention_time=-1, topics=(request(
                    apis.OFFSET_COMMIT, v, "OffsetCommitRequestTopic", name=name, topic_id=tid, partitions=(request(
                        apis.OFFSET_COMMIT, v, "OffsetCommitRequestPartition", partition_index=partition,
                        committed_offset=1000 + v, committed_leader_epoch=-1, committed_metadata=""),)),)))
            return r.topics[0].partitions[0].error_code

        for v in range(2, 11):
            if v < 10:
                assert commit(v, missing, None, 0) == ErrorCode.unknown_topic_or_partition, v
            else:
                assert commit(v, None, uuid.uuid4(), 0) == ErrorCode.unknown_topic_id
            assert commit(v, topic, topic_id, 2) == ErrorCode.unknown_topic_or_partition, v
            assert commit(v, topic, topic_id, -1) == ErrorCode.unknown_topic_or_partition, v
            assert commit(v, topic, topic_id, 1) == ErrorCode.none, v
    finally:
        wire.close()
    assert committed_offsets(bootstrap, group) == {(topic, 0): 10, (topic, 1): 1010}
