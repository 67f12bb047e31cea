"""ACLs with the authorizer on (--acls): real clients (confluent-kafka, kafka-python, kcat, the Java client) as
User:ANONYMOUS on a plaintext listener are allowed or denied per API as Kafka's authorizer decides; topics they may
not describe are invisible; DENY beats ALLOW; prefixed patterns; super users; and two brokers on one metadata store
(both backends), where an ACL created through one broker is enforced by the other.

The cluster's first ACL (User:ANONYMOUS may ALTER the cluster, i.e. manage ACLs) is written into the metadata store
before the brokers start, as an operator bootstraps a secured cluster; every other ACL goes through the Kafka API.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding as CkAclBinding,
    AclBindingFilter as CkAclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from dray_broker.auth.acl_store import AclStore
from dray_broker.auth.acls import CLUSTER_NAME, AclBinding, Authorizer, Operation, PatternType, Permission
from dray_broker.auth.acls import ResourceType as R
from dray_broker.metadata import open_metadata_store
from tests import services
from tests.integration.brokers import BrokerProcess
from tests.integration.clients import RawClient, _await
from tests.integration.conftest import BACKENDS

ANON = "User:ANONYMOUS"
TIMEOUT = 15


def _seed_acls(metadata_url: str, bindings: list[AclBinding]) -> None:
    async def run() -> None:
        store = await open_metadata_store(metadata_url)
        try:
            acls = AclStore(store, Authorizer())
            for b in bindings:
                await acls.create(b)
        finally:
            await store.close()

    asyncio.run(run())


def _stores(request, tmp):
    """(metadata URL, object store URL, the Oxia process or None) for the fixture's backend."""
    if request.param == "embedded":
        return f"sqlite://{tmp}/meta.db", f"file://{tmp}/objects", None
    request.getfixturevalue("oxia_service")
    s3 = request.getfixturevalue("s3_service")
    oxia = services.start_oxia()
    return f"oxia://{oxia.address}", s3.url(f"acls-{uuid.uuid4().hex[:8]}"), oxia


@pytest.fixture(scope="module", params=BACKENDS)
def secured(request, tmp_path_factory):
    """Two brokers with --acls on one metadata store and object store (each backend); ANONYMOUS may manage ACLs."""
    tmp = tmp_path_factory.mktemp(f"acls-{request.param}")
    metadata, objects, oxia = _stores(request, tmp)
    _seed_acls(metadata, [AclBinding(R.CLUSTER, CLUSTER_NAME, PatternType.LITERAL, ANON, "*", Operation.ALTER,
                                     Permission.ALLOW)])
    brokers = [BrokerProcess(tmp / name, metadata=metadata, object_store=objects, extra_args=["--acls"]).start()
               for name in ("a", "b")]
    yield brokers
    for b in brokers:
        b.stop()
    if oxia is not None:
        oxia.stop()


@pytest.fixture
def name() -> str:
    return f"acl-{uuid.uuid4().hex[:8]}"


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})


def allow(name: str, op: AclOperation, rt: ResourceType = ResourceType.TOPIC,
          pattern: ResourcePatternType = ResourcePatternType.LITERAL, principal: str = ANON,
          permission: AclPermissionType = AclPermissionType.ALLOW) -> CkAclBinding:
    return CkAclBinding(rt, name, pattern, principal, "*", op, permission)


def deny(name: str, op: AclOperation, rt: ResourceType = ResourceType.TOPIC) -> CkAclBinding:
    return allow(name, op, rt, permission=AclPermissionType.DENY)


def create_acls(brokers: list[BrokerProcess], *bindings: CkAclBinding) -> None:
    """Create through the admin API (which sends to the controller), then wait until every broker has them (each
    follows the metadata store's watch)."""
    ad = admin(brokers[0].bootstrap)  # kept until the answers come (a destroyed client fails its futures)
    for f in ad.create_acls(list(bindings), request_timeout=TIMEOUT).values():
        f.result(TIMEOUT)
    for broker in brokers:
        for binding in bindings:
            assert _await(lambda: has_acl(broker, binding), timeout=10), f"{binding} never reached {broker.bootstrap}"


def has_acl(broker: BrokerProcess, b: CkAclBinding) -> bool:
    """Whether the broker enforces the binding (DescribeAcls answers from the broker's own authorizer)."""
    from kafka.protocol.admin.acl import DescribeAclsRequest, DescribeAclsResponse

    with RawClient(broker.bootstrap) as c:
        response = c.call(DescribeAclsRequest(
            resource_type_filter=b.restype.value, resource_name_filter=b.name,
            pattern_type_filter=b.resource_pattern_type.value, principal_filter=b.principal, host_filter=b.host,
            operation=b.operation.value, permission_type=b.permission_type.value), DescribeAclsResponse, 3)
    return response.error_code == 0 and len(response.resources) == 1


def create_topic(bootstrap: str, topic: str) -> None:
    ad = admin(bootstrap)
    ad.create_topics([NewTopic(topic, 1)], request_timeout=TIMEOUT)[topic].result(TIMEOUT)


