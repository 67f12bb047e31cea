"""KIP-848 consumer groups (group.protocol=consumer) with real clients: confluent-kafka 2.x and the Java client 4.x.

The confluent consumers run in threads of the test process; their rebalance callbacks update one shared ownership
map, so that a partition assigned to a consumer while another still holds it is caught the moment it happens (the
broker hands a partition out only after its previous owner acknowledged the revocation, which librdkafka does once
on_revoke returned). Consumers commit after each batch and in on_revoke, so every record is read once per group.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest

from tests.integration.brokers import BrokerProcess
from tests.integration.conftest import _broker_for
from tests.integration.test_groups import (
    TOPIC_PARTITIONS,
    _all_records,
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    wait_for,
)

HEARTBEAT_MS = 300
SESSION_MS = 6_000
BROKER_FLAGS = ["--group-consumer-heartbeat-interval-ms", str(HEARTBEAT_MS),
                "--group-consumer-session-timeout-ms", str(SESSION_MS)]


@pytest.fixture(scope="module", params=["embedded", "oxia-s3"])
def cg_broker(request, tmp_path_factory) -> BrokerProcess:
    """A broker per backend with short KIP-848 heartbeat interval and session timeout."""
    b = _broker_for(request.param, request, tmp_path_factory)
    b.extra_args = [*b.extra_args, *BROKER_FLAGS]
    b.start()
    yield b
    b.stop()


class Ownership:
    """Who owns which partition, from every consumer's rebalance callbacks; records violations."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner: dict[tuple[str, int], str] = {}
        self.violations: list[str] = []

    def assign(self, name: str, tps) -> None:
        with self.lock:
            for tp in tps:
                key = (tp.topic, tp.partition)
                other = self.owner.get(key)
                if other is not None and other != name:
                    self.violations.append(f"{key} assigned to {name} while {other} owns it")
                self.owner[key] = name

    def revoke(self, name: str, tps) -> None:
        with self.lock:
            for tp in tps:
                if self.owner.get((tp.topic, tp.partition)) == name:
                    del self.owner[(tp.topic, tp.partition)]

    def of(self, name: str) -> frozenset[int]:
        with self.lock:
            return frozenset(p for (_, p), n in self.owner.items() if n == name)


class ConsumerThread:
    """A confluent-kafka consumer with group.protocol=consumer, polled in its own thread."""

    def __init__(self, bootstrap: str, group: str, topics: list[str], name: str, ownership: Ownership,
                 extra: dict | None = None):
        from confluent_kafka import Consumer

        self.name, self.ownership = name, ownership
        self.records: list[tuple[str, int, int]] = []
        self.errors: list[str] = []
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "group.protocol": "consumer", "client.id": name,
            "auto.offset.reset": "earliest", "enable.auto.commit": False, "topic.metadata.refresh.interval.ms": 1_000,
            **(extra or {}),
        })
        self._stop = threading.Event()
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.thread.start()

    def _on_assign(self, consumer, tps) -> None:
        self.ownership.assign(self.name, tps)

    def _on_revoke(self, consumer, tps) -> None:
        self._commit()
        self.ownership.revoke(self.name, tps)

    def _on_lost(self, consumer, tps) -> None:
        self.errors.append(f"lost {[(t.topic, t.partition) for t in tps]}")
        self.ownership.revoke(self.name, tps)

    def _commit(self) -> None:
        from confluent_kafka import KafkaException

        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            if "NO_OFFSET" not in str(e):
                self.errors.append(f"commit: {e}")

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self.consumer.consume(num_messages=500, timeout=0.1)
            got = [(m.topic(), m.partition(), m.offset()) for m in messages if m.error() is None]
            if got:
                self.records.extend(got)
                self._commit()
        self._commit()
        self.consumer.close()

    def owned(self) -> frozenset[int]:
        return self.ownership.of(self.name)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), f"{self.name} did not close"


def _read(consumers) -> list[tuple[str, int, int]]:
    return [r for c in consumers for r in list(c.records)]


def _expected(bootstrap: str, topic: str, partitions: int = TOPIC_PARTITIONS) -> set[tuple[str, int, int]]:
    return {(topic, p, o) for p, o in _all_records(end_offsets(bootstrap, topic, partitions))}


