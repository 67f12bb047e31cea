"""Topic admin, configs, DescribeCluster, ListOffsets and the transaction rejections, through real clients
(confluent-kafka's AdminClient, kafka-python's KafkaAdminClient) and raw requests of every version (kio)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from concurrent.futures import Future

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition
from kafka import errors as kp_errors
from kafka.admin import ConfigResource as KpConfigResource
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from dray_broker.protocol import apis
from dray_broker.protocol.codec import NULL_UUID, Request, encode_response
from dray_broker.protocol.kio_shim import (
    EntityField,
    EntityTupleField,
    PrimitiveTupleField,
    classify_field,
    implicit_default,
    kafka_type,
)
from dray_broker.protocol.rejections import handle_transaction_api
from dray_broker.server.handling import NoService, RequestContext
from dray_broker.server.routes import ROUTES
from tests.integration.wire import Wire, request

RDKAFKA_LOG = logging.getLogger("rdkafka")
TIMEOUT = 10
BASE_TS = 1_700_000_000_000
MAX_TS = BASE_TS + 999_000


# --- clients ---------------------------------------------------------------------------------------------------


def _admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap, "logger": RDKAFKA_LOG, "socket.timeout.ms": 10000})


def _kp_admin(broker) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=TIMEOUT * 1000,
                            client_id="dray-admin-test")


def _result(future: Future):
    return future.result(timeout=TIMEOUT)


def _error_of(future: Future) -> KafkaError:
    with pytest.raises(KafkaException) as info:
        _result(future)
    return info.value.args[0]


def _create(admin: AdminClient, *topics: NewTopic, validate_only: bool = False) -> dict[str, Future]:
    return admin.create_topics(list(topics), request_timeout=TIMEOUT, operation_timeout=TIMEOUT,
                               validate_only=validate_only)


def _partitions(admin: AdminClient, topic: str) -> int | None:
    md = admin.list_topics(topic, timeout=TIMEOUT).topics.get(topic)
    if md is None or md.error is not None:
        return None
    return len(md.partitions)


def _topic_exists(admin: AdminClient, topic: str) -> bool:
    return topic in admin.list_topics(timeout=TIMEOUT).topics


def _configs(admin: AdminClient, topic: str) -> dict:
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=TIMEOUT).values()
    return _result(future)


# --- raw requests ----------------------------------------------------------------------------------------------


@pytest.fixture
def wire(broker):
    w = Wire(broker.bootstrap)
    yield w
    w.close()


# --- CreateTopics ----------------------------------------------------------------------------------------------


def test_create_topics_with_configs_validate_only_and_errors(broker, topic_name):
    admin = _admin(broker)
    futures = _create(admin, NewTopic(topic_name, 3, 1,
                                      config={"retention.ms": "3600000", "max.message.bytes": "2000000"}))
    assert _result(futures[topic_name]) is None
    assert _partitions(admin, topic_name) == 3
    configs = _configs(admin, topic_name)
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not configs["retention.ms"].is_default
    assert configs["max.message.bytes"].value == "2000000"
    assert configs["retention.bytes"].value == "-1" and configs["retention.bytes"].is_default
    assert configs["cleanup.policy"].value == "delete"
    assert configs["retention.bytes"].source == ConfigSource.DEFAULT_CONFIG.value

    # validate_only: checked (including configs) but nothing created.
    checked = topic_name + "-v"
    validated = _create(admin, NewTopic(checked, 2, 1, config={"retention.ms": "5"}), validate_only=True)
    assert _result(validated[checked]) is None
    assert not _topic_exists(admin, checked)
    err = _error_of(_create(admin, NewTopic(checked, 2, 1, config={"retention.ms": "x"}), validate_only=True)[checked])
    assert err.code() == KafkaError.INVALID_CONFIG
    err = _error_of(_create(admin, NewTopic(topic_name, 2, 1), validate_only=True)[topic_name])
    assert err.code() == KafkaError.TOPIC_ALREADY_EXISTS

    # Errors, per topic, with messages; good topics in the same request are created.
    dup, bad_name, bad_config, bad_value, bad_parts, good = (
        topic_name, "bad name!", topic_name + "-c", topic_name + "-d", topic_name + "-p", topic_name + "-g")
    futures = _create(admin, NewTopic(dup, 1, 1), NewTopic(bad_name, 1, 1),
                      NewTopic(bad_config, 1, 1, config={"local.retention.ms": "1000"}),
                      NewTopic(bad_value, 1, 1, config={"cleanup.policy": "compact,shred"}),
                      NewTopic(bad_parts, 0, 1), NewTopic(good, 2, 3))
    err = _error_of(futures[dup])
    assert err.code() == KafkaError.TOPIC_ALREADY_EXISTS and "already exists" in err.str()
    assert _error_of(futures[bad_name]).code() == KafkaError.TOPIC_EXCEPTION
    err = _error_of(futures[bad_config])
    assert err.code() == KafkaError.INVALID_CONFIG and "local.retention.ms" in err.str()
    err = _error_of(futures[bad_value])
    assert err.code() == KafkaError.INVALID_CONFIG and "cleanup.policy" in err.str()
    assert _error_of(futures[bad_parts]).code() == KafkaError.INVALID_PARTITIONS
    # Replication factor 3 is accepted: storage is shared.
    assert _result(futures[good]) is None
    assert _partitions(admin, good) == 2
    for name in (bad_config, bad_value, bad_parts):
        assert not _topic_exists(admin, name)


def test_create_topics_kafka_python_defaults_and_collisions(broker, topic_name):
    admin = _kp_admin(broker)
    try:
        result = admin.create_topics({topic_name: {"configs": {"retention.bytes": "1000000"}}})
        (created,) = result["topics"]
        assert created["name"] == topic_name and created["error_code"] == 0
        assert created["num_partitions"] == 1  # -1: the broker's default (1)
        assert created["replication_factor"] == 1
        assert uuid.UUID(str(created["topic_id"])) != NULL_UUID
        described = admin.describe_configs([KpConfigResource("TOPIC", topic_name)], config_filter="all")
        values = {k: v["value"] for k, v in described["topic"][topic_name].items()}
        assert values["retention.bytes"] == "1000000"
        assert values["retention.ms"] == "604800000"
        with pytest.raises(kp_errors.TopicAlreadyExistsError):
            admin.create_topics({topic_name: {"num_partitions": 2}})
        # '.' and '_' collide, as in Kafka.
        dotted = topic_name.replace("-", ".") + ".x"
        admin.create_topics({dotted: {"num_partitions": 1}})
        with pytest.raises(kp_errors.InvalidTopicError):
            admin.create_topics({dotted.replace(".", "_"): {"num_partitions": 1}})
        # Explicit assignments: the count is honoured (placement means nothing with shared storage).
        assigned = topic_name + "-a"
        admin.create_topics({assigned: {"assignments": {0: [1], 1: [1], 2: [1]}}})
        assert len(admin.describe_topics([assigned])[0]["partitions"]) == 3
    finally:
        admin.close()


def test_create_topics_every_version(wire, topic_name):
    for version in range(2, 8):
        name = f"{topic_name}-v{version}"
        body = request(apis.CREATE_TOPICS, version, "CreateTopicsRequest", timeout=10000, validate_only=False, topics=(
            request(apis.CREATE_TOPICS, version, "CreatableTopic", name=name, num_partitions=2, replication_factor=-1,
                    assignments=(), configs=(request(apis.CREATE_TOPICS, version, "CreatableTopicConfig",
                                                     name="retention.ms", value="1234"),)),
            request(apis.CREATE_TOPICS, version, "CreatableTopic", name=name, num_partitions=1, replication_factor=1,
                    assignments=(), configs=()),
        ))
        response = wire.call(apis.CREATE_TOPICS, version, body)
        first, second = response.topics
        # The same name twice in one request: INVALID_REQUEST for both, as Kafka answers.
        assert first.error_code == second.error_code == ErrorCode.invalid_request
        body = dataclasses.replace(body, topics=body.topics[:1])
        (created,) = wire.call(apis.CREATE_TOPICS, version, body).topics
        assert created.error_code == ErrorCode.none and created.name == name
        if version >= 5:
            assert created.num_partitions == 2 and created.replication_factor == 1
            configs = {c.name: c for c in created.configs}
            assert configs["retention.ms"].value == "1234" and configs["retention.ms"].config_source == 1
            assert configs["retention.bytes"].config_source == 5
        if version >= 7:
            assert created.topic_id != NULL_UUID
        (again,) = wire.call(apis.CREATE_TOPICS, version, body).topics
        assert again.error_code == ErrorCode.topic_already_exists and "already exists" in again.error_message
        if version >= 5:
            assert again.configs is None and again.num_partitions == -1


# --- DescribeConfigs, AlterConfigs, IncrementalAlterConfigs ----------------------------------------------------


def test_describe_configs_synonyms_docs_and_broker_resources(broker, topic_name):
    admin = _admin(broker)
    _result(_create(admin, NewTopic(topic_name, 1, 1, config={"retention.ms": "60000"}))[topic_name])
    kp = _kp_admin(broker)
    try:
        described = kp.describe_configs([KpConfigResource("TOPIC", topic_name)], include_synonyms=True,
                                        config_filter="all")["topic"][topic_name]
        retention = described["retention.ms"]
        assert retention["value"] == "60000"
        synonyms = [(s["name"], s["value"], s["source"]) for s in retention["synonyms"]]
        assert synonyms == [("retention.ms", "60000", "DYNAMIC_TOPIC_CONFIG"),
                            ("log.retention.ms", "604800000", "DEFAULT_CONFIG")]
        assert described["compression.type"]["value"] == "producer" \
            and not described["compression.type"]["read_only"]
        assert described["message.timestamp.type"]["read_only"]  # fixed in Dray
        modified = kp.describe_configs([KpConfigResource("TOPIC", topic_name)])["topic"][topic_name]
        assert set(modified) == {"retention.ms"}
    finally:
        kp.close()
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic_name + "-missing")],
                                       request_timeout=TIMEOUT).values()
    assert _error_of(future).code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # Broker resources: the broker's settings, read-only.
    cluster = _result(admin.describe_cluster(request_timeout=TIMEOUT))
    broker_id = str(cluster.nodes[0].id)
    (future,) = admin.describe_configs([ConfigResource(ResourceType.BROKER, broker_id)],
                                       request_timeout=TIMEOUT).values()
    configs = _result(future)
    assert configs["broker.id"].value == broker_id
    assert configs["num.partitions"].value == "1"
    assert configs["auto.create.topics.enable"].value == "true"
    assert configs["advertised.listeners"].value == f"PLAINTEXT://{broker.bootstrap}"
    assert all(c.is_read_only for c in configs.values())


def test_describe_configs_every_version(wire, broker, topic_name):
    admin = _admin(broker)
    _result(_create(admin, NewTopic(topic_name, 1, 1, config={"max.message.bytes": "5000"}))[topic_name])
    for version in range(1, 5):
        body = request(apis.DESCRIBE_CONFIGS, version, "DescribeConfigsRequest", include_synonyms=True,
                       include_documentation=True, resources=(
                           request(apis.DESCRIBE_CONFIGS, version, "DescribeConfigsResource", resource_type=2,
                                   resource_name=topic_name, configuration_keys=("max.message.bytes", "nope")),
                           request(apis.DESCRIBE_CONFIGS, version, "DescribeConfigsResource", resource_type=2,
                                   resource_name=topic_name, configuration_keys=None),
                           request(apis.DESCRIBE_CONFIGS, version, "DescribeConfigsResource", resource_type=2,
                                   resource_name="missing-" + topic_name, configuration_keys=None),
                           request(apis.DESCRIBE_CONFIGS, version, "DescribeConfigsResource", resource_type=4,
                                   resource_name="999999", configuration_keys=None),
                       ))
        filtered, everything, missing, other_broker = wire.call(apis.DESCRIBE_CONFIGS, version, body).results
        assert filtered.error_code == ErrorCode.none
        (entry,) = filtered.configs
        assert (entry.name, entry.value, entry.config_source, entry.read_only) == \
            ("max.message.bytes", "5000", 1, False)
        assert [s.name for s in entry.synonyms] == ["max.message.bytes", "message.max.bytes"]
        if version >= 3:
            assert entry.config_type == 3 and entry.documentation
        assert {c.name for c in everything.configs} >= {"retention.ms", "retention.bytes", "max.message.bytes",
                                                         "cleanup.policy"}
        assert missing.error_code == ErrorCode.unknown_topic_or_partition and missing.error_message
        assert other_broker.error_code == ErrorCode.invalid_request


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")
def test_alter_and_incremental_alter_configs(broker, topic_name):
    admin = _admin(broker)
    configs = {"retention.ms": "1000", "max.message.bytes": "3000"}
    _result(_create(admin, NewTopic(topic_name, 1, 1, config=configs))[topic_name])

    def incremental(*entries, validate_only=False, topic=topic_name):
        (future,) = admin.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=list(entries))],
            request_timeout=TIMEOUT, validate_only=validate_only).values()
        return future

    # SET and DELETE; read back.
    _result(incremental(ConfigEntry("retention.bytes", "123456", incremental_operation=AlterConfigOpType.SET),
                        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)))
    configs = _configs(admin, topic_name)
    assert configs["retention.bytes"].value == "123456" and not configs["retention.bytes"].is_default
    assert configs["retention.ms"].value == "604800000" and configs["retention.ms"].is_default
    assert configs["max.message.bytes"].value == "3000"

    # validate_only changes nothing.
    _result(incremental(ConfigEntry("retention.bytes", "1", incremental_operation=AlterConfigOpType.SET),
                        validate_only=True))
    assert _configs(admin, topic_name)["retention.bytes"].value == "123456"

    # APPEND/SUBTRACT on the list config cleanup.policy; on a single-valued one, unsupported names, bad values:
    # INVALID_CONFIG; unknown topics: UNKNOWN_TOPIC_OR_PARTITION.
    _result(incremental(ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND)))
    assert _configs(admin, topic_name)["cleanup.policy"].value == "delete,compact"
    _result(incremental(ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SUBTRACT)))
    assert _configs(admin, topic_name)["cleanup.policy"].value == "compact"
    err = _error_of(incremental(ConfigEntry("cleanup.policy", "compact",
                                            incremental_operation=AlterConfigOpType.SUBTRACT)))
    assert err.code() == KafkaError.INVALID_CONFIG and "cleanup.policy" in err.str()
    _result(incremental(ConfigEntry("cleanup.policy", None, incremental_operation=AlterConfigOpType.DELETE)))
    err = _error_of(incremental(ConfigEntry("retention.ms", "5", incremental_operation=AlterConfigOpType.APPEND)))
    assert err.code() == KafkaError.INVALID_CONFIG
    err = _error_of(incremental(ConfigEntry("local.retention.ms", "1", incremental_operation=AlterConfigOpType.SET)))
    assert err.code() == KafkaError.INVALID_CONFIG and "local.retention.ms" in err.str()
    err = _error_of(incremental(ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)))
    assert err.code() == KafkaError.INVALID_CONFIG
    err = _error_of(incremental(ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.SET),
                                topic=topic_name + "-missing"))
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    # A fixed config set to its one value is accepted, another value is refused.
    _result(incremental(ConfigEntry("message.timestamp.type", "CreateTime",
                                    incremental_operation=AlterConfigOpType.SET)))
    err = _error_of(incremental(ConfigEntry("message.timestamp.type", "LogAppendTime",
                                            incremental_operation=AlterConfigOpType.SET)))
    assert err.code() == KafkaError.INVALID_CONFIG and "CreateTime" in err.str()
    err = _error_of(incremental(ConfigEntry("compression.type", "brotli",
                                            incremental_operation=AlterConfigOpType.SET)))
    assert err.code() == KafkaError.INVALID_CONFIG and "zstd" in err.str()
    assert _configs(admin, topic_name)["retention.bytes"].value == "123456"

    # AlterConfigs (legacy): the given set replaces the whole set.
    (future,) = admin.alter_configs(
        [ConfigResource(ResourceType.TOPIC, topic_name, set_config={"retention.ms": "7000"})],
        request_timeout=TIMEOUT).values()
    _result(future)
    configs = _configs(admin, topic_name)
    assert configs["retention.ms"].value == "7000"
    assert configs["retention.bytes"].is_default and configs["max.message.bytes"].is_default
    (future,) = admin.alter_configs([ConfigResource(ResourceType.TOPIC, topic_name, set_config={"flush.ms": "1"})],
                                    request_timeout=TIMEOUT).values()
    assert _error_of(future).code() == KafkaError.INVALID_CONFIG

    # kafka-python: IncrementalAlterConfigs (SET as a dict) and its legacy AlterConfigs emulation, which re-sends
    # the other modified keys itself.
    kp = _kp_admin(broker)
    try:
        result = kp.alter_configs([KpConfigResource("TOPIC", topic_name, configs={"max.message.bytes": "4096"})],
                                  incremental=True)
        assert result == {"topic": {topic_name: "OK"}}
        result = kp.alter_configs([KpConfigResource("TOPIC", topic_name, configs={"retention.bytes": "99"})],
                                  incremental=False)
        assert result == {"topic": {topic_name: "OK"}}
        configs = _configs(admin, topic_name)
        assert (configs["max.message.bytes"].value, configs["retention.ms"].value, configs["retention.bytes"].value) \
            == ("4096", "7000", "99")
        result = kp.alter_configs([KpConfigResource("TOPIC", topic_name, configs={"retention.ms": "-5"})],
                                  incremental=True)
        assert "InvalidConfigurationError" in result["topic"][topic_name]
    finally:
        kp.close()


def test_alter_configs_every_version(wire, broker, topic_name):
    admin = _admin(broker)
    _result(_create(admin, NewTopic(topic_name, 1, 1))[topic_name])
    for version in range(0, 3):
        body = request(apis.ALTER_CONFIGS, version, "AlterConfigsRequest", validate_only=False, resources=(
            request(apis.ALTER_CONFIGS, version, "AlterConfigsResource", resource_type=2, resource_name=topic_name,
                    configs=(request(apis.ALTER_CONFIGS, version, "AlterableConfig", name="retention.ms",
                                     value=str(1000 + version)),)),
            request(apis.ALTER_CONFIGS, version, "AlterConfigsResource", resource_type=4, resource_name="1",
                    configs=(request(apis.ALTER_CONFIGS, version, "AlterableConfig", name="num.partitions",
                                     value="3"),)),
        ))
        ok, broker_resource = wire.call(apis.ALTER_CONFIGS, version, body).responses
        assert ok.error_code == ErrorCode.none and ok.resource_name == topic_name
        assert broker_resource.error_code == ErrorCode.invalid_config and "read-only" in broker_resource.error_message
        assert _configs(_admin(broker), topic_name)["retention.ms"].value == str(1000 + version)
    for version in range(0, 2):
        resource = request(apis.INCREMENTAL_ALTER_CONFIGS, version, "AlterConfigsResource", resource_type=2,
                           resource_name=topic_name, configs=(
                               request(apis.INCREMENTAL_ALTER_CONFIGS, version, "AlterableConfig",
                                       name="retention.bytes", config_operation=0, value=str(5000 + version)),))
        dup = request(apis.INCREMENTAL_ALTER_CONFIGS, version, "AlterConfigsResource", resource_type=2,
                      resource_name=topic_name, configs=resource.configs * 2)
        body = request(apis.INCREMENTAL_ALTER_CONFIGS, version, "IncrementalAlterConfigsRequest",
                       validate_only=False, resources=(resource,))
        (ok,) = wire.call(apis.INCREMENTAL_ALTER_CONFIGS, version, body).responses
        assert ok.error_code == ErrorCode.none
        assert _configs(_admin(broker), topic_name)["retention.bytes"].value == str(5000 + version)
        duplicated = dataclasses.replace(body, resources=(dup,))
        (bad,) = wire.call(apis.INCREMENTAL_ALTER_CONFIGS, version, duplicated).responses
        assert bad.error_code == ErrorCode.invalid_request


# --- CreatePartitions and DeleteTopics -------------------------------------------------------------------------


def test_create_partitions_grow_and_refuse_shrink(broker, topic_name):
    admin = _admin(broker)
    _result(_create(admin, NewTopic(topic_name, 2, 1))[topic_name])

    def grow(count, validate_only=False, topic=topic_name):
        (future,) = admin.create_partitions([NewPartitions(topic, count)], request_timeout=TIMEOUT,
                                            validate_only=validate_only).values()
        return future

    _result(grow(6, validate_only=True))
    assert _partitions(admin, topic_name) == 2
    _result(grow(5))
    assert _partitions(admin, topic_name) == 5
    err = _error_of(grow(3))
    assert err.code() == KafkaError.INVALID_PARTITIONS and "cannot be removed" in err.str()
    assert _error_of(grow(5)).code() == KafkaError.INVALID_PARTITIONS
    assert _error_of(grow(9, topic=topic_name + "-missing")).code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert _partitions(admin, topic_name) == 5
    # The new partitions work: produce to the last one and find it with ListOffsets.
    producer = Producer({"bootstrap.servers": broker.bootstrap, "logger": RDKAFKA_LOG})
    producer.produce(topic_name, b"x", partition=4)
    assert producer.flush(TIMEOUT) == 0
    (info,) = admin.list_offsets({TopicPartition(topic_name, 4): OffsetSpec.latest()}, request_timeout=TIMEOUT).values()
    assert _result(info).offset == 1

    kp = _kp_admin(broker)
    try:
        kp.create_partitions({topic_name: 7})
        assert _partitions(admin, topic_name) == 7
        with pytest.raises(kp_errors.InvalidPartitionsError):
            kp.create_partitions({topic_name: 6})
    finally:
        kp.close()


def test_create_partitions_every_version(wire, broker, topic_name):
    admin = _admin(broker)
    _result(_create(admin, NewTopic(topic_name, 1, 1))[topic_name])
    for version in range(0, 4):
        count = 2 + version
        body = request(apis.CREATE_PARTITIONS, version, "CreatePartitionsRequest", timeout=10000, validate_only=False,
                       topics=(request(apis.CREATE_PARTITIONS, version, "CreatePartitionsTopic", name=topic_name,
                                       count=count, assignments=None),))
        (result,) = wire.call(apis.CREATE_PARTITIONS, version, body).results
        assert result.error_code == ErrorCode.none
        (result,) = wire.call(apis.CREATE_PARTITIONS, version, body).results
        assert result.error_code == ErrorCode.invalid_partitions and result.error_message
    assert _partitions(_admin(broker), topic_name) == 5


def test_delete_topics_by_name_and_by_id(broker, topic_name):
    admin = _admin(broker)
    by_name, by_id = topic_name + "-n", topic_name + "-i"
    for name in (by_name, by_id):
        _result(_create(admin, NewTopic(name, 2, 1))[name])
    producer = Producer({"bootstrap.servers": broker.bootstrap, "logger": RDKAFKA_LOG})
    producer.produce(by_name, b"gone soon", partition=1)
    assert producer.flush(TIMEOUT) == 0
    group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"g-{by_name}", "logger": RDKAFKA_LOG})
    group.commit(offsets=[TopicPartition(by_name, 1, 1)], asynchronous=False)
    assert group.committed([TopicPartition(by_name, 1)], timeout=TIMEOUT)[0].offset == 1

    (future,) = admin.delete_topics([by_name], request_timeout=TIMEOUT, operation_timeout=TIMEOUT).values()
    assert _result(future) is None
    assert not _topic_exists(admin, by_name)
    (future,) = admin.delete_topics([by_name], request_timeout=TIMEOUT, operation_timeout=TIMEOUT).values()
    assert _error_of(future).code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    # Re-created under the same name: a new topic, empty.
    _result(_create(admin, NewTopic(by_name, 2, 1))[by_name])
    (info,) = admin.list_offsets({TopicPartition(by_name, 1): OffsetSpec.latest()}, request_timeout=TIMEOUT).values()
    assert _result(info).offset == 0
    # The deleted topic's committed offsets do not carry over to the new one (as Kafka deletes them).
    assert group.committed([TopicPartition(by_name, 1)], timeout=TIMEOUT)[0].offset == OFFSET_INVALID
    group.close()

    kp = _kp_admin(broker)
    try:
        topic_id = uuid.UUID(str(kp.describe_topics([by_id])[0]["topic_id"]))
        result = kp.delete_topics([topic_id])
        (deleted,) = result["topics"]
        assert deleted["error_code"] == 0 and deleted["name"] == by_id
        assert not _topic_exists(admin, by_id)
        with pytest.raises(kp_errors.UnknownTopicIdError):
            kp.delete_topics([topic_id])
    finally:
        kp.close()


def test_delete_topics_every_version(wire, broker, topic_name):
    admin = _admin(broker)
    for version in range(1, 7):
        name = f"{topic_name}-v{version}"
        _result(_create(admin, NewTopic(name, 1, 1))[name])
        if version >= 6:
            topic_id = wire.call(apis.METADATA, 12, request(apis.METADATA, 12, "MetadataRequest", topics=(
                request(apis.METADATA, 12, "MetadataRequestTopic", name=name, topic_id=NULL_UUID),),
                allow_auto_topic_creation=False, include_topic_authorized_operations=False)).topics[0].topic_id
            state = request(apis.DELETE_TOPICS, version, "DeleteTopicState", name=None, topic_id=topic_id)
            body = request(apis.DELETE_TOPICS, version, "DeleteTopicsRequest", timeout=10000, topics=(state,))
        else:
            body = request(apis.DELETE_TOPICS, version, "DeleteTopicsRequest", timeout=10000, topic_names=(name,))
        (result,) = wire.call(apis.DELETE_TOPICS, version, body).responses
        assert result.error_code == ErrorCode.none and result.name == name
        (again,) = wire.call(apis.DELETE_TOPICS, version, body).responses
        expected = ErrorCode.unknown_topic_id if version >= 6 else ErrorCode.unknown_topic_or_partition
        assert again.error_code == expected
        assert not _topic_exists(admin, name)


# --- DescribeCluster -------------------------------------------------------------------------------------------


def test_describe_cluster(broker, wire):
    admin = _admin(broker)
    cluster = _result(admin.describe_cluster(request_timeout=TIMEOUT))
    assert uuid.UUID(cluster.cluster_id)
    (node,) = cluster.nodes
    assert f"{node.host}:{node.port}" == broker.bootstrap
    assert cluster.controller.id == node.id
    kp = _kp_admin(broker)
    try:
        described = kp.describe_cluster()
        assert described["cluster_id"] == cluster.cluster_id
        assert described["controller_id"] == node.id
        assert [(b["broker_id"], b["host"], b["port"]) for b in described["brokers"]] == \
            [(node.id, node.host, node.port)]
    finally:
        kp.close()
    for version in range(0, 3):
        body = request(apis.DESCRIBE_CLUSTER, version, "DescribeClusterRequest",
                       include_cluster_authorized_operations=False, endpoint_type=1, include_fenced_brokers=True)
        response = wire.call(apis.DESCRIBE_CLUSTER, version, body)
        assert response.error_code == ErrorCode.none and response.cluster_id == cluster.cluster_id
        assert [(b.broker_id, b.port) for b in response.brokers] == [(node.id, node.port)]
        assert response.controller_id == node.id
    body = request(apis.DESCRIBE_CLUSTER, 1, "DescribeClusterRequest", include_cluster_authorized_operations=False,
                   endpoint_type=2)
    assert wire.call(apis.DESCRIBE_CLUSTER, 1, body).error_code == ErrorCode.unsupported_endpoint_type


# --- compression.type -------------------------------------------------------------------------------------------


def _stored_codecs(broker, topic: str, start: int) -> list[tuple[int, int]]:
    """(base offset, codec) of each stored batch from offset start, read over the wire (CRCs checked)."""
    from kafka.record import MemoryRecords

    from tests.integration.clients import RawClient

    out = []
    with RawClient(broker.bootstrap) as c:
        data = c.fetch({(topic, 0): start}, partition_max_bytes=50 << 20)[(topic, 0)].records
    records = MemoryRecords(bytes(data or b""))
    while (batch := records.next_batch()) is not None:
        assert batch.validate_crc(), batch.base_offset
        out.append((batch.base_offset, batch.compression_type))
    return out


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")
def test_compression_type_recompresses_other_codecs(broker, topic_name):
    """A topic whose compression.type names a codec stores every batch with it, as Kafka does: batches produced
    uncompressed or with gzip by librdkafka are recompressed to zstd on the way in, zstd ones are kept; consumers
    read every record intact; AlterConfigs changes the codec for later batches (producer: as sent)."""
    admin = _admin(broker)
    _result(_create(admin, NewTopic(topic_name, 1, 1, config={"compression.type": "zstd"}))[topic_name])
    configs = _configs(admin, topic_name)
    assert configs["compression.type"].value == "zstd"
    assert configs["compression.type"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not configs["compression.type"].is_read_only

    sent = []  # (offset, key, value, headers, timestamp, codec the producer used)

    def produce(codec: str, n: int, **config) -> None:
        producer = Producer({"bootstrap.servers": broker.bootstrap, "logger": RDKAFKA_LOG, "compression.type": codec,
                             "linger.ms": 20, **config})
        for i in range(n):
            key = None if i % 5 == 0 else b"k-%s-%d" % (codec.encode(), i)
            value = None if i % 7 == 3 else b"%s-%d-" % (codec.encode(), i) + b"v" * (i * 37 % 500)
            headers = [("h", b"%d" % i), ("codec", codec.encode())]
            ts = BASE_TS + len(sent) + i

            def delivered(err, msg, key=key, value=value, headers=headers, ts=ts):
                assert err is None, err
                sent.append((msg.offset(), key, value, headers, ts, codec))

            producer.produce(topic_name, key=key, value=value, headers=headers, timestamp=ts, partition=0,
                             on_delivery=delivered)
        assert producer.flush(TIMEOUT) == 0

    produce("none", 40)
    produce("gzip", 40, **{"enable.idempotence": True})
    produce("zstd", 40)
    assert {codec for _, codec in _stored_codecs(broker, topic_name, 0)} == {4}  # zstd

    # Later batches follow the topic's new codec; `producer` stores them as sent.
    (future,) = admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("compression.type", "uncompressed", incremental_operation=AlterConfigOpType.SET)])],
        request_timeout=TIMEOUT).values()
    _result(future)
    start = len(sent)
    produce("lz4", 30)
    assert {codec for _, codec in _stored_codecs(broker, topic_name, start)} == {0}
    (future,) = admin.alter_configs([ConfigResource(ResourceType.TOPIC, topic_name,
                                                    set_config={"compression.type": "producer"})],
                                    request_timeout=TIMEOUT).values()
    _result(future)
    assert _configs(admin, topic_name)["compression.type"].value == "producer"
    start = len(sent)
    produce("snappy", 30)
    assert {codec for _, codec in _stored_codecs(broker, topic_name, start)} == {2}

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"g-{topic_name}",
                         "enable.auto.commit": False, "logger": RDKAFKA_LOG})
    read = []
    try:
        consumer.assign([TopicPartition(topic_name, 0, 0)])
        deadline = time.monotonic() + 30
        while len(read) < len(sent) and time.monotonic() < deadline:
            for m in consumer.consume(500, timeout=1):
                assert m.error() is None, m.error()
                read.append((m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]))
    finally:
        consumer.close()
    assert read == [(o, k, v, h, ts) for o, k, v, h, ts, _ in sorted(sent)]


# --- ListOffsets -----------------------------------------------------------------------------------------------

# 50 records on partition 0, produced in five flushes with five codecs. Timestamps rise by 100 ms per offset,
# except: offset 25 is older than all others; offsets 43 and 47 both carry the largest timestamp. Partition 1 has
# the largest timestamp twice, in two flushes (offsets 1 and 3). Partition 2 is empty.
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def _timestamp(offset: int) -> int:
    if offset == 25:
        return BASE_TS - 5_000
    if offset in (43, 47):
        return MAX_TS
    return BASE_TS + offset * 100


@pytest.fixture
def timed_topic(broker, topic_name):
    admin = _admin(broker)
    _result(_create(admin, NewTopic(topic_name, 3, 1))[topic_name])
    for group, codec in enumerate(CODECS):
        producer = Producer({"bootstrap.servers": broker.bootstrap, "logger": RDKAFKA_LOG, "compression.type": codec,
                             "linger.ms": 50, "enable.idempotence": False})
        for offset in range(group * 10, group * 10 + 10):
            producer.produce(topic_name, value=b"record-%d" % offset * 20, key=b"k%d" % offset, partition=0,
                             timestamp=_timestamp(offset))
        assert producer.flush(TIMEOUT) == 0
    for codec, timestamps in (("gzip", [BASE_TS + 1, MAX_TS, BASE_TS + 2]), ("lz4", [MAX_TS, BASE_TS + 3])):
        producer = Producer({"bootstrap.servers": broker.bootstrap, "logger": RDKAFKA_LOG, "compression.type": codec,
                             "linger.ms": 50, "enable.idempotence": False})
        for ts in timestamps:
            producer.produce(topic_name, value=b"p1", partition=1, timestamp=ts)
        assert producer.flush(TIMEOUT) == 0
    return topic_name


def _list_offsets(admin: AdminClient, topic: str, spec, partition: int = 0):
    (future,) = admin.list_offsets({TopicPartition(topic, partition): spec}, request_timeout=TIMEOUT).values()
    info = _result(future)
    return info.offset, info.timestamp


def test_list_offsets_confluent(broker, timed_topic):
    admin = _admin(broker)
    assert _list_offsets(admin, timed_topic, OffsetSpec.earliest()) == (0, -1)
    assert _list_offsets(admin, timed_topic, OffsetSpec.latest()) == (50, -1)
    # The first record among those with the largest timestamp (43, not 47; 1, not 3).
    assert _list_offsets(admin, timed_topic, OffsetSpec.max_timestamp()) == (43, MAX_TS)
    assert _list_offsets(admin, timed_topic, OffsetSpec.max_timestamp(), partition=1) == (1, MAX_TS)
    expectations = {
        BASE_TS - 60_000: (0, BASE_TS),  # before everything: the first record
        BASE_TS: (0, BASE_TS),
        BASE_TS + 1_000: (10, BASE_TS + 1_000),  # the first record of the gzip batch
        BASE_TS + 1_050: (11, BASE_TS + 1_100),  # between records
        BASE_TS + 2_050: (21, BASE_TS + 2_100),  # snappy
        BASE_TS + 2_500: (26, BASE_TS + 2_600),  # offset 25 is older: skipped
        BASE_TS + 3_650: (37, BASE_TS + 3_700),  # lz4
        BASE_TS + 4_150: (42, BASE_TS + 4_200),  # zstd
        BASE_TS + 4_250: (43, MAX_TS),  # 43 is the first at or after it, in offset order (44 is nearer in time)
        MAX_TS: (43, MAX_TS),
        MAX_TS + 1: (-1, -1),  # none: offset -1, as Kafka answers
    }
    for ts, expected in expectations.items():
        assert _list_offsets(admin, timed_topic, OffsetSpec.for_timestamp(ts)) == expected, ts
    assert _list_offsets(admin, timed_topic, OffsetSpec.for_timestamp(BASE_TS + 3), partition=1) == (1, MAX_TS)
    assert _list_offsets(admin, timed_topic, OffsetSpec.latest(), partition=1) == (5, -1)
    # The empty partition.
    assert _list_offsets(admin, timed_topic, OffsetSpec.latest(), partition=2) == (0, -1)
    assert _list_offsets(admin, timed_topic, OffsetSpec.earliest(), partition=2) == (0, -1)
    assert _list_offsets(admin, timed_topic, OffsetSpec.max_timestamp(), partition=2) == (-1, -1)
    assert _list_offsets(admin, timed_topic, OffsetSpec.for_timestamp(BASE_TS), partition=2) == (-1, -1)
    # (librdkafka refuses unknown partitions itself; test_list_offsets_every_version asks the broker.)


def test_list_offsets_kafka_python(broker, timed_topic):
    from kafka.admin import OffsetSpec as KpOffsetSpec

    kp = _kp_admin(broker)
    try:
        tp = KpTopicPartition(timed_topic, 0)
        got = kp.list_partition_offsets({tp: KpOffsetSpec.LATEST})[tp]
        assert got.offset == 50
        got = kp.list_partition_offsets({tp: KpOffsetSpec.EARLIEST})[tp]
        assert got.offset == 0
        got = kp.list_partition_offsets({tp: KpOffsetSpec.MAX_TIMESTAMP})[tp]
        assert (got.offset, got.timestamp) == (43, MAX_TS)
        got = kp.list_partition_offsets({tp: BASE_TS + 4_000})[tp]
        assert (got.offset, got.timestamp) == (40, BASE_TS + 4_000)
    finally:
        kp.close()


def test_list_offsets_every_version(wire, timed_topic):
    sentinels = {-1: 50, -2: 0, -3: 43, -4: 0, -5: 49, -6: 50, BASE_TS + 1_000: 10}
    min_version = {-1: 1, -2: 1, -3: 7, -4: 8, -5: 9, -6: 11, BASE_TS + 1_000: 1}
    for version in range(1, 12):
        for ts, offset in sentinels.items():
            topics = (request(apis.LIST_OFFSETS, version, "ListOffsetsTopic", name=timed_topic, partitions=(
                          request(apis.LIST_OFFSETS, version, "ListOffsetsPartition", partition_index=0, timestamp=ts,
                                  current_leader_epoch=-1),
                          request(apis.LIST_OFFSETS, version, "ListOffsetsPartition", partition_index=99,
                                  timestamp=ts))),
                      request(apis.LIST_OFFSETS, version, "ListOffsetsTopic", name=timed_topic + "-missing",
                              partitions=(request(apis.LIST_OFFSETS, version, "ListOffsetsPartition",
                                                  partition_index=0, timestamp=ts),)))
            body = request(apis.LIST_OFFSETS, version, "ListOffsetsRequest", replica_id=-1, isolation_level=1,
                           topics=topics, timeout=10000)
            found, missing = wire.call(apis.LIST_OFFSETS, version, body).topics
            p, no_partition = found.partitions
            assert no_partition.error_code == ErrorCode.unknown_topic_or_partition
            assert (no_partition.offset, no_partition.timestamp) == (-1, -1)
            assert missing.partitions[0].error_code == ErrorCode.unknown_topic_or_partition
            if version < min_version[ts]:
                assert p.error_code == ErrorCode.unsupported_version, (version, ts)
                continue
            assert p.error_code == ErrorCode.none, (version, ts)
            assert p.offset == offset, (version, ts)
            assert p.timestamp == {-3: MAX_TS, BASE_TS + 1_000: BASE_TS + 1_000}.get(ts, -1)
            if version >= 4:
                assert p.leader_epoch == 0
    # The same partition twice: INVALID_REQUEST, as Kafka answers.
    partition = request(apis.LIST_OFFSETS, 5, "ListOffsetsPartition", partition_index=0, timestamp=-1)
    twice = request(apis.LIST_OFFSETS, 5, "ListOffsetsRequest", replica_id=-1, isolation_level=0, topics=(
        request(apis.LIST_OFFSETS, 5, "ListOffsetsTopic", name=timed_topic, partitions=(partition, partition)),))
    (topic,) = wire.call(apis.LIST_OFFSETS, 5, twice).topics
    assert [p.error_code for p in topic.partitions] == [ErrorCode.invalid_request] * 2


# --- transactions ----------------------------------------------------------------------------------------------


def test_transactional_producer_fails_cleanly_and_the_broker_keeps_serving(broker, topic_name):
    admin = _admin(broker)
    _result(_create(admin, NewTopic(topic_name, 1, 1))[topic_name])
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "dray-txn-" + topic_name,
                         "logger": RDKAFKA_LOG, "transaction.timeout.ms": 10000})
    started = time.monotonic()
    with pytest.raises(KafkaException) as info:
        producer.init_transactions(TIMEOUT)
    error = info.value.args[0]
    assert time.monotonic() - started < TIMEOUT - 1  # a clear refusal, not a timeout
    assert error.code() in (KafkaError._UNSUPPORTED_FEATURE, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED), error
    assert error.fatal() and not error.retriable()
    assert "ransaction" in error.str()
    # The broker keeps serving.
    plain = Producer({"bootstrap.servers": broker.bootstrap, "logger": RDKAFKA_LOG})
    plain.produce(topic_name, b"after the refusal", partition=0)
    assert plain.flush(TIMEOUT) == 0
    assert _list_offsets(admin, topic_name, OffsetSpec.latest()) == (1, -1)


def _sample(cls):
    """A request entity with every field filled (arrays with two elements), to echo in error responses."""
    values = {}
    for f in dataclasses.fields(cls):
        kind = classify_field(f)
        wire = kafka_type(f)
        if isinstance(kind, EntityTupleField):
            values[f.name] = (_sample(kind.type_), _sample(kind.type_))
        elif isinstance(kind, PrimitiveTupleField):
            values[f.name] = ("Ongoing", "Nonsense") if wire == "string" else (3, 4)
        elif isinstance(kind, EntityField):
            values[f.name] = _sample(kind.type_)
        elif wire == "string":
            values[f.name] = f"s-{f.name}"
        elif wire == "bool":
            values[f.name] = True
        elif wire in ("int32", "int64", "int16", "int8"):
            values[f.name] = 7
        else:
            values[f.name] = implicit_default(kind.type_)
    return cls(**values)


EXPECTED_TXN_ERRORS = {
    apis.ADD_PARTITIONS_TO_TXN: ErrorCode.transactional_id_authorization_failed,
    apis.ADD_OFFSETS_TO_TXN: ErrorCode.transactional_id_authorization_failed,
    apis.END_TXN: ErrorCode.transactional_id_authorization_failed,
    apis.TXN_OFFSET_COMMIT: ErrorCode.transactional_id_authorization_failed,
    apis.DESCRIBE_TRANSACTIONS: ErrorCode.transactional_id_not_found,
    apis.LIST_TRANSACTIONS: ErrorCode.none,
    apis.WRITE_TXN_MARKERS: ErrorCode.cluster_authorization_failed,
}


def _error_codes(entity) -> list:
    out = []
    for f in dataclasses.fields(entity):
        value = getattr(entity, f.name)
        if f.metadata.get("kafka_type") == "error_code":
            out.append(value)
        elif isinstance(value, tuple):
            for item in value:
                if dataclasses.is_dataclass(item):
                    out.extend(_error_codes(item))
    return out


@pytest.mark.parametrize("api_key", sorted(EXPECTED_TXN_ERRORS))
def test_transaction_api_rejections_every_version(api_key):
    versions = []
    for version in range(0, 12):
        try:
            versions.append((version, load_request_schema(api_key, version)))
        except Exception:
            continue
    assert versions
    route = ROUTES.get(api_key)  # the table routes every version kio decodes
    assert route is not None and (route.min_version, route.max_version) == (versions[0][0], versions[-1][0])
    for version, req_cls in versions:
        body = _sample(req_cls)
        response = asyncio.run(handle_transaction_api(NoService(), RequestContext("c", ""),
                                                      Request(api_key, version, 9, "c", body))).body
        frame = b"".join(bytes(c) for c in encode_response(api_key, version, 9, response))[4:]
        resp_cls = load_response_schema(api_key, version)
        _, n = entity_reader(resp_cls.__header_schema__)(frame, 0)
        decoded, m = entity_reader(resp_cls)(frame, n)
        assert n + m == len(frame) and decoded == response
        codes = _error_codes(response)
        assert codes and set(codes) == {EXPECTED_TXN_ERRORS[api_key]}, (api_key, version, codes)
        if api_key == apis.ADD_PARTITIONS_TO_TXN and version <= 3:
            topics = response.results_by_topic_v3_and_below
            assert [t.name for t in topics] == ["s-name"] * 2
            assert [p.partition_index for p in topics[0].results_by_partition] == [3, 4]
        if api_key == apis.TXN_OFFSET_COMMIT:
            assert [(p.partition_index, p.error_code) for p in response.topics[1].partitions] == \
                [(7, ErrorCode.transactional_id_authorization_failed)] * 2
        if api_key == apis.DESCRIBE_TRANSACTIONS:
            assert [s.transactional_id for s in response.transaction_states] == ["Ongoing", "Nonsense"]
        if api_key == apis.LIST_TRANSACTIONS:
            assert response.transaction_states == () and response.unknown_state_filters == ("Nonsense",)
        if api_key == apis.END_TXN and version >= 5:
            assert (response.producer_id, response.producer_epoch) == (-1, -1)


def test_transaction_apis_are_answered_not_advertised(broker, wire, topic_name):
    versions = wire.call(apis.API_VERSIONS, 3, request(apis.API_VERSIONS, 3, "ApiVersionsRequest",
                                                       client_software_name="t", client_software_version="1"))
    advertised = {k.api_key for k in versions.api_keys}
    assert not advertised & apis.TRANSACTION_APIS
    assert {apis.LIST_OFFSETS, apis.DESCRIBE_CLUSTER, apis.CREATE_TOPICS, apis.INCREMENTAL_ALTER_CONFIGS} <= advertised
    body = request(apis.END_TXN, 3, "EndTxnRequest", transactional_id="t-" + topic_name, producer_id=5,
                   producer_epoch=0, committed=True)
    response = wire.call(apis.END_TXN, 3, body)
    assert response.error_code == ErrorCode.transactional_id_authorization_failed
    body = request(apis.ADD_PARTITIONS_TO_TXN, 3, "AddPartitionsToTxnRequest", v3_and_below_transactional_id="t",
                   v3_and_below_producer_id=5, v3_and_below_producer_epoch=0, v3_and_below_topics=(
                       request(apis.ADD_PARTITIONS_TO_TXN, 3, "AddPartitionsToTxnTopic", name=topic_name,
                               partitions=(0, 1)),))
    (topic,) = wire.call(apis.ADD_PARTITIONS_TO_TXN, 3, body).results_by_topic_v3_and_below
    assert topic.name == topic_name
    assert [(p.partition_index, p.partition_error_code) for p in topic.results_by_partition] == \
        [(0, ErrorCode.transactional_id_authorization_failed), (1, ErrorCode.transactional_id_authorization_failed)]
    # The connection is still usable.
    assert wire.call(apis.API_VERSIONS, 3, request(apis.API_VERSIONS, 3, "ApiVersionsRequest",
                                                   client_software_name="t", client_software_version="1")).error_code \
        == ErrorCode.none
