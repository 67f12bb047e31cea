"""`dray acls create|list|delete`: the cluster's ACLs through the Kafka admin API, with rpk's flags:

    dray acls create --allow-principal User:alice --operation read,describe --topic orders --topic payments
    dray acls create --deny-principal User:bob --operation all --topic tmp- --resource-pattern-type prefixed
    dray acls list --topic orders                  (the ACLs that apply to topic orders: pattern type MATCH)
    dray acls delete --allow-principal User:alice --operation any --topic orders

create makes one ACL per principal x host x operation x resource; list and delete take the same flags as filters
(no resource flag: every resource; no principal: every principal; pattern type any by default for delete, match for
list when a resource name is given).
"""

from __future__ import annotations

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from dray_broker.tools.client import EXIT_USAGE, ToolError, admin_client, command, connection_flags, wait
from dray_broker.tools.output import note, plural, print_json, print_table

CLUSTER = "kafka-cluster"
_PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED,
             "match": ResourcePatternType.MATCH, "any": ResourcePatternType.ANY}


def register(sub) -> None:
    common = connection_flags()
    acls = sub.add_parser("acls", aliases=["acl"], help="create, list, delete ACLs (brokers run with --acls)")
    asub = acls.add_subparsers(dest="acls_command", required=True, metavar="COMMAND")
    for name, func, text in (("create", cmd_create, "create ACLs"),
                             ("list", cmd_list, "list the ACLs that match the flags"),
                             ("delete", cmd_delete, "delete the ACLs that match the flags")):
        p = asub.add_parser(name, aliases=["describe"] if name == "list" else [], parents=[common], help=text)
        _add_acl_flags(p, name)
        p.set_defaults(func=func)


def _add_acl_flags(p, command_name: str) -> None:
    g = p.add_argument_group("ACL")
    g.add_argument("--allow-principal", action="append", default=[], metavar="TYPE:NAME",
                   help="principal the ACL allows (User:alice, User:* for everyone; repeatable)")
    g.add_argument("--deny-principal", action="append", default=[], metavar="TYPE:NAME",
                   help="principal the ACL denies (repeatable)")
    g.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="host allowed principals connect from (default * = any; repeatable)")
    g.add_argument("--deny-host", action="append", default=[], metavar="HOST",
                   help="host denied principals connect from (default * = any; repeatable)")
    g.add_argument("--operation", "-o", action="append", default=[], metavar="OP[,OP...]",
                   help="all, read, write, create, delete, alter, describe, describe_configs, alter_configs, "
                        "cluster_action, idempotent_write" + (", any" if command_name != "create" else ""))
    r = p.add_argument_group("resources")
    r.add_argument("--topic", action="append", default=[], metavar="NAME", help="a topic (repeatable)")
    r.add_argument("--group", action="append", default=[], metavar="NAME", help="a consumer group (repeatable)")
    r.add_argument("--transactional-id", action="append", default=[], metavar="NAME",
                   help="a transactional id (repeatable)")
    r.add_argument("--cluster", action="store_true", help="the cluster")
    default = "literal" if command_name == "create" else ("match" if command_name == "list" else "any")
    choices = ["literal", "prefixed"] + (["match", "any"] if command_name != "create" else [])
    r.add_argument("--resource-pattern-type", choices=choices, default=default,
                   help=f"how resource names match (default {default})")
    if command_name == "delete":
        p.add_argument("--dry-run", action="store_true", help="show the ACLs that would be deleted, delete nothing")


def _operations(args, *, create: bool) -> list[AclOperation]:
    names = [n.strip() for text in args.operation for n in text.split(",") if n.strip()]
    if not names:
        if create:
            raise ToolError("give --operation (e.g. --operation read,describe)", EXIT_USAGE)
        return [AclOperation.ANY]
    ops = []
    for n in names:
        op = getattr(AclOperation, n.upper().replace("-", "_"), None)
        if op is None or op is AclOperation.UNKNOWN or (create and op is AclOperation.ANY):
            raise ToolError(f"unknown operation {n!r}", EXIT_USAGE)
        ops.append(op)
    return ops