def test_scale_one_three_one(cg_broker):
    """1 -> 3 -> 1 consumers on a 6-partition topic: every record once, no partition owned twice at any moment."""
    bootstrap = cg_broker.bootstrap
    topic = f"cg-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, 20)
    own = Ownership()
    everyone: list[ConsumerThread] = []
    try:
        c1 = ConsumerThread(bootstrap, group, [topic], "c1", own)
        everyone.append(c1)
        wait_for(lambda: c1.owned() == frozenset(range(TOPIC_PARTITIONS)), 30, "c1 to own every partition")
        wait_for(lambda: _expected(bootstrap, topic) <= set(_read(everyone)), 30, "c1 to read every record")

        c2 = ConsumerThread(bootstrap, group, [topic], "c2", own)
        c3 = ConsumerThread(bootstrap, group, [topic], "c3", own)
        everyone += [c2, c3]
        produce(bootstrap, topic, 10)
        wait_for(lambda: [len(c.owned()) for c in everyone] == [2, 2, 2], 30, "three consumers to share")
        produce(bootstrap, topic, 10)
        wait_for(lambda: _expected(bootstrap, topic) <= set(_read(everyone)), 30, "every record with three")
        assert c2.owned() and c3.owned()

        c3.close()
        c2.close()
        produce(bootstrap, topic, 10)
        wait_for(lambda: c1.owned() == frozenset(range(TOPIC_PARTITIONS)), 30, "c1 to own every partition again")
        ends = end_offsets(bootstrap, topic)
        wait_for(lambda: _expected(bootstrap, topic) <= set(_read(everyone)), 30, "every record after scaling down")
        c1.close()
    finally:
        for c in everyone:
            if c.thread.is_alive():
                c.close()
    assert not own.violations, own.violations
    records = _read(everyone)
    assert len(records) == len(set(records)), "some records were read twice"
    assert not [e for c in everyone for e in c.errors], [e for c in everyone for e in c.errors]
    assert committed_offsets(bootstrap, group) == {(topic, p): end for p, end in ends.items()}


def test_regex_subscription_picks_up_new_topics(cg_broker):
    bootstrap = cg_broker.bootstrap
    prefix = f"rx{uuid.uuid4().hex[:6]}"
    first, second, other = f"{prefix}-a", f"{prefix}-b", f"x{prefix}-c"
    create_topic(bootstrap, first, 2)
    create_topic(bootstrap, other, 1)
    produce(bootstrap, first, 5, 2)
    produce(bootstrap, other, 5, 1)
    own = Ownership()
    c = ConsumerThread(bootstrap, f"g-{prefix}", [f"^{prefix}-.*"], "rx", own)
    try:
        wait_for(lambda: _expected(bootstrap, first, 2) <= set(_read([c])), 30, "the first matching topic")
        create_topic(bootstrap, second, 3)
        produce(bootstrap, second, 5, 3)
        wait_for(lambda: _expected(bootstrap, second, 3) <= set(_read([c])), 30, "the new matching topic")
        with own.lock:
            topics = {t for t, _ in own.owner}
        assert topics == {first, second}
    finally:
        c.close()
    assert not any(t == other for t, _, _ in _read([c]))


