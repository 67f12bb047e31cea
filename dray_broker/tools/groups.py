"""`dray groups list|describe|delete|reset-offsets`: consumer groups through the Kafka admin API."""

from __future__ import annotations

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec

from dray_broker.tools.client import (
    ToolError,
    admin_client,
    command,
    connection_flags,
    kafka_error,
    list_offsets,
    log_offsets,
    parse_timestamp,
    require_topic,
    wait,
)
from dray_broker.tools.output import note, plural, print_fields, print_json, print_table

# Kafka's names for group states (as kafka-consumer-groups.sh prints them).
STATES = {
    ConsumerGroupState.UNKNOWN: "Unknown",
    ConsumerGroupState.PREPARING_REBALANCING: "PreparingRebalance",
    ConsumerGroupState.COMPLETING_REBALANCING: "CompletingRebalance",
    ConsumerGroupState.STABLE: "Stable",
    ConsumerGroupState.DEAD: "Dead",
    ConsumerGroupState.EMPTY: "Empty",
}


def _state(state) -> str:
    return STATES.get(state, getattr(state, "name", str(state)).title())


def _type(kind) -> str:
    name = getattr(kind, "name", str(kind)).lower()
    return "-" if name == "unknown" else name


def register(sub) -> None:
    common = connection_flags()
    groups = sub.add_parser("groups", aliases=["group"], help="list, describe, delete consumer groups; reset their "
                                                             "offsets")
    gsub = groups.add_subparsers(dest="groups_command", required=True, metavar="COMMAND")

    p = gsub.add_parser("list", parents=[common], help="list consumer groups")
    p.set_defaults(func=cmd_list)

    p = gsub.add_parser("describe", parents=[common],
                        help="state, members, committed offsets and lag of consumer groups")
    p.add_argument("groups", nargs="+", metavar="GROUP")
    p.set_defaults(func=cmd_describe)

    p = gsub.add_parser("delete", parents=[common], help="delete consumer groups (with no members) and their offsets")
    p.add_argument("groups", nargs="+", metavar="GROUP")
    p.set_defaults(func=cmd_delete)

    p = gsub.add_parser("reset-offsets", parents=[common],
                        help="plan, or with --execute make, new committed offsets for a group with no members",
                        description="Show the offsets a group would start from (a plan, as kafka-consumer-groups.sh "
                                    "--dry-run does); with --execute, commit them. The group must exist and have no "
                                    "members.")
    p.add_argument("--group", "-G", required=True)
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument("--topic", "-t", action="append", metavar="TOPIC", help="reset this topic (repeatable)")
    scope.add_argument("--all-topics", action="store_true", help="every topic the group has committed offsets for")
    p.add_argument("--partition", "-p", type=int, action="append", default=None,
                   help="only this partition of the topics (repeatable; default: all)")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="to the log start offset")
    to.add_argument("--to-latest", action="store_true", help="to the log end offset")
    to.add_argument("--to-offset", type=int, metavar="N", help="to offset N (kept within start..end)")
    to.add_argument("--shift-by", type=int, metavar="N", help="by N (negative: back) from the committed offset "
                                                              "(kept within start..end)")
    to.add_argument("--to-timestamp", "--to-datetime", metavar="MS|ISO8601",
                    help="to the first record at or after this time (the end if there is none)")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--dry-run", action="store_true", help="show the new offsets, change nothing (the default)")
    run.add_argument("--execute", action="store_true", help="reset the offsets (without it, only the plan is shown)")
    p.set_defaults(func=cmd_reset_offsets)


# --- list -------------------------------------------------------------------------------------------------------


@command
def cmd_list(args) -> int:
    admin = admin_client(args)
    result = wait(admin.list_consumer_groups(request_timeout=args.timeout), args, "cannot list consumer groups")
    for err in result.errors or []:
        note(f"dray: warning: {err}")
    rows = sorted((g.group_id, _state(g.state), _type(g.type)) for g in result.valid)
    if args.json:
        print_json([{"group": g, "state": s, "type": t} for g, s, t in rows])
    else:
        print_table(["group", "state", "type"], rows)
    return 0


# --- describe ---------------------------------------------------------------------------------------------------