def produce(bootstrap: str, topic: str, n: int = 3) -> list:
    """Delivery errors (None for a delivered record)."""
    p = Producer({"bootstrap.servers": bootstrap, "log_level": 3, "message.timeout.ms": 10_000})
    errors: list = []
    for i in range(n):
        p.produce(topic, f"v{i}".encode(), partition=0, on_delivery=lambda err, msg: errors.append(err))
    p.flush(TIMEOUT)
    return errors


def error_code(err) -> int | None:
    return None if err is None else err.code()


def consume(bootstrap: str, topic: str, group: str, n: int) -> tuple[list[bytes], KafkaError | None]:
    """Subscribe with `group`: the values read, or the first error."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "log_level": 3, "session.timeout.ms": 6000})
    c.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(60):
            for m in c.consume(10, 0.5):
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        return values, m.error()
                else:
                    values.append(m.value())
            if len(values) >= n:
                break
    finally:
        c.close()
    return values, None


def test_topic_needs_its_acls_and_is_invisible_without_describe(secured, name):
    a, b = secured
    ad = admin(a.bootstrap)
    # No ACL on the topic: it cannot be created (no CREATE on it or on the cluster).
    (future,) = ad.create_topics([NewTopic(name, 1)], request_timeout=TIMEOUT).values()
    with pytest.raises(KafkaException) as e:
        future.result(TIMEOUT)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    create_acls(secured, allow(name, AclOperation.CREATE))
    (future,) = ad.create_topics([NewTopic(name, 1)], request_timeout=TIMEOUT).values()
    future.result(TIMEOUT)
    # CREATE does not imply DESCRIBE: the topic exists but is invisible, and cannot be written.
    assert name not in ad.list_topics(timeout=TIMEOUT).topics
    assert [error_code(e) for e in produce(b.bootstrap, name)] == [KafkaError.TOPIC_AUTHORIZATION_FAILED] * 3

    create_acls(secured, allow(name, AclOperation.WRITE))
    assert name in ad.list_topics(timeout=TIMEOUT).topics  # WRITE implies DESCRIBE
    assert produce(b.bootstrap, name) == [None] * 3

    # Reading needs READ on the topic and on the group.
    group = f"g-{name}"
    values, err = consume(b.bootstrap, name, group, 3)
    assert err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err
    create_acls(secured, allow(group, AclOperation.READ, ResourceType.GROUP))
    values, err = consume(b.bootstrap, name, group, 3)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    create_acls(secured, allow(name, AclOperation.READ))
    values, err = consume(b.bootstrap, name, group, 3)
    assert err is None and sorted(values) == [b"v0", b"v1", b"v2"]

    # DENY beats ALLOW.
    create_acls(secured, deny(name, AclOperation.WRITE))
    assert [error_code(e) for e in produce(a.bootstrap, name)] == [KafkaError.TOPIC_AUTHORIZATION_FAILED] * 3


def test_prefixed_acl_created_through_one_broker_is_enforced_by_the_other(secured, name):
    """CreateAcls and DeleteAcls sent to one broker (a raw connection, so the request goes where we say), Metadata
    and Produce to the other."""
    from kafka.protocol.admin.acl import CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse

    a, b = secured
    inside, outside = f"{name}-in", f"x{name}"

    def metadata_errors(broker: BrokerProcess) -> dict[str, int]:
        with RawClient(broker.bootstrap) as c:
            return {t.name: t.error_code for t in c.metadata([inside, outside], auto_create=True).topics}

    assert metadata_errors(b) == {inside: 29, outside: 29}
    with RawClient(a.bootstrap) as c:
        response = c.call(CreateAclsRequest(creations=[CreateAclsRequest.AclCreation(
            resource_type=2, resource_name=name, resource_pattern_type=4, principal=ANON, host="*", operation=2,
            permission_type=3)]), CreateAclsResponse, 3)
    assert [r.error_code for r in response.results] == [0]
    # Broker b learns it from the metadata store's watch: the prefix's topic gets created, the other stays denied.
    assert _await(lambda: metadata_errors(b)[inside] == 0, timeout=10), metadata_errors(b)
    assert metadata_errors(b)[outside] == 29

    with RawClient(b.bootstrap) as c:
        response = c.call(DeleteAclsRequest(filters=[DeleteAclsRequest.DeleteAclsFilter(
            resource_type_filter=2, resource_name_filter=name, pattern_type_filter=4, principal_filter=None,
            host_filter=None, operation=1, permission_type=1)]), DeleteAclsResponse, 3)
    assert [len(r.matching_acls) for r in response.filter_results] == [1]
    assert _await(lambda: metadata_errors(a)[inside] == 29, timeout=10), metadata_errors(a)


def test_describe_and_delete_acls_filters(secured, name):
    a, _ = secured
    ad = admin(a.bootstrap)
    # The prefixed ACL stays in the module's cluster: its prefix is long enough to match no other test's names.
    create_acls(secured, allow(name, AclOperation.READ), allow(name, AclOperation.WRITE),
                allow(name[:-2], AclOperation.DESCRIBE, pattern=ResourcePatternType.PREFIXED),
                allow(f"g-{name}", AclOperation.READ, ResourceType.GROUP))
    def described(pattern: ResourcePatternType, rt: ResourceType = ResourceType.TOPIC, resource: str | None = name):
        f = CkAclBindingFilter(rt, resource, pattern, None, None, AclOperation.ANY, AclPermissionType.ANY)
        return sorted((b.name, b.resource_pattern_type.name, b.operation.name)
                      for b in ad.describe_acls(f, request_timeout=TIMEOUT).result(TIMEOUT))

    assert described(ResourcePatternType.LITERAL) == [(name, "LITERAL", "READ"), (name, "LITERAL", "WRITE")]
    # MATCH: every ACL that applies to the topic, the prefixed one included.
    assert (name[:-2], "PREFIXED", "DESCRIBE") in described(ResourcePatternType.MATCH)
    assert described(ResourcePatternType.ANY, ResourceType.GROUP, f"g-{name}") == [(f"g-{name}", "LITERAL", "READ")]

    (future,) = ad.delete_acls([CkAclBindingFilter(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, ANON, None,
                                                   AclOperation.WRITE, AclPermissionType.ANY)],
                               request_timeout=TIMEOUT).values()
    assert [(b.name, b.operation.name) for b in future.result(TIMEOUT)] == [(name, "WRITE")]
    assert described(ResourcePatternType.LITERAL) == [(name, "LITERAL", "READ")]


def test_authorized_operations(secured, name):
    a, _ = secured
    ad = admin(a.bootstrap)
    create_acls(secured, allow(name, AclOperation.CREATE), allow(name, AclOperation.READ),
                allow(f"g-{name}", AclOperation.DESCRIBE, ResourceType.GROUP))
    create_topic(a.bootstrap, name)
    from confluent_kafka import TopicCollection

    (future,) = ad.describe_topics(TopicCollection([name]), include_authorized_operations=True,
                                   request_timeout=TIMEOUT).values()
    assert sorted(op.name for op in future.result(TIMEOUT).authorized_operations) == ["CREATE", "DESCRIBE", "READ"]
    cluster = ad.describe_cluster(include_authorized_operations=True, request_timeout=TIMEOUT).result(TIMEOUT)
    assert sorted(op.name for op in cluster.authorized_operations) == ["ALTER", "DESCRIBE"]
    (future,) = ad.describe_consumer_groups([f"g-{name}"], include_authorized_operations=True,
                                            request_timeout=TIMEOUT).values()
    assert [op.name for op in future.result(TIMEOUT).authorized_operations] == ["DESCRIBE"]
    # A group it may not describe answers GROUP_AUTHORIZATION_FAILED.
    (future,) = ad.describe_consumer_groups([f"h-{name}"], request_timeout=TIMEOUT).values()
    with pytest.raises(KafkaException) as e:
        future.result(TIMEOUT)
    assert e.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED


def test_kafka_python_and_kcat(secured, name):
    from kafka import KafkaProducer
    from kafka.errors import TopicAuthorizationFailedError

    a, b = secured
    create_acls(secured, allow(name, AclOperation.ALL, pattern=ResourcePatternType.PREFIXED))
    allowed, denied = f"{name}-ok", f"no-{name}"
    p = KafkaProducer(bootstrap_servers=b.bootstrap, request_timeout_ms=10_000, max_block_ms=10_000)
    try:
        assert p.send(allowed, b"one", partition=0).get(TIMEOUT).offset == 0
        with pytest.raises(TopicAuthorizationFailedError):
            p.send(denied, b"two").get(TIMEOUT)
    finally:
        p.close(5)

    def kcat(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["kcat", "-b", b.bootstrap, *args], input=input, capture_output=True, timeout=60)

    assert kcat("-P", "-t", allowed, "-p", "0", input=b"two\n").returncode == 0
    read = kcat("-C", "-t", allowed, "-p", "0", "-o", "beginning", "-e", "-q")
    assert read.returncode == 0 and read.stdout.split() == [b"one", b"two"]
    listed = kcat("-L", "-J")
    assert allowed.encode() in listed.stdout and denied.encode() not in listed.stdout
    failed = kcat("-P", "-t", denied, "-p", "0", input=b"x\n")
    assert failed.returncode != 0 and b"authorization" in failed.stderr.lower(), failed.stderr


def test_java_client(secured, name):
    from tests.integration.java_client import JavaClient, JavaClientError, Record, ensure_built

    java = JavaClient(ensure_built())
    a, b = secured
    # The Java producer is idempotent by default: InitProducerId passes with WRITE on some topic (KIP-679).
    create_acls(secured, allow(name, AclOperation.CREATE), allow(name, AclOperation.WRITE),
                allow(name, AclOperation.READ))
    create_topic(a.bootstrap, name)
    records = [Record(key=None, value=f"j{i}".encode(), partition=0) for i in range(3)]
    acks = java.produce(b.bootstrap, name, records)
    assert [a.offset for a in acks] == [0, 1, 2]
    read = java.consume(b.bootstrap, name, 3, timeout_ms=20_000)
    assert [r.value for r in read] == [b"j0", b"j1", b"j2"]
    with pytest.raises(JavaClientError) as e:
        java.produce(b.bootstrap, f"other-{name}", records[:1], props={"max.block.ms": 10000})
    assert "TopicAuthorizationException" in str(e.value) or "Not authorized" in str(e.value)


def test_super_users_may_do_anything_and_no_acls_are_needed_without_acls(tmp_path, name):
    meta = f"sqlite://{tmp_path}/meta.db"
    _seed_acls(meta, [AclBinding(R.TOPIC, "*", PatternType.LITERAL, ANON, "*", Operation.ALL, Permission.DENY)])
    broker = BrokerProcess(tmp_path / "super", metadata=meta, object_store=f"file://{tmp_path}/objects",
                           extra_args=["--acls", "--super-users", f"User:admin,{ANON}"]).start()
    try:
        assert produce(broker.bootstrap, name) == [None] * 3  # DENY ALL on every topic: not for a super user
    finally:
        broker.stop()
    # The same store without --acls: nothing is checked, and the ACL APIs say security is disabled.
    broker = BrokerProcess(tmp_path / "open", metadata=meta, object_store=f"file://{tmp_path}/objects").start()
    try:
        assert produce(broker.bootstrap, name) == [None] * 3
        ad = admin(broker.bootstrap)
        (future,) = ad.create_acls([allow(name, AclOperation.READ)], request_timeout=TIMEOUT).values()
        with pytest.raises(KafkaException) as e:
            future.result(TIMEOUT)
        assert e.value.args[0].code() == KafkaError.SECURITY_DISABLED
    finally:
        broker.stop()


def test_cli_create_list_delete(secured, name):
    a, _ = secured

    def dray(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dray_broker.cli", "acls", *args, "-b", a.bootstrap],
                              capture_output=True, text=True, timeout=60)

    made = dray("create", "--allow-principal", ANON, "--operation", "read,describe", "--topic", name,
                "--resource-pattern-type", "prefixed")
    assert made.returncode == 0, made.stderr
    listed = dray("list", "--topic", f"{name}-x", "--json")
    import json

    rows = json.loads(listed.stdout)
    assert sorted((r["resource-name"], r["resource-pattern-type"], r["operation"]) for r in rows) == [
        (name, "prefixed", "describe"), (name, "prefixed", "read")]
    gone = dray("delete", "--allow-principal", ANON, "--operation", "read", "--topic", name,
                "--resource-pattern-type", "prefixed", "--json")
    assert gone.returncode == 0, gone.stderr
    assert [r["operation"] for r in json.loads(gone.stdout)] == ["read"]
    assert [r["operation"] for r in json.loads(dray("list", "--topic", name, "--json").stdout)] == ["describe"]


def test_scram_users_get_their_own_acls(tmp_path, name):
    """Principals from SASL/SCRAM logins: User:admin (a super user) grants User:alice WRITE on a topic; alice may
    write it, bob may not, and neither may ANONYMOUS on the plaintext listener."""
    from tests.integration.brokers import free_port

    meta = f"sqlite://{tmp_path}/meta.db"
    for user in ("admin", "alice", "bob"):
        done = subprocess.run([sys.executable, "-m", "dray_broker.cli", "users", "bootstrap", user, "--password-stdin",
                               "--mechanism", "SCRAM-SHA-256", "--metadata", meta],
                              input=f"{user}-pw\n", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    sasl_port = free_port()
    broker = BrokerProcess(tmp_path / "b", metadata=meta, object_store=f"file://{tmp_path}/objects",
                           extra_args=["--listen", f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
                                       "--sasl-mechanisms", "SCRAM-SHA-256", "--acls",
                                       "--super-users", "User:admin"]).start()
    sasl = f"127.0.0.1:{sasl_port}"

    def as_user(user: str) -> dict:
        return {"bootstrap.servers": sasl, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
                "sasl.username": user, "sasl.password": f"{user}-pw", "log_level": 3}

    def produce(config: dict) -> list:
        p = Producer({**config, "message.timeout.ms": 10_000})
        errors: list = []
        p.produce(name, b"x", partition=0, on_delivery=lambda err, msg: errors.append(err))
        try:
            p.flush(TIMEOUT)
        except SystemError as e:  # confluent-kafka raises a fatal error from within the delivery callback
            assert isinstance(e.__cause__, KafkaException), e
            return [e.__cause__.args[0].code()]
        finally:
            del p  # see produce_as
        return [error_code(e) for e in errors]

    def produce_as(config: dict) -> list:
        """The delivery error codes, or the fatal error an idempotent producer raises.

        That SystemError stays referenced inside confluent-kafka, and its traceback holds the frames that called
        flush(): the producer in produce's frame (hence the del), and, on the test's own thread, the test's frame
        with its admin clients. Kept alive, they went on retrying the stopped broker until the session ended."""
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(produce, config).result()

    try:
        root = AdminClient(as_user("admin"))
        root.create_topics([NewTopic(name, 1)], request_timeout=TIMEOUT)[name].result(TIMEOUT)
        assert produce_as(as_user("alice")) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
        for f in root.create_acls([allow(name, AclOperation.WRITE, principal="User:alice")],
                                  request_timeout=TIMEOUT).values():
            f.result(TIMEOUT)
        assert produce_as(as_user("alice")) == [None]
        # ListGroups shows alice the groups she may describe; the super user (DESCRIBE on the cluster) sees all.
        for f in root.create_acls([allow(name, AclOperation.READ, principal="User:alice"),
                                   allow(f"ga-{name}", AclOperation.READ, ResourceType.GROUP, principal="User:alice")],
                                  request_timeout=TIMEOUT).values():
            f.result(TIMEOUT)
        for user, group in (("alice", f"ga-{name}"), ("admin", f"gb-{name}")):
            c = Consumer({**as_user(user), "group.id": group, "auto.offset.reset": "earliest"})
            c.subscribe([name])
            assert _await(lambda: any(m.error() is None for m in c.consume(10, 0.5)), timeout=TIMEOUT)
            c.close()
        for user, expected in (("alice", {f"ga-{name}"}), ("admin", {f"ga-{name}", f"gb-{name}"})):
            client = AdminClient(as_user(user))
            listed = client.list_consumer_groups(request_timeout=TIMEOUT).result(TIMEOUT).valid
            assert {g.group_id for g in listed} & {f"ga-{name}", f"gb-{name}"} == expected, user
        assert produce_as(as_user("bob")) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
        # An idempotent producer needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic (InitProducerId):
        # alice has WRITE on a topic, bob may only see it.
        assert produce_as({**as_user("alice"), "enable.idempotence": True}) == [None]
        for f in root.create_acls([allow(name, AclOperation.DESCRIBE, principal="User:bob")],
                                  request_timeout=TIMEOUT).values():
            f.result(TIMEOUT)
        assert produce_as({**as_user("bob"), "enable.idempotence": True}) == [KafkaError.CLUSTER_AUTHORIZATION_FAILED]
        assert produce_as({"bootstrap.servers": broker.bootstrap, "log_level": 3}) == [
            KafkaError.TOPIC_AUTHORIZATION_FAILED]
        # `dray acls` logs in with -X properties, as the super user.
        import json

        listed = subprocess.run([sys.executable, "-m", "dray_broker.cli", "acls", "list", "--topic", name, "--json",
                                 "-b", sasl, "-X", "security.protocol=SASL_PLAINTEXT",
                                 "-X", "sasl.mechanism=SCRAM-SHA-256", "-X", "sasl.username=admin",
                                 "-X", "sasl.password=admin-pw"], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert sorted((r["principal"], r["operation"]) for r in json.loads(listed.stdout)) == [
            ("User:alice", "read"), ("User:alice", "write"), ("User:bob", "describe")]
        # alice may not manage ACLs (no ALTER on the cluster).
        alice = AdminClient(as_user("alice"))
        (future,) = alice.create_acls([allow(name, AclOperation.READ, principal="User:alice")],
                                      request_timeout=TIMEOUT).values()
        with pytest.raises(KafkaException) as e:
            future.result(TIMEOUT)
        assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    finally:
        broker.stop()


def test_admin_and_group_apis_per_resource(secured, name):
    """Each resource of an admin request is decided by itself: allowed ones are done, denied ones answer their
    authorization error (confluent-kafka's AdminClient)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, OffsetSpec

    a, _ = secured
    ad = admin(a.bootstrap)
    some, every = f"{name}-some", f"{name}-all"  # some: CREATE and DESCRIBE only; all: ALL
    create_acls(secured, allow(some, AclOperation.CREATE), allow(some, AclOperation.DESCRIBE),
                allow(every, AclOperation.ALL))
    for t in (some, every):
        create_topic(a.bootstrap, t)

    def outcome(future) -> int | None:
        try:
            future.result(TIMEOUT)
            return None
        except KafkaException as e:
            return e.args[0].code()

    grown = ad.create_partitions([NewPartitions(some, 2), NewPartitions(every, 2)], request_timeout=TIMEOUT)
    assert {t: outcome(f) for t, f in grown.items()} == {some: KafkaError.TOPIC_AUTHORIZATION_FAILED, every: None}
    described = ad.describe_configs([ConfigResource("topic", some), ConfigResource("topic", every)],
                                    request_timeout=TIMEOUT)
    assert sorted(outcome(f) or 0 for f in described.values()) == [0, KafkaError.TOPIC_AUTHORIZATION_FAILED]
    altered = ad.incremental_alter_configs(
        [ConfigResource("topic", t, incremental_configs=[ConfigEntry("retention.ms", "3600000",
                                                                     incremental_operation=AlterConfigOpType.SET)])
         for t in (some, every)], request_timeout=TIMEOUT)
    assert sorted(outcome(f) or 0 for f in altered.values()) == [0, KafkaError.TOPIC_AUTHORIZATION_FAILED]
    offsets = ad.list_offsets({TopicPartition(some, 0): OffsetSpec.latest()}, request_timeout=TIMEOUT)
    assert [outcome(f) for f in offsets.values()] == [None]  # DESCRIBE is enough
    # One ListOffsets for a topic it may describe and one it may not (librdkafka would not send the latter):
    # answered per topic and partition.
    from dray_broker.protocol import apis
    from tests.integration.wire import Wire, request

    def topic(t: str):
        return request(apis.LIST_OFFSETS, 7, "ListOffsetsTopic", name=t, partitions=(
            request(apis.LIST_OFFSETS, 7, "ListOffsetsPartition", partition_index=0, timestamp=-1),))

    wire = Wire(a.bootstrap)
    try:
        answer = wire.call(apis.LIST_OFFSETS, 7, request(apis.LIST_OFFSETS, 7, "ListOffsetsRequest", replica_id=-1,
                                                         isolation_level=0, topics=(topic(f"x{name}"), topic(some))))
    finally:
        wire.close()
    assert sorted((t.name, [p.error_code for p in t.partitions]) for t in answer.topics) == [
        (some, [0]), (f"x{name}", [KafkaError.TOPIC_AUTHORIZATION_FAILED])]

    # Groups: g1 may be read (so described) by ANONYMOUS; g2 too, until a DENY DESCRIBE hides it.
    g1, g2 = f"g1-{name}", f"g2-{name}"
    create_acls(secured, allow(g1, AclOperation.READ, ResourceType.GROUP),
                allow(g2, AclOperation.READ, ResourceType.GROUP))
    assert produce(a.bootstrap, every, 1) == [None]
    for g in (g1, g2):
        values, err = consume(a.bootstrap, every, g, 1)
        assert err is None and values == [b"v0"]
    create_acls(secured, deny(g2, AclOperation.DESCRIBE, ResourceType.GROUP))
    (future,) = ad.describe_consumer_groups([g2], request_timeout=TIMEOUT).values()
    assert outcome(future) == KafkaError.GROUP_AUTHORIZATION_FAILED
    (future,) = ad.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g1)], request_timeout=TIMEOUT).values()
    assert [(tp.topic, tp.offset) for tp in future.result(TIMEOUT).topic_partitions] == [(every, 1)]
    (future,) = ad.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g2)], request_timeout=TIMEOUT).values()
    assert outcome(future) == KafkaError.GROUP_AUTHORIZATION_FAILED

    (future,) = ad.delete_consumer_groups([g1], request_timeout=TIMEOUT).values()
    assert outcome(future) == KafkaError.GROUP_AUTHORIZATION_FAILED  # READ does not allow DELETE
    create_acls(secured, allow(g1, AclOperation.DELETE, ResourceType.GROUP))
    (future,) = ad.delete_consumer_groups([g1], request_timeout=TIMEOUT).values()
    assert outcome(future) is None

    deleted = ad.delete_topics([some, every], operation_timeout=TIMEOUT, request_timeout=TIMEOUT)
    assert {t: outcome(f) for t, f in deleted.items()} == {some: KafkaError.TOPIC_AUTHORIZATION_FAILED, every: None}


