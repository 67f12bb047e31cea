"""Topic admin APIs: CreateTopics (v2-7), DeleteTopics (v1-6), CreatePartitions (v0-3), DescribeConfigs (v1-4),
AlterConfigs (v0-2) and IncrementalAlterConfigs (v0-1), over the topic catalog (topics/catalog.py).

Errors are per topic / per resource, with a message, as Kafka answers them:
- a name given twice in one request: INVALID_REQUEST for each occurrence;
- illegal names: INVALID_TOPIC_EXCEPTION (also for a name that collides with an existing one once '.' and '_'
  are treated alike, as Kafka refuses: their metric names would clash);
- unsupported config names or bad values: INVALID_CONFIG; unknown topics: UNKNOWN_TOPIC_OR_PARTITION.
"""

from __future__ import annotations

import logging
from collections import Counter
from types import ModuleType
from typing import Any

from kio.schema.errors import ErrorCode

from dray_broker.tools.output import plural
from dray_broker.protocol.codec import NULL_UUID, Request, make, response_module
from dray_broker.server.handling import RequestContext, Response
from dray_broker.server.services import AdminService
from dray_broker.topics.catalog import TOPIC_CONFIGS, Topic, TopicError, validate_configs, validate_name

log = logging.getLogger(__name__)

# Resource types (ConfigResource.Type), config sources (DescribeConfigsResponse.ConfigSource), config types.
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
SOURCE_TOPIC_CONFIG = 1
SOURCE_STATIC_BROKER_CONFIG = 4
SOURCE_DEFAULT_CONFIG = 5
TYPE_BOOLEAN, TYPE_STRING, TYPE_INT, TYPE_LONG, TYPE_DOUBLE, TYPE_LIST = 1, 2, 3, 5, 6, 7
# IncrementalAlterConfigs operations.
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3

# A sanity bound on partitions per topic (Kafka has none, but every Metadata response lists them all).
MAX_PARTITIONS = 100_000

# Type, broker-level synonym and documentation of the topic configs the catalog supports.
CONFIG_INFO: dict[str, tuple[int, str, str]] = {
    "retention.ms": (TYPE_LONG, "log.retention.ms",
                     "How long records are kept before retention may move the log start offset past them; "
                     "-1 keeps them forever."),
    "retention.bytes": (TYPE_LONG, "log.retention.bytes",
                        "How large a partition may grow before retention may remove its oldest records; -1 is no "
                        "limit."),
    "max.message.bytes": (TYPE_INT, "message.max.bytes", "The largest record batch a producer may send, in bytes."),
    "cleanup.policy": (TYPE_LIST, "log.cleanup.policy",
                       "delete: old records are removed by retention; compact: only the latest record of each key "
                       "is kept (records need a key); compact,delete: both."),
    "compression.type": (TYPE_STRING, "compression.type",
                         "The codec batches are stored with: uncompressed, gzip, snappy, lz4 or zstd (a batch that "
                         "comes with another codec is recompressed), or producer (stored as the producer sent it)."),
    "delete.retention.ms": (TYPE_LONG, "log.cleaner.delete.retention.ms",
                            "How long a tombstone (a null value) of a compacted topic stays readable after the "
                            "cleaner passed it, so that consumers see the delete."),
    "min.compaction.lag.ms": (TYPE_LONG, "log.cleaner.min.compaction.lag.ms",
                              "How long a record stays uncompacted at least (a compacted topic)."),
    "max.compaction.lag.ms": (TYPE_LONG, "log.cleaner.max.compaction.lag.ms",
                              "How long a record may stay uncompacted at most (a compacted topic): past it, the "
                              "partition is cleaned whatever its dirty ratio."),
    "segment.bytes": (TYPE_INT, "log.segment.bytes",
                      "Accepted for compatibility, no effect: Dray has no log segments (the log is WAL objects, then "
                      "Parquet files)."),
    "segment.ms": (TYPE_LONG, "log.roll.ms",
                   "Accepted for compatibility, no effect: Dray has no log segments (the log is WAL objects, then "
                   "Parquet files)."),
    "min.cleanable.dirty.ratio": (TYPE_DOUBLE, "log.cleaner.min.cleanable.ratio",
                                  "The share of a compacted partition's log not cleaned yet above which the "
                                  "cleaner cleans it."),
}
# Kafka topic configs whose behaviour is fixed in Dray: described read-only; setting them to their one value is
# accepted (and not stored), any other value is INVALID_CONFIG.
FIXED_CONFIGS: dict[str, tuple[str, int, str, str]] = {
    "message.timestamp.type": ("CreateTime", TYPE_STRING, "log.message.timestamp.type",
                               "Record timestamps are the producer's; the broker never rewrites them."),
}