def committed_offsets(admin, args, group: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> committed offset, for every partition the group committed."""
    (future,) = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                  request_timeout=args.timeout).values()
    result = wait(future, args, f"cannot fetch the offsets of group {group!r}")
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or [] if tp.offset >= 0}


def describe_group(admin, args, group: str, description) -> dict:
    committed = committed_offsets(admin, args, group)
    owner: dict[tuple[str, int], str] = {}
    members = []
    for m in description.members:
        assignment = [(tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else [])]
        for tp in assignment:
            owner[tp] = m.member_id
        members.append({"member_id": m.member_id, "client_id": m.client_id, "host": m.host,
                        "instance_id": m.group_instance_id,
                        "assignment": [{"topic": t, "partition": p} for t, p in sorted(assignment)]})
    partitions = sorted(set(committed) | set(owner))
    ends = log_offsets(admin, args, partitions) if partitions else {}
    offsets = []
    for tp in partitions:
        end = ends[tp][1]
        done = committed.get(tp)
        offsets.append({"topic": tp[0], "partition": tp[1], "committed": done, "end_offset": end,
                        "lag": max(0, end - done) if done is not None else None, "member_id": owner.get(tp)})
    c = description.coordinator
    return {
        "group": group,
        "state": _state(description.state),
        "type": _type(description.type),
        "assignor": description.partition_assignor or None,
        "coordinator": {"id": c.id, "host": c.host, "port": c.port} if c is not None else None,
        "members": members,
        "offsets": offsets,
    }


@command
def cmd_describe(args) -> int:
    admin = admin_client(args)
    futures = admin.describe_consumer_groups(list(dict.fromkeys(args.groups)), request_timeout=args.timeout)
    docs = []
    for group, future in futures.items():
        doc = describe_group(admin, args, group, wait(future, args, f"cannot describe group {group!r}"))
        if doc["state"] in ("Dead", "Unknown") and not doc["members"] and not doc["offsets"]:
            raise ToolError(f"consumer group {group!r} does not exist")
        docs.append(doc)
    if args.json:
        print_json(docs[0] if len(docs) == 1 else docs)
        return 0
    for i, doc in enumerate(docs):
        if i:
            print()
        c = doc["coordinator"]
        print_fields([("group", doc["group"]), ("state", doc["state"]), ("type", doc["type"]),
                      ("assignor", doc["assignor"]),
                      ("coordinator", f"{c['id']} ({c['host']}:{c['port']})" if c else None),
                      ("members", len(doc["members"])),
                      ("total lag", sum(o["lag"] or 0 for o in doc["offsets"]))])
        if doc["offsets"]:
            print()
            print_table(["topic", "partition", "committed", "end offset", "lag", "member"],
                        [(o["topic"], o["partition"], o["committed"], o["end_offset"], o["lag"], o["member_id"])
                         for o in doc["offsets"]])
        if doc["members"]:
            print()
            print_table(["member", "client", "host", "partitions"],
                        [(m["member_id"], m["client_id"], m["host"],
                          ",".join(f"{a['topic']}[{a['partition']}]" for a in m["assignment"]))
                         for m in doc["members"]])
    return 0


# --- delete -----------------------------------------------------------------------------------------------------


@command
def cmd_delete(args) -> int:
    admin = admin_client(args)
    futures = admin.delete_consumer_groups(list(dict.fromkeys(args.groups)), request_timeout=args.timeout)
    deleted, failures = [], []
    for group, future in futures.items():
        try:
            future.result(timeout=args.timeout + 1)
            deleted.append(group)
        except KafkaException as e:
            code = e.args[0].code()
            if code == KafkaError.NON_EMPTY_GROUP:
                failures.append(f"consumer group {group!r} has active members: stop its consumers first")
            elif code == KafkaError.GROUP_ID_NOT_FOUND:
                failures.append(f"consumer group {group!r} does not exist")
            else:
                failures.append(str(kafka_error(e, f"cannot delete group {group!r}")))
    if args.json:
        print_json({"deleted": deleted, "errors": failures})
    else:
        for group in deleted:
            print(f"deleted consumer group {group}")
    for problem in failures:
        note(f"dray: {problem}")
    return 1 if failures else 0


# --- reset-offsets ----------------------------------------------------------------------------------------------


def _require_existing_group_without_members(admin, args, group: str, committed: dict) -> None:
    """Offsets are reset only for a group that exists (a typo must not create a group) and has no members."""
    (future,) = admin.describe_consumer_groups([group], request_timeout=args.timeout).values()
    description = wait(future, args, f"cannot describe group {group!r}")
    unknown = description.state in (ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN)
    if unknown and not description.members and not committed:
        raise ToolError(f"consumer group {group!r} does not exist (no members, no committed offsets): "
                        "`dray groups list` shows the groups")
    if description.members or not (unknown or description.state == ConsumerGroupState.EMPTY):
        n = len(description.members)
        raise ToolError(f"consumer group {group!r} is not empty ({_state(description.state)}, "
                        f"{plural(n, 'member')}): stop its consumers, then reset its offsets")


@command
def cmd_reset_offsets(args) -> int:
    to_timestamp = parse_timestamp(args.to_timestamp) if args.to_timestamp is not None else None
    admin = admin_client(args)
    committed = committed_offsets(admin, args, args.group)
    _require_existing_group_without_members(admin, args, args.group, committed)

    if args.all_topics:
        partitions = sorted(tp for tp in committed if args.partition is None or tp[1] in args.partition)
        if not partitions:
            raise ToolError(f"consumer group {args.group!r} has no committed offsets: name the topics with --topic")
    else:
        partitions = []
        for topic in dict.fromkeys(args.topic):
            md = require_topic(admin, args, topic)
            chosen = sorted(md.partitions) if args.partition is None else sorted(set(args.partition))
            missing = [p for p in chosen if p not in md.partitions]
            if missing:
                raise ToolError(f"topic {topic!r} has {plural(len(md.partitions), 'partition')}: there is no partition "
                                f"{', '.join(map(str, missing))}")
            partitions += [(topic, p) for p in chosen]

    bounds = log_offsets(admin, args, partitions)
    if args.to_earliest:
        targets = {tp: bounds[tp][0] for tp in partitions}
    elif args.to_latest:
        targets = {tp: bounds[tp][1] for tp in partitions}
    elif args.to_offset is not None:
        targets = {tp: min(max(args.to_offset, bounds[tp][0]), bounds[tp][1]) for tp in partitions}
    elif args.shift_by is not None:
        without = [f"{t}[{p}]" for t, p in partitions if (t, p) not in committed]
        if without:
            raise ToolError(f"cannot shift the offsets of group {args.group!r}: no committed offset on "
                            f"{', '.join(without)} (use --to-earliest, --to-latest, --to-offset or --to-timestamp)")
        targets = {tp: min(max(committed[tp] + args.shift_by, bounds[tp][0]), bounds[tp][1]) for tp in partitions}
    else:
        found = list_offsets(admin, args, partitions, OffsetSpec.for_timestamp(to_timestamp))
        targets = {tp: found[tp] if found[tp] >= 0 else bounds[tp][1] for tp in partitions}

    if args.execute:
        request = ConsumerGroupTopicPartitions(args.group, [TopicPartition(t, p, o) for (t, p), o in targets.items()])
        (future,) = admin.alter_consumer_group_offsets([request], request_timeout=args.timeout).values()
        try:
            result = future.result(timeout=args.timeout + 1)
        except KafkaException as e:
            if e.args[0].code() in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION,
                                    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.NON_EMPTY_GROUP):
                raise ToolError(f"consumer group {args.group!r} is not empty: stop its consumers, then reset its "
                                "offsets") from None
            raise kafka_error(e, f"cannot reset the offsets of group {args.group!r}") from None
        problems = [f"{tp.topic}[{tp.partition}]: {tp.error.str()}" for tp in result.topic_partitions or []
                    if tp.error is not None]
        if problems:
            raise ToolError(f"cannot reset some offsets of group {args.group!r}: {'; '.join(problems)}")

    rows = [{"topic": t, "partition": p, "current": committed.get((t, p)), "offset": targets[(t, p)]}
            for t, p in partitions]
    if args.json:
        print_json({"group": args.group, "executed": args.execute, "offsets": rows})
        return 0
    print_table(["group", "topic", "partition", "current offset", "new offset"],
                [(args.group, r["topic"], r["partition"], r["current"], r["offset"]) for r in rows])
    if not args.execute:
        note("plan only, nothing changed: add --execute to reset the offsets")
    return 0