def _resources(args) -> list[tuple[ResourceType, str | None]]:
    resources = ([(ResourceType.TOPIC, t) for t in args.topic] + [(ResourceType.GROUP, g) for g in args.group]
                 + [(ResourceType.TRANSACTIONAL_ID, t) for t in args.transactional_id])
    if args.cluster:
        resources.append((ResourceType.BROKER, CLUSTER))  # librdkafka names the cluster resource BROKER
    return resources


def _entries(args, *, create: bool) -> list[tuple[str | None, str | None, AclPermissionType]]:
    """(principal, host, permission) for each principal given; for filters, no principal = any."""
    entries = []
    for principals, hosts, permission in ((args.allow_principal, args.allow_host, AclPermissionType.ALLOW),
                                          (args.deny_principal, args.deny_host, AclPermissionType.DENY)):
        for principal in principals:
            if ":" not in principal:
                raise ToolError(f"{principal!r} is not a principal (TYPE:NAME, e.g. User:alice)", EXIT_USAGE)
            for host in hosts or (["*"] if create else [None]):
                entries.append((principal, host, permission))
    if not entries:
        if create:
            raise ToolError("give --allow-principal or --deny-principal", EXIT_USAGE)
        entries.append((None, None, AclPermissionType.ANY))
    return entries


@command
def cmd_create(args) -> int:
    resources = _resources(args)
    if not resources:
        raise ToolError("give a resource: --topic, --group, --transactional-id or --cluster", EXIT_USAGE)
    pattern = _PATTERNS[args.resource_pattern_type]
    bindings = [AclBinding(rt, name, pattern, principal, host, op, permission)
                for rt, name in resources for principal, host, permission in _entries(args, create=True)
                for op in _operations(args, create=True)]
    admin = admin_client(args)
    for binding, future in admin.create_acls(bindings, request_timeout=args.timeout).items():
        wait(future, args, f"cannot create the ACL {_describe(binding)}")
    rows = [_row(b) for b in bindings]
    if args.json:
        print_json([dict(zip(_HEADERS, r)) for r in rows])
    else:
        print_table(_HEADERS, rows)
        note(f"created {plural(len(bindings), 'ACL')}")
    return 0


def _filters(args) -> list[AclBindingFilter]:
    pattern = _PATTERNS[args.resource_pattern_type]
    resources = _resources(args) or [(ResourceType.ANY, None)]
    return [AclBindingFilter(rt, name, pattern if name is not None else ResourcePatternType.ANY, principal, host, op,
                             permission)
            for rt, name in resources for principal, host, permission in _entries(args, create=False)
            for op in _operations(args, create=False)]


@command
def cmd_list(args) -> int:
    admin = admin_client(args)
    found: dict[str, AclBinding] = {}
    for f in _filters(args):
        for b in wait(admin.describe_acls(f, request_timeout=args.timeout), args, "cannot list the ACLs"):
            found[_describe(b)] = b
    rows = sorted(_row(b) for b in found.values())
    if args.json:
        print_json([dict(zip(_HEADERS, r)) for r in rows])
    else:
        print_table(_HEADERS, rows)
    return 0


@command
def cmd_delete(args) -> int:
    admin = admin_client(args)
    filters = _filters(args)
    deleted: dict[str, AclBinding] = {}
    if args.dry_run:
        for f in filters:
            for b in wait(admin.describe_acls(f, request_timeout=args.timeout), args, "cannot list the ACLs"):
                deleted[_describe(b)] = b
    else:
        for f, future in admin.delete_acls(filters, request_timeout=args.timeout).items():
            for b in wait(future, args, "cannot delete the ACLs"):
                deleted[_describe(b)] = b
    rows = sorted(_row(b) for b in deleted.values())
    if args.json:
        print_json([dict(zip(_HEADERS, r)) for r in rows])
    else:
        print_table(_HEADERS, rows)
        note(f"{'would delete' if args.dry_run else 'deleted'} {plural(len(rows), 'ACL')}")
    return 0


_HEADERS = ["principal", "host", "resource-type", "resource-name", "resource-pattern-type", "operation",
            "permission"]


def _row(b: AclBinding) -> tuple[str, ...]:
    resource_type = "cluster" if b.restype is ResourceType.BROKER else b.restype.name.lower()
    return (b.principal, b.host, resource_type, b.name, b.resource_pattern_type.name.lower(),
            b.operation.name.lower(), b.permission_type.name.lower())


def _describe(b: AclBinding) -> str:
    return " ".join(_row(b))