def _fixed() -> dict[str, tuple[str, int, str, str]]:
    return {k: v for k, v in FIXED_CONFIGS.items() if k not in TOPIC_CONFIGS}


def _error(e: Exception, what: str) -> tuple[ErrorCode, str]:
    if isinstance(e, TopicError):
        return ErrorCode(e.kafka_error), str(e)
    log.exception("%s failed", what)
    return ErrorCode.unknown_server_error, f"{what} failed: {e!r}"


def _without_fixed(configs: dict[str, str | None]) -> dict[str, str | None]:
    """Drop fixed configs given their one value (or reset); raise TopicError for another value."""
    fixed = _fixed()
    out = {}
    for name, value in configs.items():
        if name in fixed:
            if value is not None and value != fixed[name][0]:
                raise TopicError(f"{name} is fixed to {fixed[name][0]!r} in Dray: {fixed[name][3]}",
                                 ErrorCode.invalid_config.value)
            continue
        out[name] = value
    return out


# --- CreateTopics ---------------------------------------------------------------------------------------------


async def handle_create_topics(admin: AdminService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    counts = Counter(t.name for t in body.topics)
    results = []
    for t in body.topics:
        topic = None
        error, message = ErrorCode.none, None
        try:
            if counts[t.name] > 1:
                raise TopicError(f"topic {t.name!r} appears more than once in the request",
                                 ErrorCode.invalid_request.value)
            topic = await _create(admin, t, body.validate_only)
        except Exception as e:
            error, message = _error(e, f"creating topic {t.name!r}")
        results.append(make(
            M.CreatableTopicResult, name=t.name, topic_id=topic.id if topic else NULL_UUID, error_code=error,
            error_message=message, topic_config_error_code=0,
            num_partitions=topic.partitions if topic else -1,
            # One replica as Metadata reports: durability comes from the shared object store, not from copies.
            replication_factor=1 if topic else -1,
            configs=_created_configs(M, topic),
        ))
    return Response(make(M.CreateTopicsResponse, throttle_time=0, topics=tuple(results)))


def _created_configs(M: ModuleType, topic: Topic | None) -> tuple[Any, ...] | None:
    """v5+: the new topic's configs (null on error)."""
    if topic is None or not hasattr(M, "CreatableTopicConfigs"):
        return None
    return tuple(make(M.CreatableTopicConfigs, name=name, value=value, read_only=read_only, config_source=source,
                      is_sensitive=False) for name, value, read_only, source in _topic_config_values(topic))


async def _create(admin: AdminService, t: Any, validate_only: bool) -> Topic:
    validate_name(t.name)
    if t.assignments:
        # Placement means nothing with shared storage (any broker serves any partition), but the count is honoured.
        if t.num_partitions != -1 or t.replication_factor != -1:
            raise TopicError("both num_partitions or replication_factor and replica assignments were set; use one",
                             ErrorCode.invalid_request.value)
        indexes = sorted(a.partition_index for a in t.assignments)
        if indexes != list(range(len(indexes))):
            raise TopicError("replica assignments must cover partitions 0..n-1, each once",
                             ErrorCode.invalid_replica_assignment.value)
        if any(not a.broker_ids for a in t.assignments):
            raise TopicError("each replica assignment needs at least one broker id",
                             ErrorCode.invalid_replica_assignment.value)
        partitions = len(indexes)
    else:
        partitions = admin.settings.default_partitions if t.num_partitions == -1 else t.num_partitions
        # Replication factor: -1 (the default) or any positive value is accepted. Storage is shared, so there
        # are no replicas to place: every acknowledged record is already in the object store.
        if t.replication_factor == 0 or t.replication_factor < -1:
            raise TopicError("replication factor must be larger than 0, or -1 to use the default",
                             ErrorCode.invalid_replication_factor.value)
    if partitions <= 0:
        raise TopicError(f"number of partitions must be larger than 0, or -1 to use the default (got {partitions})",
                         ErrorCode.invalid_partitions.value)
    if partitions > MAX_PARTITIONS:
        raise TopicError(f"{partitions} partitions is more than the {MAX_PARTITIONS} a topic may have",
                         ErrorCode.invalid_partitions.value)
    configs: dict[str, str | None] = {}
    for c in t.configs:
        if c.value is None:
            raise TopicError(f"null value not supported for topic config {c.name}", ErrorCode.invalid_config.value)
        configs[c.name] = c.value
    configs = _without_fixed(configs)
    folded = t.name.replace(".", "_")
    for other in admin.topics.all():
        if other.name != t.name and other.name.replace(".", "_") == folded:
            raise TopicError(f"topic {t.name!r} collides with existing topic {other.name!r} ('.' and '_' collide)",
                             ErrorCode.invalid_topic_exception.value)
    return await admin.topics.create(t.name, partitions, configs, validate_only=validate_only)


# --- DeleteTopics ---------------------------------------------------------------------------------------------


async def handle_delete_topics(admin: AdminService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    if hasattr(body, "topics"):  # v6: by name or by id
        wanted = [(t.name, t.topic_id if t.topic_id != NULL_UUID else None) for t in body.topics]
    else:
        wanted = [(name, None) for name in body.topic_names]
    names = Counter(n for n, i in wanted if n is not None)
    ids = Counter(i for n, i in wanted if i is not None)
    results = []
    for name, topic_id in wanted:
        error, message = ErrorCode.none, None
        try:
            if name is not None and topic_id is not None:
                raise TopicError("give a topic name or a topic id, not both", ErrorCode.invalid_request.value)
            if name is None and topic_id is None:
                raise TopicError("a topic name or a topic id is needed", ErrorCode.invalid_request.value)
            if (name is not None and names[name] > 1) or (topic_id is not None and ids[topic_id] > 1):
                raise TopicError("topic appears more than once in the request", ErrorCode.invalid_request.value)
            if topic_id is not None:
                topic = admin.topics.by_id(topic_id)
                if topic is None:
                    raise TopicError(f"no topic has id {topic_id}", ErrorCode.unknown_topic_id.value)
                name = topic.name
            deleted = await admin.topics.delete(name)
            topic_id = deleted.id
            for i in range(deleted.partitions):
                admin.reader.forget(deleted.partition(i))
        except Exception as e:
            error, message = _error(e, f"deleting topic {name or topic_id}")
        results.append(make(M.DeletableTopicResult, name=name, topic_id=topic_id or NULL_UUID, error_code=error,
                            error_message=message))
    return Response(make(M.DeleteTopicsResponse, throttle_time=0, responses=tuple(results)))


# --- CreatePartitions -----------------------------------------------------------------------------------------


async def handle_create_partitions(admin: AdminService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    counts = Counter(t.name for t in body.topics)
    results = []
    for t in body.topics:
        error, message = ErrorCode.none, None
        try:
            if counts[t.name] > 1:
                raise TopicError(f"topic {t.name!r} appears more than once in the request",
                                 ErrorCode.invalid_request.value)
            topic = await admin.topics.get(t.name)
            if topic is None:
                raise TopicError(f"topic {t.name!r} does not exist", ErrorCode.unknown_topic_or_partition.value)
            if t.count < topic.partitions:
                raise TopicError(f"topic {t.name!r} has {plural(topic.partitions, 'partition')}, more than the {t.count} asked "
                                 f"for: partitions cannot be removed", ErrorCode.invalid_partitions.value)
            if t.count == topic.partitions:
                raise TopicError(f"topic {t.name!r} already has {plural(t.count, 'partition')}",
                                 ErrorCode.invalid_partitions.value)
            if t.count > MAX_PARTITIONS:
                raise TopicError(f"{t.count} partitions is more than the {MAX_PARTITIONS} a topic may have",
                                 ErrorCode.invalid_partitions.value)
            if t.assignments is not None and len(t.assignments) != t.count - topic.partitions:
                raise TopicError(f"{len(t.assignments)} assignments given for {t.count - topic.partitions} new "
                                 f"partitions", ErrorCode.invalid_replica_assignment.value)
            await admin.topics.add_partitions(t.name, t.count, validate_only=body.validate_only)
        except Exception as e:
            error, message = _error(e, f"adding partitions to {t.name!r}")
        results.append(make(M.CreatePartitionsTopicResult, name=t.name, error_code=error, error_message=message))
    return Response(make(M.CreatePartitionsResponse, throttle_time=0, results=tuple(results)))


# --- DescribeConfigs ------------------------------------------------------------------------------------------


def _topic_config_values(topic: Topic | None) -> list[tuple[str, str | None, bool, int]]:
    """(name, value, read_only, source) of every topic config."""
    if topic is None:
        return []
    out: list[tuple[str, str | None, bool, int]] = []
    for name, spec in TOPIC_CONFIGS.items():
        if name in topic.configs:
            out.append((name, topic.configs[name], False, SOURCE_TOPIC_CONFIG))
        else:
            out.append((name, spec.default, False, SOURCE_DEFAULT_CONFIG))
    for name, (value, _type, _synonym, _doc) in _fixed().items():
        out.append((name, value, True, SOURCE_DEFAULT_CONFIG))
    return out


def _topic_config_entries(topic: Topic) -> list[dict[str, Any]]:
    fixed = _fixed()
    entries = []
    for name, value, read_only, source in _topic_config_values(topic):
        doc: str | None
        if name in fixed:
            _, config_type, synonym, doc = fixed[name]
            default = fixed[name][0]
        else:
            config_type, synonym, doc = CONFIG_INFO.get(
                name, (TYPE_LONG if TOPIC_CONFIGS[name].kind is int else TYPE_STRING, name, None))
            default = TOPIC_CONFIGS[name].default
        synonyms = []
        if source == SOURCE_TOPIC_CONFIG:
            synonyms.append((name, value, SOURCE_TOPIC_CONFIG))
        synonyms.append((synonym, default, SOURCE_DEFAULT_CONFIG))
        entries.append(dict(name=name, value=value, read_only=read_only, config_source=source, is_sensitive=False,
                            synonyms=synonyms, config_type=config_type, documentation=doc))
    return entries


def _broker_config_entries(admin: AdminService) -> list[dict[str, Any]]:
    s = admin.settings
    explicit = s.model_fields_set
    me = admin.cluster.registry.me

    def entry(name: str, value: object, field: str, config_type: int, doc: str) -> dict[str, Any]:
        source = SOURCE_STATIC_BROKER_CONFIG if field in explicit else SOURCE_DEFAULT_CONFIG
        return dict(name=name, value=None if value is None else str(value), read_only=True, config_source=source,
                    is_sensitive=False, synonyms=[(name, None if value is None else str(value), source)],
                    config_type=config_type, documentation=doc)

    def flag(b: bool) -> str:
        return "true" if b else "false"

    return [
        entry("broker.id", admin.cluster.broker_id, "broker_id", TYPE_INT,
              "This broker's id (allocated when not set)."),
        entry("broker.rack", s.zone, "zone", TYPE_STRING, "The availability zone of this broker."),
        entry("listeners", ",".join(str(listener) for listener in s.listeners), "listen", TYPE_STRING,
              "Where the Kafka listeners bind."),
        entry("advertised.listeners", ",".join(f"{name}://{host}:{port}" for name, host, port in me.listeners),
              "advertise", TYPE_STRING, "Where clients of each listener are told to connect."),
        entry("num.partitions", s.default_partitions, "default_partitions", TYPE_INT,
              "Partitions of a topic created without a count (and of auto-created topics)."),
        entry("default.replication.factor", 1, "", TYPE_INT,
              "Always 1: records are durable in the shared object store, not in replicas."),
        entry("auto.create.topics.enable", flag(s.auto_create_topics), "auto_create_topics", TYPE_BOOLEAN,
              "Create unknown topics on Metadata and Produce requests."),
        entry("socket.request.max.bytes", s.max_request_bytes, "max_request_bytes", TYPE_INT,
              "The largest request this broker accepts."),
        entry("group.consumer.heartbeat.interval.ms", s.group_consumer_heartbeat_interval_ms,
              "group_consumer_heartbeat_interval_ms", TYPE_INT,
              "The heartbeat interval KIP-848 consumers are told to use."),
        entry("group.consumer.session.timeout.ms", s.group_consumer_session_timeout_ms,
              "group_consumer_session_timeout_ms", TYPE_INT,
              "How long a KIP-848 consumer stays in its group without a heartbeat."),
        entry("message.max.bytes", TOPIC_CONFIGS["max.message.bytes"].default, "", TYPE_INT,
              "Default of the topic config max.message.bytes."),
        entry("log.retention.ms", TOPIC_CONFIGS["retention.ms"].default, "", TYPE_LONG,
              "Default of the topic config retention.ms."),
        entry("log.retention.bytes", TOPIC_CONFIGS["retention.bytes"].default, "", TYPE_LONG,
              "Default of the topic config retention.bytes."),
        entry("log.cleanup.policy", TOPIC_CONFIGS["cleanup.policy"].default, "", TYPE_LIST,
              "Default of the topic config cleanup.policy."),
        entry("compression.type", TOPIC_CONFIGS["compression.type"].default, "", TYPE_STRING,
              "Default of the topic config compression.type."),
    ]


async def handle_describe_configs(admin: AdminService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    include_synonyms = getattr(body, "include_synonyms", False)
    include_docs = getattr(body, "include_documentation", False)
    results = []
    for r in body.resources:
        error, message, entries = ErrorCode.none, None, []
        try:
            entries = await _describe(admin, r.resource_type, r.resource_name)
        except Exception as e:
            error, message = _error(e, f"describing configs of {r.resource_name!r}")
        keys = set(r.configuration_keys) if r.configuration_keys else None
        configs = tuple(
            make(M.DescribeConfigsResourceResult, name=c["name"], value=c["value"], read_only=c["read_only"],
                 config_source=c["config_source"], is_sensitive=c["is_sensitive"],
                 synonyms=tuple(make(M.DescribeConfigsSynonym, name=n, value=v, source=s)
                                for n, v, s in c["synonyms"]) if include_synonyms else (),
                 config_type=c["config_type"], documentation=c["documentation"] if include_docs else None)
            for c in entries if keys is None or c["name"] in keys
        )
        results.append(make(M.DescribeConfigsResult, error_code=error, error_message=message,
                            resource_type=r.resource_type, resource_name=r.resource_name, configs=configs))
    return Response(make(M.DescribeConfigsResponse, throttle_time=0, results=tuple(results)))


async def _describe(admin: AdminService, resource_type: int, name: str) -> list[dict[str, Any]]:
    if resource_type == RESOURCE_TOPIC:
        validate_name(name)
        topic = await admin.topics.get(name)
        if topic is None:
            raise TopicError(f"topic {name!r} does not exist", ErrorCode.unknown_topic_or_partition.value)
        return _topic_config_entries(topic)
    if resource_type == RESOURCE_BROKER:
        if name == "":
            return []  # cluster-wide dynamic broker defaults: there are none
        if name != str(admin.cluster.broker_id):
            raise TopicError(f"unexpected broker id {name!r}: this is broker {admin.cluster.broker_id} (or use '')",
                             ErrorCode.invalid_request.value)
        return _broker_config_entries(admin)
    raise TopicError(f"config resource type {resource_type} is not supported (topics: 2, brokers: 4)",
                     ErrorCode.invalid_request.value)


# --- AlterConfigs and IncrementalAlterConfigs -----------------------------------------------------------------


async def handle_alter_configs(admin: AdminService, ctx: RequestContext, req: Request) -> Response:
    return await _alter(admin, req, incremental=False)


async def handle_incremental_alter_configs(admin: AdminService, ctx: RequestContext, req: Request) -> Response:
    return await _alter(admin, req, incremental=True)


async def _alter(admin: AdminService, req: Request, *, incremental: bool) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    counts = Counter((r.resource_type, r.resource_name) for r in body.resources)
    results = []
    for r in body.resources:
        error, message = ErrorCode.none, None
        try:
            if counts[(r.resource_type, r.resource_name)] > 1:
                raise TopicError("resource appears more than once in the request", ErrorCode.invalid_request.value)
            await _alter_one(admin, r, incremental, body.validate_only)
        except Exception as e:
            error, message = _error(e, f"altering configs of {r.resource_name!r}")
        results.append(make(M.AlterConfigsResourceResponse, error_code=error, error_message=message,
                            resource_type=r.resource_type, resource_name=r.resource_name))
    return Response(make(M.IncrementalAlterConfigsResponse if incremental else M.AlterConfigsResponse,
                         throttle_time=0, responses=tuple(results)))


async def _alter_one(admin: AdminService, r: Any, incremental: bool, validate_only: bool) -> None:
    if r.resource_type == RESOURCE_BROKER:
        if r.configs:
            raise TopicError("broker configs are read-only in Dray: set them in the broker's settings (flags, "
                             "DRAY_* environment or the YAML file) and restart", ErrorCode.invalid_config.value)
        return
    if r.resource_type != RESOURCE_TOPIC:
        raise TopicError(f"config resource type {r.resource_type} is not supported (topics: 2, brokers: 4)",
                         ErrorCode.invalid_request.value)
    validate_name(r.resource_name)
    # As Kafka: the topic must exist, then the configs must be valid.
    topic = await admin.topics.get(r.resource_name)
    if topic is None:
        raise TopicError(f"topic {r.resource_name!r} does not exist", ErrorCode.unknown_topic_or_partition.value)
    changes: dict[str, str | None] = {}
    if incremental:
        names = Counter(c.name for c in r.configs)
        duplicated = sorted(n for n, k in names.items() if k > 1)
        if duplicated:
            raise TopicError(f"config keys given more than once: {', '.join(duplicated)}",
                             ErrorCode.invalid_request.value)
        for c in r.configs:
            if c.config_operation == OP_SET:
                if c.value is None:
                    raise TopicError(f"null value not supported for SET of {c.name}", ErrorCode.invalid_request.value)
                changes[c.name] = c.value
            elif c.config_operation == OP_DELETE:
                changes[c.name] = None
            elif c.config_operation in (OP_APPEND, OP_SUBTRACT) and c.name in TOPIC_CONFIGS \
                    and TOPIC_CONFIGS[c.name].kind is list:
                items = [i.strip() for i in topic.config(c.name).split(",") if i.strip()]
                given = [i.strip() for i in (c.value or "").split(",") if i.strip()]
                if c.config_operation == OP_APPEND:
                    items += [i for i in given if i not in items]
                else:
                    items = [i for i in items if i not in given]
                changes[c.name] = ",".join(items)
            elif c.config_operation in (OP_APPEND, OP_SUBTRACT):
                raise TopicError(f"APPEND and SUBTRACT apply to list configs only; {c.name} holds a single value "
                                 f"here (use SET)", ErrorCode.invalid_config.value)
            else:
                raise TopicError(f"unknown config operation {c.config_operation}", ErrorCode.invalid_request.value)
    else:
        for c in r.configs:
            changes[c.name] = c.value
    changes = _without_fixed(changes)
    validate_configs(changes)
    await admin.topics.set_configs(r.resource_name, changes, replace=not incremental, validate_only=validate_only)