def test_resubscription_replaces_the_subscription(cg_broker):
    """A consumer that changes its subscription (regex -> another regex -> names -> regex and names) ends with
    exactly the new subscription's partitions; the ones it no longer wants are revoked before new ones come, so it
    never holds partitions of both (as librdkafka's test 0045_resubscribe_with_regex expects)."""
    from confluent_kafka import Consumer

    bootstrap = cg_broker.bootstrap
    prefix = f"rs{uuid.uuid4().hex[:6]}"
    sizes = {f"{prefix}-a1": 2, f"{prefix}-a2": 1, f"{prefix}-b1": 3, f"{prefix}-n": 2}
    for topic, n in sizes.items():
        create_topic(bootstrap, topic, n)
    owned: set[tuple[str, int]] = set()
    history: list[frozenset] = []

    def on_assign(_consumer, tps):
        owned.update((tp.topic, tp.partition) for tp in tps)
        history.append(frozenset(owned))

    def on_revoke(_consumer, tps):
        owned.difference_update((tp.topic, tp.partition) for tp in tps)
        history.append(frozenset(owned))

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{prefix}", "group.protocol": "consumer",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "topic.metadata.refresh.interval.ms": 1_000})

    def partitions(*topics):
        return {(t, p) for t in topics for p in range(sizes[t])}

    def subscribe(subscription, expected):
        before = frozenset(owned)
        del history[:]
        consumer.subscribe(subscription, on_assign=on_assign, on_revoke=on_revoke)
        deadline = time.monotonic() + 30
        while owned != expected and time.monotonic() < deadline:
            consumer.poll(0.1)
        assert owned == expected, (subscription, sorted(owned))
        for held in history:
            assert not (held & (before - expected) and held & (expected - before)), \
                f"{subscription}: held old and new partitions at once: {sorted(held)}"

    try:
        # As Kafka, a regex new to the group is resolved after the heartbeat that brought it: the joining member
        # gets its named topic first, the regex's topics at its next heartbeat.
        subscribe([f"^{prefix}-a.*", f"{prefix}-n"], partitions(f"{prefix}-a1", f"{prefix}-a2", f"{prefix}-n"))
        assert history[0] == partitions(f"{prefix}-n"), history
        subscribe([f"^{prefix}-a.*"], partitions(f"{prefix}-a1", f"{prefix}-a2"))
        subscribe([f"^{prefix}-b.*"], partitions(f"{prefix}-b1"))
        subscribe([f"{prefix}-n"], partitions(f"{prefix}-n"))
        subscribe([f"^{prefix}-a.*", f"{prefix}-n"], partitions(f"{prefix}-a1", f"{prefix}-a2", f"{prefix}-n"))
        subscribe([f"^{prefix}-.1"], partitions(f"{prefix}-a1", f"{prefix}-b1"))
    finally:
        consumer.close()


def test_committed_offsets_resume(cg_broker):
    bootstrap = cg_broker.bootstrap
    topic = f"cg-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, 10)
    own = Ownership()
    c1 = ConsumerThread(bootstrap, group, [topic], "first", own)
    try:
        wait_for(lambda: _expected(bootstrap, topic) <= set(_read([c1])), 30, "the first consumer to read all")
    finally:
        c1.close()
    ends = end_offsets(bootstrap, topic)
    wait_for(lambda: committed_offsets(bootstrap, group) == {(topic, p): e for p, e in ends.items()}, 30,
             "the commits")
    produce(bootstrap, topic, 5)
    c2 = ConsumerThread(bootstrap, group, [topic], "second", own)
    try:
        wait_for(lambda: _expected(bootstrap, topic) <= set(_read([c1, c2])), 30, "the second consumer")
    finally:
        c2.close()
    assert all(o >= ends[p] for _, p, o in c2.records), "the second consumer re-read committed records"
    assert len(c2.records) == 5 * TOPIC_PARTITIONS


def test_describe_and_list_consumer_groups(cg_broker):
    from confluent_kafka import ConsumerGroupType
    from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType

    bootstrap = cg_broker.bootstrap
    topic = f"cg-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    own = Ownership()
    c = ConsumerThread(bootstrap, group, [topic], "described", own)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        wait_for(lambda: c.owned() == frozenset(range(TOPIC_PARTITIONS)), 30, "the assignment")
        listed = admin.list_consumer_groups().result(30)
        mine = [g for g in listed.valid if g.group_id == group]
        assert mine and mine[0].type == ConsumerGroupType.CONSUMER
        d = admin.describe_consumer_groups([group])[group].result(30)
        assert d.type == ConsumerGroupType.CONSUMER
        assert len(d.members) == 1 and d.members[0].client_id == "described"
        assert {tp.partition for tp in d.members[0].assignment.topic_partitions} == set(range(TOPIC_PARTITIONS))
        # The broker settings under Kafka's names.
        broker_id = str(admin.describe_cluster().result(30).nodes[0].id)
        (future,) = admin.describe_configs([ConfigResource(ResourceType.BROKER, broker_id)]).values()
        configs = future.result(30)
        assert configs["group.consumer.heartbeat.interval.ms"].value == str(HEARTBEAT_MS)
        assert configs["group.consumer.heartbeat.interval.ms"].source == ConfigSource.STATIC_BROKER_CONFIG.value
        assert configs["group.consumer.session.timeout.ms"].value == str(SESSION_MS)
    finally:
        c.close()