def test_allow_everyone_if_no_acl_found(tmp_path, name):
    """With allow.everyone.if.no.acl.found, a resource without any ACL is open to all; one with ACLs is decided by
    them (here: for another user only)."""
    guarded = f"{name}-guarded"
    meta = f"sqlite://{tmp_path}/meta.db"
    _seed_acls(meta, [AclBinding(R.TOPIC, guarded, PatternType.LITERAL, "User:other", "*", Operation.ALL,
                                 Permission.ALLOW)])
    broker = BrokerProcess(tmp_path / "b", metadata=meta, object_store=f"file://{tmp_path}/objects",
                           extra_args=["--acls", "--allow-everyone-if-no-acl-found"]).start()
    try:
        create_topic(broker.bootstrap, name)  # the cluster has no ACL: CREATE on it is open
        create_topic(broker.bootstrap, guarded)
        assert produce(broker.bootstrap, name) == [None] * 3
        assert [error_code(e) for e in produce(broker.bootstrap, guarded)] == [
            KafkaError.TOPIC_AUTHORIZATION_FAILED] * 3
        assert name in admin(broker.bootstrap).list_topics(timeout=TIMEOUT).topics
        assert guarded not in admin(broker.bootstrap).list_topics(timeout=TIMEOUT).topics
    finally:
        broker.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def scram_secured(request, tmp_path_factory):
    """Two brokers with --acls and a SASL_PLAINTEXT (SCRAM-SHA-256) listener on one metadata store (each backend);
    users admin (a super user), alice and bob, each with password `<name>-pw`. Yields the SASL bootstraps."""
    from tests.integration.brokers import free_port

    tmp = tmp_path_factory.mktemp(f"scram-acls-{request.param}")
    metadata, objects, oxia = _stores(request, tmp)
    for user in ("admin", "alice", "bob"):
        done = subprocess.run([sys.executable, "-m", "dray_broker.cli", "users", "bootstrap", user, "--password-stdin",
                               "--mechanism", "SCRAM-SHA-256", "--metadata", metadata],
                              input=f"{user}-pw\n", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    ports = [free_port(), free_port()]
    brokers = [BrokerProcess(tmp / f"b{i}", metadata=metadata, object_store=objects,
                             extra_args=["--listen", f"SASL_PLAINTEXT://127.0.0.1:{port}",
                                         "--sasl-mechanisms", "SCRAM-SHA-256", "--acls",
                                         "--super-users", "User:admin"]).start()
               for i, port in enumerate(ports)]
    yield [f"127.0.0.1:{port}" for port in ports]
    for b in brokers:
        b.stop()
    if oxia is not None:
        oxia.stop()


def sasl_user(bootstrap: str, user: str) -> dict:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": user, "sasl.password": f"{user}-pw", "log_level": 3}


def test_regex_subscription_gets_only_the_topics_the_member_may_describe(scram_secured, name):
    """KIP-848 (group.protocol=consumer) regex subscriptions as Kafka 4 resolves them with an authorizer: alice,
    who may read two of the three matching topics, is assigned and reads only those two; the super user with the
    same regex gets all three. Each consumer bootstraps from a different broker than the ACLs were made through."""
    a, b = scram_secured
    topics = [f"{name}-{x}" for x in ("a", "b", "c")]
    root = AdminClient(sasl_user(a, "admin"))
    for f in root.create_topics([NewTopic(t, 2) for t in topics], request_timeout=TIMEOUT).values():
        f.result(TIMEOUT)
    p = Producer({**sasl_user(a, "admin"), "message.timeout.ms": 10_000})
    for t in topics:
        for partition in (0, 1):
            p.produce(t, f"{t}/{partition}".encode(), partition=partition)
    assert p.flush(TIMEOUT) == 0
    for f in root.create_acls([allow(topics[0], AclOperation.READ, principal="User:alice"),
                               allow(topics[1], AclOperation.READ, principal="User:alice"),
                               allow(f"ga-{name}", AclOperation.READ, ResourceType.GROUP, principal="User:alice")],
                              request_timeout=TIMEOUT).values():
        f.result(TIMEOUT)
    # Made through a; the consumers talk to b: wait until b's authorizer has all three (DescribeAcls answers from it).
    via_b = AdminClient(sasl_user(b, "admin"))
    alices = CkAclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None, AclOperation.ANY,
                                AclPermissionType.ANY)
    assert _await(lambda: len(via_b.describe_acls(alices, request_timeout=TIMEOUT).result(TIMEOUT)) == 3,
                  timeout=10)

    def group_assignment(group: str) -> set[str]:
        """The topics the group's members are assigned, as the coordinator says (ConsumerGroupDescribe, as the
        super user): librdkafka would also leave out of its own assignment a topic whose id it cannot name."""
        (future,) = root.describe_consumer_groups([group], request_timeout=TIMEOUT).values()
        return {tp.topic for m in future.result(TIMEOUT).members for tp in m.assignment.topic_partitions}

    def regex_consumer(user: str, group: str, expected: set[str]) -> tuple[set[str], set[str]]:
        """Consume with a regex subscription until `expected` topics' records are in: (records, assigned topics)."""
        c = Consumer({**sasl_user(b, user), "group.id": group, "group.protocol": "consumer",
                      "auto.offset.reset": "earliest", "topic.metadata.refresh.interval.ms": 1_000})
        c.subscribe([f"^{name}-.*"])
        values: set[str] = set()
        want = {f"{t}/{partition}" for t in expected for partition in (0, 1)}
        try:
            def done() -> bool:
                for m in c.consume(10, 0.5):
                    assert m.error() is None or m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    if m.error() is None:
                        values.add(m.value().decode())
                return want <= values
            assert _await(done, timeout=30), (user, sorted(values))
            assert {tp.topic for tp in c.assignment()} == expected
            return values, group_assignment(group)
        finally:
            c.close()

    values, assigned = regex_consumer("alice", f"ga-{name}", set(topics[:2]))
    assert assigned == set(topics[:2]), assigned
    assert values == {f"{t}/{partition}" for t in topics[:2] for partition in (0, 1)}
    values, assigned = regex_consumer("admin", f"gb-{name}", set(topics))
    assert assigned == set(topics), assigned
    assert values == {f"{t}/{partition}" for t in topics for partition in (0, 1)}


