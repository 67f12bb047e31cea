"""Kafka's ACL model and authorizer (KIP-11 ACLs, KIP-290 prefixed patterns, KIP-430 authorized operations), with the
decision rules of Kafka's StandardAuthorizer (KRaft), kept in memory and indexed so a check never scans every ACL.

An ACL binding: a resource pattern (type, name, LITERAL or PREFIXED) and an entry (principal `Type:name`, host,
operation, ALLOW or DENY). A request to do `operation` on a resource (type, name) from (principal, host) is decided so:
1. super users (super.users) may do anything;
2. the ACLs that apply are those on the resource: LITERAL with the same name or the name `*`, and PREFIXED with a
   prefix of the name; an ACL matches when its principal is the request's or `User:*`, its host is the client's
   address or `*`, and its operation is the requested one or ALL; an ALLOW of READ, WRITE, DELETE or ALTER also
   allows DESCRIBE, and an ALLOW of ALTER_CONFIGS also allows DESCRIBE_CONFIGS;
3. a matching DENY wins over any ALLOW; a matching ALLOW allows;
4. with no ACL at all on the resource (for anyone), allow.everyone.if.no.acl.found decides (default: deny);
   otherwise deny.

The index: literal ACLs in a dict by (resource type, name) (the `*` name included); prefixed ACLs in a dict by
(resource type, prefix) with the sorted distinct prefix lengths, so the prefixes of a name that carry ACLs take one
lookup per distinct length; within a pattern, ACLs by principal. A check costs a few dict lookups and reads only the
ACLs of its principal and of User:*, however many ACLs the cluster has (bench/auth.py).

One deliberate difference: StandardAuthorizer does not apply `*` ACLs to a resource whose name starts with '*' (its
prefix walk skips them; such names are legal for groups and transactional ids), so there a `*` DENY does not deny
group "*x". Here `*` ACLs apply to every name. tests/unit/test_auth_kafka_oracle.py checks everything else against
Kafka's StandardAuthorizer.

Filters (DescribeAcls, DeleteAcls) follow Kafka's AclBindingFilter: null name/principal/host and ANY match anything;
pattern type MATCH matches the literal name, the `*` literal and every prefix of the name.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Self

from dray_broker.auth.principal import KafkaPrincipal


class _KafkaEnum(enum.IntEnum):
    """Kafka's wire codes; an unknown code reads as UNKNOWN, as Kafka's fromCode does."""

    @classmethod
    def _missing_(cls, value: object) -> Self:
        return cls(0)

    @classmethod
    def from_name(cls, name: str) -> Self:
        try:
            return cls[name.upper()]
        except KeyError:
            raise InvalidAcl(f"unknown {cls.__name__} {name!r}") from None


class ResourceType(_KafkaEnum):
    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(_KafkaEnum):
    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class Operation(_KafkaEnum):
    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14
    TWO_PHASE_COMMIT = 15


class Permission(_KafkaEnum):
    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


CLUSTER_NAME = "kafka-cluster"  # the one name of the CLUSTER resource
WILDCARD = "*"  # a LITERAL resource name, or a host, that matches any
WILDCARD_PRINCIPAL = "User:*"
AUTHORIZED_OPERATIONS_OMITTED = -(2**31)  # what Metadata/DescribeCluster/... answer when not asked for them

# The operations that exist for each resource type (Kafka's AclEntry.supportedOperations): the bits that an
# "authorized operations" field can have.
SUPPORTED_OPERATIONS: dict[ResourceType, frozenset[Operation]] = {
    ResourceType.TOPIC: frozenset({Operation.READ, Operation.WRITE, Operation.CREATE, Operation.DESCRIBE,
                                   Operation.DELETE, Operation.ALTER, Operation.DESCRIBE_CONFIGS,
                                   Operation.ALTER_CONFIGS}),
    ResourceType.GROUP: frozenset({Operation.READ, Operation.DESCRIBE, Operation.DELETE, Operation.DESCRIBE_CONFIGS,
                                   Operation.ALTER_CONFIGS}),
    ResourceType.CLUSTER: frozenset({Operation.CREATE, Operation.CLUSTER_ACTION, Operation.DESCRIBE_CONFIGS,
                                     Operation.ALTER_CONFIGS, Operation.IDEMPOTENT_WRITE, Operation.ALTER,
                                     Operation.DESCRIBE}),
    ResourceType.TRANSACTIONAL_ID: frozenset({Operation.DESCRIBE, Operation.WRITE, Operation.TWO_PHASE_COMMIT}),
    ResourceType.DELEGATION_TOKEN: frozenset({Operation.DESCRIBE}),
    ResourceType.USER: frozenset({Operation.CREATE_TOKENS, Operation.DESCRIBE_TOKENS}),
}

# An ALLOW of these also allows DESCRIBE / DESCRIBE_CONFIGS (a DENY implies nothing).
_IMPLIES_DESCRIBE = frozenset({Operation.DESCRIBE, Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER})
_IMPLIES_DESCRIBE_CONFIGS = frozenset({Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS})


class InvalidAcl(ValueError):
    """An ACL binding or filter Kafka refuses (INVALID_REQUEST), or a stored one that cannot be read."""


@dataclass(frozen=True, slots=True)
class AclBinding:
    resource_type: ResourceType
    name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: Operation
    permission: Permission

    def validate(self) -> None:
        """The checks Kafka makes before creating an ACL (AclControlManager.validateNewAcl, AclApis)."""
        if self.resource_type in (ResourceType.UNKNOWN, ResourceType.ANY):
            raise InvalidAcl(f"Invalid resourceType {self.resource_type.name}")
        if self.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
            raise InvalidAcl(f"Invalid patternType {self.pattern_type.name}")
        if self.operation in (Operation.UNKNOWN, Operation.ANY):
            raise InvalidAcl(f"Invalid operation {self.operation.name}")
        if self.permission not in (Permission.ALLOW, Permission.DENY):
            raise InvalidAcl(f"Invalid permissionType {self.permission.name}")
        if not self.name:
            raise InvalidAcl("Resource name should not be empty")
        if self.resource_type is ResourceType.CLUSTER and self.name != CLUSTER_NAME:
            raise InvalidAcl(f"The only valid name for the CLUSTER resource is {CLUSTER_NAME}")
        if ":" not in self.principal:
            raise InvalidAcl(f"Could not parse principal from `{self.principal}` (no colon is present separating the "
                             f"principal type from the principal name)")

    def to_json(self) -> bytes:
        """The stored form: stable JSON (sorted keys, no spaces, enum names)."""
        return json.dumps(
            {"resource_type": self.resource_type.name, "name": self.name, "pattern_type": self.pattern_type.name,
             "principal": self.principal, "host": self.host, "operation": self.operation.name,
             "permission": self.permission.name},
            sort_keys=True, separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> AclBinding:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidAcl(f"stored ACL is not JSON: {e}") from None
        fields = {"resource_type", "name", "pattern_type", "principal", "host", "operation", "permission"}
        if not isinstance(obj, dict) or set(obj) != fields or not all(isinstance(v, str) for v in obj.values()):
            raise InvalidAcl(f"stored ACL must be an object of strings with {sorted(fields)}")
        binding = cls(ResourceType.from_name(obj["resource_type"]), obj["name"],
                      PatternType.from_name(obj["pattern_type"]), obj["principal"], obj["host"],
                      Operation.from_name(obj["operation"]), Permission.from_name(obj["permission"]))
        binding.validate()
        return binding

    def stable_id(self) -> str:
        """A content hash: the same binding created through any broker gets the same id (creation is idempotent,
        as in Kafka, where creating an existing ACL changes nothing)."""
        return hashlib.sha256(self.to_json()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class AclBindingFilter:
    """DescribeAcls/DeleteAcls filter; None and ANY match anything."""

    resource_type: ResourceType = ResourceType.ANY
    name: str | None = None
    pattern_type: PatternType = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: Operation = Operation.ANY
    permission: Permission = Permission.ANY

    def validate(self) -> None:
        if self.resource_type is ResourceType.UNKNOWN or self.pattern_type is PatternType.UNKNOWN:
            raise InvalidAcl("Unknown patternFilter.")
        if self.operation is Operation.UNKNOWN or self.permission is Permission.UNKNOWN:
            raise InvalidAcl("Unknown entryFilter.")

    def matches(self, b: AclBinding) -> bool:
        return self._matches_pattern(b) and self._matches_entry(b)

    def _matches_pattern(self, b: AclBinding) -> bool:
        if self.resource_type is not ResourceType.ANY and self.resource_type is not b.resource_type:
            return False
        if self.pattern_type not in (PatternType.ANY, PatternType.MATCH) and self.pattern_type is not b.pattern_type:
            return False
        if self.name is None:
            return True
        if self.pattern_type is PatternType.ANY or self.pattern_type is b.pattern_type:
            return self.name == b.name
        # MATCH: the bindings that would apply to a resource of this name
        if b.pattern_type is PatternType.LITERAL:
            return self.name == b.name or b.name == WILDCARD
        return self.name.startswith(b.name)

    def _matches_entry(self, b: AclBinding) -> bool:
        return ((self.principal is None or self.principal == b.principal)
                and (self.host is None or self.host == b.host)
                and (self.operation is Operation.ANY or self.operation is b.operation)
                and (self.permission is Permission.ANY or self.permission is b.permission))


class _PatternAcls:
    """The ACLs of one resource pattern, by principal: a check reads only its own principal's and User:*'s."""

    __slots__ = ("by_principal",)

    def __init__(self) -> None:
        self.by_principal: dict[str, set[AclBinding]] = {}

    def add(self, b: AclBinding) -> None:
        self.by_principal.setdefault(b.principal, set()).add(b)

    def remove(self, b: AclBinding) -> bool:
        """Remove; True if no ACL is left."""
        acls = self.by_principal[b.principal]
        acls.discard(b)
        if not acls:
            del self.by_principal[b.principal]
        return not self.by_principal


class _Prefixes:
    """Prefixed ACLs of one resource type, by prefix, and the lengths those prefixes have: the prefixes of a name
    that have ACLs are found with one dict lookup per distinct prefix length (a handful in practice; at most the
    name's length), whatever the number of ACLs."""

    __slots__ = ("acls", "_length_counts", "lengths")

    def __init__(self) -> None:
        self.acls: dict[str, _PatternAcls] = {}
        self._length_counts: dict[int, int] = {}
        self.lengths: tuple[int, ...] = ()  # sorted

    def add(self, b: AclBinding) -> None:
        acls = self.acls.get(b.name)
        if acls is None:
            acls = self.acls[b.name] = _PatternAcls()
            self._count_length(len(b.name), +1)
        acls.add(b)

    def remove(self, b: AclBinding) -> None:
        if self.acls[b.name].remove(b):
            del self.acls[b.name]
            self._count_length(len(b.name), -1)

    def _count_length(self, length: int, delta: int) -> None:
        count = self._length_counts.get(length, 0) + delta
        if count:
            self._length_counts[length] = count
        else:
            del self._length_counts[length]
        self.lengths = tuple(sorted(self._length_counts))

    def matching(self, name: str) -> Iterator[_PatternAcls]:
        """The ACLs of every prefix of `name` (the name itself included)."""
        get = self.acls.get
        for length in self.lengths:
            if length > len(name):
                return
            acls = get(name[:length])
            if acls is not None:
                yield acls


class Authorizer:
    """The ACLs of the cluster and the decisions made from them. Updates (add/remove/replace) come from the metadata
    store's watch; checks read the index."""

    def __init__(self, super_users: Iterable[str] = (), allow_everyone_if_no_acl_found: bool = False):
        for s in super_users:
            KafkaPrincipal.parse(s)  # refuse a malformed super.users entry at start, as Kafka does
        self.super_users = frozenset(super_users)
        self.allow_everyone_if_no_acl_found = allow_everyone_if_no_acl_found
        self._all: set[AclBinding] = set()
        self._literal: dict[tuple[ResourceType, str], _PatternAcls] = {}
        self._prefixed: dict[ResourceType, _Prefixes] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, b: AclBinding) -> bool:
        return b in self._all

    def add(self, b: AclBinding) -> bool:
        """Add an ACL (validated); False if it was there already."""
        b.validate()
        if b in self._all:
            return False
        self._all.add(b)
        if b.pattern_type is PatternType.LITERAL:
            self._literal.setdefault((b.resource_type, b.name), _PatternAcls()).add(b)
        else:
            self._prefixed.setdefault(b.resource_type, _Prefixes()).add(b)
        return True

    def remove(self, b: AclBinding) -> bool:
        """Remove an ACL; False if it was not there."""
        if b not in self._all:
            return False
        self._all.discard(b)
        if b.pattern_type is PatternType.LITERAL:
            key = (b.resource_type, b.name)
            if self._literal[key].remove(b):
                del self._literal[key]
        else:
            self._prefixed[b.resource_type].remove(b)
        return True

    def replace(self, bindings: Iterable[AclBinding]) -> None:
        """Swap in a full set of ACLs (a reload from the store)."""
        self._all.clear()
        self._literal.clear()
        self._prefixed.clear()
        for b in bindings:
            self.add(b)

    def acls(self, acl_filter: AclBindingFilter = AclBindingFilter()) -> list[AclBinding]:
        """The ACLs a DescribeAcls/DeleteAcls filter matches (admin requests: a scan is fine)."""
        return [b for b in self._all if acl_filter.matches(b)]

    # -----------------------------------------------------------------------------------------------------------
    # Decisions

    def authorize(self, principal: KafkaPrincipal, host: str, operation: Operation, resource_type: ResourceType,
                  name: str) -> bool:
        """May `principal`, connected from `host` (the client's IP address as a string), do `operation` on the
        resource (a literal name)?"""
        if str(principal) in self.super_users:
            return True
        principals = (str(principal), WILDCARD_PRINCIPAL)
        allowed = False
        has_acls = False
        for pattern_acls in self._applicable(resource_type, name):
            has_acls = True  # some ACL, for anyone, is on the resource: allow.everyone.if.no.acl.found is out
            for p in principals:
                for acl in pattern_acls.by_principal.get(p, ()):
                    result = _decide(acl, host, operation)
                    if result is Permission.DENY:
                        return False
                    if result is Permission.ALLOW:
                        allowed = True
        if allowed:
            return True
        return self.allow_everyone_if_no_acl_found and not has_acls

    def may_describe_topic(self, principal: str, client_host: str, topic: str) -> bool:
        """The check a KIP-848 regex's matches go through (groups/consumer_state.py): principal as `Type:name`,
        client_host as Kafka reports it (`/<ip>`)."""
        return self.authorize(KafkaPrincipal.parse(principal), client_host.lstrip("/"), Operation.DESCRIBE,
                              ResourceType.TOPIC, topic)

    def _applicable(self, resource_type: ResourceType, name: str) -> Iterator[_PatternAcls]:
        literal = self._literal.get((resource_type, name))
        if literal is not None:
            yield literal
        if name != WILDCARD:
            wildcard = self._literal.get((resource_type, WILDCARD))
            if wildcard is not None:
                yield wildcard
        prefixes = self._prefixed.get(resource_type)
        if prefixes is not None:
            yield from prefixes.matching(name)

    def authorize_by_resource_type(self, principal: KafkaPrincipal, host: str, operation: Operation,
                                   resource_type: ResourceType) -> bool:
        """May `principal` do `operation` on at least one resource of this type (Kafka's
        Authorizer.authorizeByResourceType, e.g. an idempotent producer needs WRITE on some topic, KIP-679)? Allowed
        if a resource with an arbitrary name would be allowed, or some ALLOW (on `operation` itself or ALL, no
        implication) is not covered by a DENY: a LITERAL `*` DENY denies all, a LITERAL DENY covers the same name, a
        PREFIXED DENY covers the names and prefixes that start with it."""
        if self.authorize(principal, host, operation, resource_type, "hardcode"):  # Kafka's probe name
            return True
        principals = (str(principal), WILDCARD_PRINCIPAL)
        deny_literal: set[str] = set()
        deny_prefixed: set[str] = set()
        allows: list[AclBinding] = []
        wildcard_allow = False
        for b in self._all:
            if (b.resource_type is not resource_type or b.principal not in principals
                    or b.host not in (host, WILDCARD) or b.operation not in (operation, Operation.ALL)):
                continue
            if b.permission is Permission.DENY:
                if b.pattern_type is PatternType.LITERAL:
                    if b.name == WILDCARD:
                        return False
                    deny_literal.add(b.name)
                else:
                    deny_prefixed.add(b.name)
            elif b.pattern_type is PatternType.LITERAL and b.name == WILDCARD:
                wildcard_allow = True  # decided after the loop: a `*` DENY met later still wins
            else:
                allows.append(b)
        if wildcard_allow:
            return True
        for b in allows:
            if b.pattern_type is PatternType.LITERAL and b.name in deny_literal:
                continue
            if any(b.name[:i] in deny_prefixed for i in range(1, len(b.name) + 1)):
                continue
            return True
        return False

    def authorized_operations(self, principal: KafkaPrincipal, host: str, resource_type: ResourceType,
                              name: str) -> int:
        """The int32 bit field of the operations (bit = AclOperation code) allowed on the resource, as Metadata,
        DescribeCluster, DescribeGroups, ConsumerGroupDescribe and DescribeTopicPartitions report them (KIP-430)."""
        return operations_bits(op for op in SUPPORTED_OPERATIONS[resource_type]
                               if self.authorize(principal, host, op, resource_type, name))


def operations_bits(operations: Iterable[Operation]) -> int:
    """Kafka's Utils.to32BitField: bit n set for operation code n."""
    bits = 0
    for op in operations:
        bits |= 1 << int(op)
    return bits


def all_operations_bits(resource_type: ResourceType) -> int:
    """The authorized operations when no authorizer is configured: everything the resource type supports."""
    return operations_bits(SUPPORTED_OPERATIONS[resource_type])


def _decide(acl: AclBinding, host: str, operation: Operation) -> Permission | None:
    """What one ACL (on the resource, for the principal) says about the request, or None if it does not match it."""
    if acl.host != WILDCARD and acl.host != host:
        return None
    if acl.operation is not Operation.ALL and acl.operation is not operation:
        if acl.permission is not Permission.ALLOW:
            return None
        if operation is Operation.DESCRIBE:
            if acl.operation not in _IMPLIES_DESCRIBE:
                return None
        elif operation is Operation.DESCRIBE_CONFIGS:
            if acl.operation not in _IMPLIES_DESCRIBE_CONFIGS:
                return None
        else:
            return None
    return acl.permission