def _heartbeat(wire, group: str, member_id: str, epoch: int, topics=("t",), owned=(), version: int = 1):
    from dray_broker.protocol import apis
    from tests.integration.wire import request

    first = epoch == 0
    return wire.call(apis.CONSUMER_GROUP_HEARTBEAT, version, request(
        apis.CONSUMER_GROUP_HEARTBEAT, version, "ConsumerGroupHeartbeatRequest", group_id=group, member_id=member_id,
        member_epoch=epoch, instance_id=None, rack_id=None, rebalance_timeout=30_000 if first else -1,
        subscribed_topic_names=tuple(topics) if first else None, subscribed_topic_regex="" if first else None,
        server_assignor=None, topic_partitions=tuple(owned) if first else None,
    ))


class ClientLog(logging.Handler):
    """librdkafka's log lines (its `logger` config) as a list."""

    def __init__(self, name: str):
        super().__init__()
        self.lines: list[str] = []
        self.logger = logging.getLogger(f"rdkafka.{name}")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_member_leaving_and_closing_at_once_keeps_the_group(cg_broker):
    """A member that leaves and closes its socket at once (the broker cancels its request while the coordinator
    stores the group) leaves the group stored and coordinated as it should be: the other member, a confluent-kafka
    consumer, is never told NOT_COORDINATOR, takes every partition back and reads every record. Before the fix the
    coordinator kept the state version of the write it had been cancelled in, its next write failed its CAS and the
    group was dropped and reloaded (issue 14: 38 of 40 tries)."""
    from dray_broker.protocol import apis
    from tests.integration.wire import Wire, request

    bootstrap = cg_broker.bootstrap
    topic = f"cgl-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    own = Ownership()
    client_log = ClientLog("stays")
    stays = ConsumerThread(bootstrap, group, [topic], "stays", own,
                           extra={"debug": "cgrp", "logger": client_log.logger})
    try:
        wait_for(lambda: stays.owned() == frozenset(range(TOPIC_PARTITIONS)), 30, "the first member to own all")
        for round_ in range(3):
            produce(bootstrap, topic, 5)
            wire = Wire(bootstrap)
            joined = _heartbeat(wire, group, f"leaver-{round_}-{uuid.uuid4().hex[:6]}", 0, (topic,))
            assert joined.error_code == 0, joined
            wait_for(lambda: len(stays.owned()) == TOPIC_PARTITIONS // 2, 30, "the first member to give up half")
            wire.send(apis.CONSUMER_GROUP_HEARTBEAT, 1, request(
                apis.CONSUMER_GROUP_HEARTBEAT, 1, "ConsumerGroupHeartbeatRequest", group_id=group,
                member_id=joined.member_id, member_epoch=-1, instance_id=None, rack_id=None, rebalance_timeout=-1,
                subscribed_topic_names=None, subscribed_topic_regex=None, server_assignor=None,
                topic_partitions=None))
            wire.close()  # at once: the leave is being stored
            wait_for(lambda: stays.owned() == frozenset(range(TOPIC_PARTITIONS)), 30,
                     "the first member to own every partition again")
        wait_for(lambda: _expected(bootstrap, topic) <= set(_read([stays])), 30, "every record")
    finally:
        stays.close()
    told = [line for line in client_log.lines if "Not coordinator" in line]
    assert not told, told
    assert not stays.errors, stays.errors
    assert not own.violations, own.violations


def test_wire_epochs_offsets_and_group_types(cg_broker):
    """Over the wire: OffsetCommit/OffsetFetch v9 check member epochs; DescribeGroups reports a consumer group as
    not classic; a classic group with members refuses ConsumerGroupHeartbeat and a consumer group with members
    refuses JoinGroup; an empty group changes type."""
    from kio.schema.errors import ErrorCode

    from dray_broker.protocol import apis
    from tests.integration.wire import Wire, request

    bootstrap = cg_broker.bootstrap
    topic = f"cgw-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    group = f"g-{topic}"
    wire = Wire(bootstrap)
    try:
        r = _heartbeat(wire, group, "m1", 0, (topic,))
        assert r.error_code == ErrorCode.none and r.member_epoch == 1, r
        assert sum(len(tp.partitions) for tp in r.assignment.topic_partitions) == 2
        assert r.heartbeat_interval.total_seconds() * 1000 == HEARTBEAT_MS

        def commit(member_id, epoch, version=9):
            resp = wire.call(apis.OFFSET_COMMIT, version, request(
                apis.OFFSET_COMMIT, version, "OffsetCommitRequest", group_id=group,
                generation_id_or_member_epoch=epoch, member_id=member_id, group_instance_id=None,
                retention_time=-1, topics=(request(
                    apis.OFFSET_COMMIT, version, "OffsetCommitRequestTopic", name=topic, partitions=(request(
                        apis.OFFSET_COMMIT, version, "OffsetCommitRequestPartition", partition_index=0,
                        committed_offset=0, committed_leader_epoch=-1, committed_metadata=""),)),)))
            return resp.topics[0].partitions[0].error_code

        assert commit("m1", 1) == ErrorCode.none
        assert commit("m1", 2) == ErrorCode.stale_member_epoch
        assert commit("nobody", 1) == ErrorCode.unknown_member_id
        assert commit("", -1) == ErrorCode.unknown_member_id

        def fetch(member_id, epoch):
            resp = wire.call(apis.OFFSET_FETCH, 9, request(
                apis.OFFSET_FETCH, 9, "OffsetFetchRequest", require_stable=False, groups=(request(
                    apis.OFFSET_FETCH, 9, "OffsetFetchRequestGroup", group_id=group, member_id=member_id,
                    member_epoch=epoch, topics=None),)))
            return resp.groups[0].error_code

        assert fetch(None, -1) == ErrorCode.none
        assert fetch("m1", 1) == ErrorCode.none
        assert fetch("m1", 7) == ErrorCode.stale_member_epoch
        assert fetch("zz", 1) == ErrorCode.unknown_member_id

        for version, error, state in ((6, ErrorCode.group_id_not_found, "Dead"), (5, ErrorCode.none, "Dead")):
            d = wire.call(apis.DESCRIBE_GROUPS, version, request(
                apis.DESCRIBE_GROUPS, version, "DescribeGroupsRequest", groups=(group,),
                include_authorized_operations=False)).groups[0]
            assert (d.error_code, d.group_state) == (error, state)
        d = wire.call(apis.CONSUMER_GROUP_DESCRIBE, 1, request(
            apis.CONSUMER_GROUP_DESCRIBE, 1, "ConsumerGroupDescribeRequest", group_ids=(group,),
            include_authorized_operations=False)).groups[0]
        assert d.error_code == ErrorCode.none and d.group_state == "Stable" and d.group_epoch == 1
        assert d.assignor_name == "uniform" and d.members[0].member_id == "m1"
        assert d.members[0].client_host == "/127.0.0.1"  # as Kafka reports it, from the connection
        assert {tp.topic_name for tp in d.members[0].assignment.topic_partitions} == {topic}
        listed = wire.call(apis.LIST_GROUPS, 5, request(apis.LIST_GROUPS, 5, "ListGroupsRequest",
                                                          states_filter=(), types_filter=("consumer",)))
        assert [(g.group_type, g.protocol_type, g.group_state) for g in listed.groups if g.group_id == group] \
            == [("consumer", "consumer", "Stable")]

        def join(group_id):
            return wire.call(apis.JOIN_GROUP, 9, request(
                apis.JOIN_GROUP, 9, "JoinGroupRequest", group_id=group_id, session_timeout=10_000,
                rebalance_timeout=10_000, member_id="", group_instance_id=None, protocol_type="consumer",
                protocols=(request(apis.JOIN_GROUP, 9, "JoinGroupRequestProtocol", name="range",
                                   metadata=b"\x00\x00\x00\x00\x00\x00"),), reason=None))

        assert join(group).error_code == ErrorCode.group_id_not_found
        # Leaving empties the group: then a classic member may take the id.
        r = _heartbeat(wire, group, "m1", -1)
        assert r.error_code == ErrorCode.none and r.member_epoch == -1
        assert join(group).error_code == ErrorCode.member_id_required
        classic = f"c-{topic}"
        first = join(classic)
        assert first.error_code == ErrorCode.member_id_required
        r = _heartbeat(wire, classic, "m2", 0, (topic,))
        assert r.error_code == ErrorCode.none  # pending ids only: the group is still empty
        group2 = f"c2-{topic}"
        consumer = _classic_member(bootstrap, group2, topic)
        try:
            wait_for(lambda: (consumer.poll(0.2), consumer.assignment())[1], 30, "the classic member to join")
            r = _heartbeat(wire, group2, "m3", 0, (topic,))
            assert r.error_code == ErrorCode.group_id_not_found
        finally:
            consumer.close()
    finally:
        wire.close()


def _classic_member(bootstrap: str, group: str, topic: str):
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6_000})
    c.subscribe([topic])
    return c


