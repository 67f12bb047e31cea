"""`dray topics create|list|describe|delete|alter`: topic administration through the Kafka admin API."""

from __future__ import annotations

import uuid

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from dray_broker.tools import records
from dray_broker.tools.client import (
    EXIT_USAGE,
    ToolError,
    admin_client,
    command,
    connection_flags,
    kafka_error,
    key_value,
    log_offsets,
    require_topic,
    topic_metadata,
    wait,
)
from dray_broker.tools.output import note, plural, print_fields, print_json, print_table

_SOURCES = {
    ConfigSource.DYNAMIC_TOPIC_CONFIG.value: "topic",
    ConfigSource.DEFAULT_CONFIG.value: "default",
    ConfigSource.STATIC_BROKER_CONFIG.value: "broker",
    ConfigSource.DYNAMIC_BROKER_CONFIG.value: "broker",
    ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value: "cluster",
}


def register(sub) -> None:
    common = connection_flags()
    topics = sub.add_parser("topics", aliases=["topic"], help="create, list, describe, alter and delete topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True, metavar="COMMAND")

    p = tsub.add_parser("create", parents=[common], help="create a topic")
    p.add_argument("topic")
    p.add_argument("--partitions", "-p", type=int, default=None, help="partitions (default: the broker's)")
    p.add_argument("--replication-factor", "-r", type=int, default=None,
                   help="accepted for compatibility: storage is shared, every broker serves every partition")
    p.add_argument("--config", "-c", action="append", default=[], metavar="KEY=VALUE",
                   help="a topic config, e.g. retention.ms=86400000 (repeatable)")
    p.add_argument("--if-not-exists", action="store_true", help="succeed if the topic exists already")
    p.set_defaults(func=cmd_create)

    p = tsub.add_parser("list", parents=[common], help="list topics")
    p.set_defaults(func=cmd_list)

    p = tsub.add_parser("describe", parents=[common],
                        help="partitions (with log start and end offsets) and configs of topics")
    p.add_argument("topics", nargs="*", metavar="TOPIC", help="topics to describe (default: all)")
    p.set_defaults(func=cmd_describe)

    p = tsub.add_parser("delete", parents=[common], help="delete topics and their records")
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.add_argument("--if-exists", action="store_true", help="succeed for topics that do not exist")
    p.set_defaults(func=cmd_delete)

    p = tsub.add_parser("alter", parents=[common], help="add partitions or change configs of a topic")
    p.add_argument("topic")
    p.add_argument("--partitions", "-p", type=int, default=None, help="the new (larger) partition count")
    p.add_argument("--config", "-c", action="append", default=[], metavar="KEY=VALUE",
                   help="set a topic config (repeatable)")
    p.add_argument("--delete-config", action="append", default=[], metavar="KEY",
                   help="reset a topic config to its default (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="let the broker validate the change, change nothing")
    p.set_defaults(func=cmd_alter)

    # rpk's spelling: `rpk topic produce|consume`.
    records.add_produce(tsub)
    records.add_consume(tsub)


def _uuid(topic_id) -> str | None:
    """A Kafka topic id as the UUID the metadata store uses (librdkafka prints base64)."""
    if topic_id is None:
        return None
    mask = (1 << 64) - 1
    value = ((topic_id.get_most_significant_bits() & mask) << 64) | (topic_id.get_least_significant_bits() & mask)
    return str(uuid.UUID(int=value))


def _configs(pairs: list[str]) -> dict[str, str]:
    return dict(key_value(c, "--config KEY=VALUE") for c in pairs)


# --- create -----------------------------------------------------------------------------------------------------


@command
def cmd_create(args) -> int:
    admin = admin_client(args)
    configs = _configs(args.config)
    new = NewTopic(args.topic, num_partitions=args.partitions if args.partitions is not None else -1,
                   replication_factor=args.replication_factor if args.replication_factor is not None else -1,
                   config=configs)
    (future,) = admin.create_topics([new], request_timeout=args.timeout, operation_timeout=args.timeout).values()
    created = True
    try:
        future.result(timeout=args.timeout + 1)
    except KafkaException as e:
        exists = e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
        if exists and not args.if_not_exists:
            raise ToolError(f"topic {args.topic!r} exists already (--if-not-exists makes that a success)") from None
        if not exists:
            raise kafka_error(e, f"cannot create topic {args.topic!r}") from None
        created = False
    partitions = len(require_topic(admin, args, args.topic).partitions)
    if args.json:
        print_json({"topic": args.topic, "created": created, "partitions": partitions, "configs": configs})
    elif created:
        print(f"created topic {args.topic} with {plural(partitions, 'partition')}")
    else:
        print(f"topic {args.topic} exists already ({plural(partitions, 'partition')})")
    return 0


# --- list -------------------------------------------------------------------------------------------------------


@command
def cmd_list(args) -> int:
    admin = admin_client(args)
    topics = topic_metadata(admin, args)
    rows = sorted((name, len(md.partitions)) for name, md in topics.items())
    if args.json:
        print_json([{"topic": name, "partitions": n} for name, n in rows])
    else:
        print_table(["topic", "partitions"], rows)
    return 0


# --- describe ---------------------------------------------------------------------------------------------------


def describe_topics(admin, args, names: list[str]) -> list[dict]:
    """Each topic as a document: id, partitions (leader, replicas, ISR, log start/end offsets) and configs."""
    futures = admin.describe_topics(TopicCollection(names), request_timeout=args.timeout)
    descriptions = {name: wait(f, args, f"cannot describe topic {name!r}") for name, f in futures.items()}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    config_futures = admin.describe_configs(resources, request_timeout=args.timeout)
    configs = {res.name: wait(f, args, f"cannot describe the configs of topic {res.name!r}")
               for res, f in config_futures.items()}
    partitions = [(name, p.id) for name in names for p in descriptions[name].partitions]
    offsets = log_offsets(admin, args, partitions)

    docs = []
    for name in names:
        d = descriptions[name]
        parts = []
        for p in sorted(d.partitions, key=lambda p: p.id):
            start, end = offsets[(name, p.id)]
            parts.append({"partition": p.id, "leader": p.leader.id if p.leader else None,
                          "replicas": [n.id for n in p.replicas], "isr": [n.id for n in p.isr],
                          "start_offset": start, "end_offset": end})
        docs.append({
            "topic": name,
            "id": _uuid(d.topic_id),
            "partition_count": len(parts),
            "partitions": parts,
            "configs": {
                key: {"value": e.value, "source": _SOURCES.get(e.source, ConfigSource(e.source).name.lower()),
                      "default": e.is_default, "read_only": e.is_read_only}
                for key, e in sorted(configs[name].items())
            },
        })
    return docs


@command
def cmd_describe(args) -> int:
    admin = admin_client(args)
    known = topic_metadata(admin, args)
    names = args.topics or sorted(known)
    for name in names:
        if name not in known:
            raise ToolError(f"topic {name!r} does not exist")
    docs = describe_topics(admin, args, names)
    if args.json:
        print_json(docs if not args.topics or len(args.topics) > 1 else docs[0])
        return 0
    for i, doc in enumerate(docs):
        if i:
            print()
        records = sum(p["end_offset"] - p["start_offset"] for p in doc["partitions"])
        print_fields([("topic", doc["topic"]), ("id", doc["id"]), ("partitions", doc["partition_count"]),
                      ("records", records)])
        print()
        print_table(["config", "value", "source"],
                    [(k, c["value"], c["source"] + (", read-only" if c["read_only"] else ""))
                     for k, c in doc["configs"].items()])
        print()
        print_table(["partition", "leader", "replicas", "isr", "start offset", "end offset"],
                    [(p["partition"], p["leader"], ",".join(map(str, p["replicas"])),
                      ",".join(map(str, p["isr"])), p["start_offset"], p["end_offset"])
                     for p in doc["partitions"]])
    return 0


# --- delete -----------------------------------------------------------------------------------------------------


@command
def cmd_delete(args) -> int:
    admin = admin_client(args)
    futures = admin.delete_topics(list(dict.fromkeys(args.topics)), request_timeout=args.timeout,
                                  operation_timeout=args.timeout)
    deleted, missing, failures = [], [], []
    for name, future in futures.items():
        try:
            future.result(timeout=args.timeout + 1)
            deleted.append(name)
        except KafkaException as e:
            if e.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                missing.append(name)
                if not args.if_exists:
                    failures.append(f"topic {name!r} does not exist")
            else:
                failures.append(str(kafka_error(e, f"cannot delete topic {name!r}")))
    if args.json:
        print_json({"deleted": deleted, "missing": missing, "errors": failures})
    else:
        for name in deleted:
            print(f"deleted topic {name}")
    for problem in failures:
        note(f"dray: {problem}")
    return 1 if failures else 0


# --- alter ------------------------------------------------------------------------------------------------------


@command
def cmd_alter(args) -> int:
    if args.partitions is None and not args.config and not args.delete_config:
        raise ToolError("nothing to alter: give --partitions N, --config KEY=VALUE or --delete-config KEY", EXIT_USAGE)
    admin = admin_client(args)
    current = len(require_topic(admin, args, args.topic).partitions)
    changes: dict = {"topic": args.topic, "dry_run": args.dry_run}

    if args.partitions is not None and args.partitions != current:
        if args.partitions < current:
            raise ToolError(f"topic {args.topic!r} has {plural(current, 'partition')}: partitions can be added, not removed")
        (future,) = admin.create_partitions([NewPartitions(args.topic, args.partitions)], validate_only=args.dry_run,
                                            request_timeout=args.timeout, operation_timeout=args.timeout).values()
        wait(future, args, f"cannot add partitions to topic {args.topic!r}")
        changes["partitions"] = {"before": current, "after": args.partitions}

    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in _configs(args.config).items()]
    entries += [ConfigEntry(k, None, incremental_operation=AlterConfigOpType.DELETE) for k in args.delete_config]
    if entries:
        resource = ConfigResource(ResourceType.TOPIC, args.topic, incremental_configs=entries)
        (future,) = admin.incremental_alter_configs([resource], validate_only=args.dry_run,
                                                    request_timeout=args.timeout).values()
        wait(future, args, f"cannot alter the configs of topic {args.topic!r}")
        changes["set"] = _configs(args.config)
        changes["deleted"] = list(args.delete_config)

    if args.json:
        print_json(changes)
        return 0
    verb = "would alter" if args.dry_run else "altered"
    said = []
    if "partitions" in changes:
        said.append(f"partitions {current} -> {args.partitions}")
    said += [f"{k}={v}" for k, v in changes.get("set", {}).items()]
    said += [f"{k} reset to default" for k in changes.get("deleted", [])]
    print(f"{verb} topic {args.topic}: {', '.join(said) if said else 'no change'}")
    return 0