def test_acls_of_every_resource_type(secured, name):
    """CreateAcls, DescribeAcls and DeleteAcls take every resource type Kafka 4 has (topic, group, cluster,
    transactional id, delegation token, user), through either broker: created through one, described and deleted
    through the other (kafka-python's requests: confluent-kafka has no delegation-token or user type)."""
    from kafka.protocol.admin.acl import (
        CreateAclsRequest,
        CreateAclsResponse,
        DeleteAclsRequest,
        DeleteAclsResponse,
        DescribeAclsRequest,
        DescribeAclsResponse,
    )

    a, b = secured
    principal = f"User:{name}"  # these ACLs' own principal: the cluster ACL here grants other tests nothing
    # Kafka's codes: (resource type, name, operation); LITERAL = 3, ALLOW = 3, ANY = 1.
    wanted = {(2, name, 3),  # TOPIC, READ
              (3, f"g-{name}", 3),  # GROUP, READ
              (4, "kafka-cluster", 8),  # CLUSTER, DESCRIBE
              (5, f"tx-{name}", 4),  # TRANSACTIONAL_ID, WRITE
              (6, f"token-{name}", 8),  # DELEGATION_TOKEN, DESCRIBE
              (7, f"User:u-{name}", 13)}  # USER, CREATE_TOKENS
    with RawClient(a.bootstrap) as c:
        response = c.call(CreateAclsRequest(creations=[CreateAclsRequest.AclCreation(
            resource_type=rt, resource_name=rn, resource_pattern_type=3, principal=principal, host="*", operation=op,
            permission_type=3) for rt, rn, op in sorted(wanted)]), CreateAclsResponse, 3)
    assert [(r.error_code, r.error_message) for r in response.results] == [(0, None)] * len(wanted)

    def described(broker: BrokerProcess, resource_type: int = 1) -> set[tuple[int, str, int]]:
        with RawClient(broker.bootstrap) as c:
            response = c.call(DescribeAclsRequest(
                resource_type_filter=resource_type, resource_name_filter=None, pattern_type_filter=1,
                principal_filter=principal, host_filter=None, operation=1, permission_type=1),
                DescribeAclsResponse, 3)
        assert response.error_code == 0, response.error_message
        return {(r.resource_type, r.resource_name, acl.operation) for r in response.resources for acl in r.acls
                if r.pattern_type == 3 and acl.permission_type == 3 and acl.host == "*"}

    assert _await(lambda: described(b) == wanted, timeout=10), described(b)
    for rt, rn, op in wanted:
        assert described(b, rt) == {(rt, rn, op)}
    with RawClient(b.bootstrap) as c:
        response = c.call(DeleteAclsRequest(filters=[DeleteAclsRequest.DeleteAclsFilter(
            resource_type_filter=rt, resource_name_filter=None, pattern_type_filter=1, principal_filter=principal,
            host_filter=None, operation=1, permission_type=1) for rt, _, _ in sorted(wanted)]), DeleteAclsResponse, 3)
    assert [r.error_code for r in response.filter_results] == [0] * len(wanted)
    assert [{(m.resource_type, m.resource_name, m.operation) for m in r.matching_acls}
            for r in response.filter_results] == [{w} for w in sorted(wanted)]
    assert _await(lambda: described(a) == set(), timeout=10), described(a)