@pytest.mark.parametrize("protocol", ["consumer", "classic"])
def test_java_scale_one_three_one(cg_broker, protocol):
    """The Java client 4.x, with group.protocol=consumer and classic: 1 -> 3 -> 1 consumers."""
    from tests.integration.java_client import JavaClient, ensure_built

    java = JavaClient(ensure_built())
    bootstrap = cg_broker.bootstrap
    topic = f"java-cg-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, 20)
    props = {"session.timeout.ms": 6_000, "heartbeat.interval.ms": 500} if protocol == "classic" else {}

    def assignment(c) -> frozenset[int]:
        events = [e for e in list(c.events) if "assignment" in e]
        return frozenset(p["partition"] for p in events[-1]["assignment"]) if events else frozenset()

    def records(*clients) -> list[tuple[int, int]]:
        return [(r.partition, r.offset) for c in clients for r in c.records()]

    def expected() -> set[tuple[int, int]]:
        return _all_records(end_offsets(bootstrap, topic))

    start = time.monotonic()
    c1 = java.start_consumer(bootstrap, topic, group=group, group_protocol=protocol, props=props)
    with c1:
        wait_for(lambda: assignment(c1) == frozenset(range(TOPIC_PARTITIONS)), 60, "c1 to own every partition")
        wait_for(lambda: expected() <= set(records(c1)), 60, "c1 to read every record")
        with java.start_consumer(bootstrap, topic, group=group, group_protocol=protocol, props=props) as c2, \
                java.start_consumer(bootstrap, topic, group=group, group_protocol=protocol, props=props) as c3:
            clients = [c1, c2, c3]
            wait_for(lambda: sorted(len(assignment(c)) for c in clients) == [2, 2, 2]
                     and frozenset().union(*(assignment(c) for c in clients)) == frozenset(range(6)), 60,
                     "three Java consumers to share")
            produce(bootstrap, topic, 10)
            wait_for(lambda: expected() <= set(records(*clients)), 60, "every record with three")
            assert c3.close() == 0
            assert c2.close() == 0
        produce(bootstrap, topic, 10)
        wait_for(lambda: assignment(c1) == frozenset(range(TOPIC_PARTITIONS)), 60, "c1 to own everything again")
        ends = end_offsets(bootstrap, topic)
        wait_for(lambda: expected() <= set(records(c1, c2, c3)), 60, "every record after scaling down")
        assert c1.close() == 0
    all_records = records(c1, c2, c3)
    assert len(all_records) == len(set(all_records)), "some records were read twice"
    assert committed_offsets(bootstrap, group) == {(topic, p): end for p, end in ends.items()}
    print(f"java {protocol}: {time.monotonic() - start:.1f} s")


def test_coordinator_failover(tmp_path, cg_broker):
    """A second broker coordinates a consumer group and is killed: the group continues on the surviving broker
    from the stored epochs and assignments (members are not fenced), rebalances there, and keeps its offsets."""
    from confluent_kafka.admin import AdminClient

    from dray_broker.groups.coordinator import rendezvous
    from tests.integration.test_groups import _coordinator_port

    broker = cg_broker
    second = BrokerProcess(
        tmp_path / "second",
        metadata=broker.metadata or f"sqlite://{broker.data_dir.resolve()}/meta.db",
        object_store=broker.object_store or f"file://{broker.data_dir.resolve()}/objects",
        extra_args=["--session-timeout-ms", "3000", *BROKER_FLAGS],
    ).start()
    bootstrap = f"{broker.bootstrap},{second.bootstrap}"
    topic = f"cgf-{uuid.uuid4().hex[:8]}"
    own = Ownership()
    consumers: list[ConsumerThread] = []
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        nodes = wait_for(lambda: (lambda n: len(n) >= 2 and n)(admin.describe_cluster().result(30).nodes), 30,
                         "the second broker to be registered")
        second_id = next(n.id for n in nodes if n.port == second.port)
        live = [n.id for n in nodes]
        group = next(g for g in (f"g-{topic}-{i}" for i in range(1000)) if rendezvous(g, live) == second_id)
        create_topic(bootstrap, topic)
        produce(bootstrap, topic, 20)
        consumers = [ConsumerThread(bootstrap, group, [topic], f"f{i}", own) for i in range(2)]
        wait_for(lambda: [len(c.owned()) for c in consumers] == [3, 3], 30, "two consumers to share")
        assert _coordinator_port(bootstrap, group) == second.port
        wait_for(lambda: _expected(bootstrap, topic) <= set(_read(consumers)), 30, "the first records")
        second.kill()
        produce(broker.bootstrap, topic, 20)
        wait_for(lambda: _expected(broker.bootstrap, topic) <= set(_read(consumers)), 60,
                 "every record after the coordinator died")
        wait_for(lambda: _coordinator_port(broker.bootstrap, group) == broker.port, 60,
                 "the surviving broker to coordinate the group")
        consumers.append(ConsumerThread(broker.bootstrap, group, [topic], "f2", own))
        wait_for(lambda: [len(c.owned()) for c in consumers] == [2, 2, 2], 60, "three consumers to share")
        produce(broker.bootstrap, topic, 10)
        ends = end_offsets(broker.bootstrap, topic)
        wait_for(lambda: _expected(broker.bootstrap, topic) <= set(_read(consumers)), 60, "the last records")
        for c in consumers:
            c.close()
        assert committed_offsets(broker.bootstrap, group) == {(topic, p): end for p, end in ends.items()}
    finally:
        for c in consumers:
            if c.thread.is_alive():
                c.close()
        second.stop()
    assert not own.violations, own.violations
    records = _read(consumers)
    assert len(records) == len(set(records)), "some records were read twice"