def test_delete_records_needs_delete_on_the_topic(secured, name):
    """DeleteRecords is decided per topic: the partitions of a topic without DELETE answer
    TOPIC_AUTHORIZATION_FAILED and keep their records; those of a topic with DELETE are truncated (one request)."""
    from confluent_kafka.admin import OffsetSpec

    a, b = secured
    ad = admin(a.bootstrap)
    kept, truncated = f"{name}-kept", f"{name}-cut"  # kept: no DELETE; cut: ALL
    create_acls(secured, allow(kept, AclOperation.CREATE), allow(kept, AclOperation.WRITE),
                allow(truncated, AclOperation.ALL))
    for f in ad.create_topics([NewTopic(t, 2) for t in (kept, truncated)], request_timeout=TIMEOUT).values():
        f.result(TIMEOUT)
    p = Producer({"bootstrap.servers": b.bootstrap, "log_level": 3, "message.timeout.ms": 10_000})
    for t in (kept, truncated):
        for partition in (0, 1):
            for i in range(3):
                p.produce(t, f"v{i}".encode(), partition=partition)
    assert p.flush(TIMEOUT) == 0

    def outcome(future):
        try:
            return future.result(TIMEOUT).low_watermark
        except KafkaException as e:
            return e.args[0].code()

    asked = [TopicPartition(t, partition, 2) for t in (kept, truncated) for partition in (0, 1)]
    deleted = ad.delete_records(asked, request_timeout=TIMEOUT, operation_timeout=TIMEOUT)
    assert sorted((tp.topic, tp.partition, outcome(f)) for tp, f in deleted.items()) == sorted(
        [(kept, 0, KafkaError.TOPIC_AUTHORIZATION_FAILED), (kept, 1, KafkaError.TOPIC_AUTHORIZATION_FAILED),
         (truncated, 0, 2), (truncated, 1, 2)])
    earliest = ad.list_offsets({TopicPartition(t, partition): OffsetSpec.earliest()
                                for t in (kept, truncated) for partition in (0, 1)}, request_timeout=TIMEOUT)
    assert sorted((tp.topic, tp.partition, f.result(TIMEOUT).offset) for tp, f in earliest.items()) == sorted(
        [(kept, 0, 0), (kept, 1, 0), (truncated, 0, 2), (truncated, 1, 2)])