def test_remote_assignor_range_and_static_member(cg_broker):
    """group.remote.assignor=range picks the server's range assignor; a static member (group.instance.id) that
    closes and comes back within the session timeout gets its partitions back without a new group epoch."""
    from confluent_kafka.admin import AdminClient

    bootstrap = cg_broker.bootstrap
    a, b = f"cgr-{uuid.uuid4().hex[:6]}-a", f"cgr-{uuid.uuid4().hex[:6]}-b"
    create_topic(bootstrap, a, 2)
    create_topic(bootstrap, b, 2)
    group = f"g-{a}"
    own = Ownership()
    extra = {"group.remote.assignor": "range"}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    c1 = ConsumerThread(bootstrap, group, [a, b], "r1", own, {**extra, "group.instance.id": "i1"})
    c2 = ConsumerThread(bootstrap, group, [a, b], "r2", own, {**extra, "group.instance.id": "i2"})
    try:
        def by_topic(name):
            with own.lock:
                return {(t, p) for (t, p), n in own.owner.items() if n == name}

        wait_for(lambda: len(by_topic("r1")) == len(by_topic("r2")) == 2, 30, "two range consumers")
        # Range: each member gets one partition of each topic (the same index of both).
        assert {t for t, _ in by_topic("r1")} == {a, b} and len({p for _, p in by_topic("r1")}) == 1
        d = admin.describe_consumer_groups([group])[group].result(30)
        before = by_topic("r2")
        epoch_before = _group_epoch(bootstrap, group)
        c2.close()
        c3 = ConsumerThread(bootstrap, group, [a, b], "r2b", own, {**extra, "group.instance.id": "i2"})
        try:
            wait_for(lambda: by_topic("r2b") == before, 30, "the static member to get its partitions back")
            assert _group_epoch(bootstrap, group) == epoch_before
            assert by_topic("r1") and len(by_topic("r1")) == 2
        finally:
            c3.close()
        assert d.members and len(d.members) == 2
    finally:
        c1.close()
        if c2.thread.is_alive():
            c2.close()
    assert not own.violations, own.violations


def _group_epoch(bootstrap: str, group: str) -> int:
    from dray_broker.protocol import apis
    from tests.integration.wire import Wire, request

    wire = Wire(bootstrap)
    try:
        d = wire.call(apis.CONSUMER_GROUP_DESCRIBE, 1, request(
            apis.CONSUMER_GROUP_DESCRIBE, 1, "ConsumerGroupDescribeRequest", group_ids=(group,),
            include_authorized_operations=False)).groups[0]
        assert d.assignor_name == "range", d.assignor_name
        return d.group_epoch
    finally:
        wire.close()
