"""The ACL authorizer (dray_broker/auth/acls.py): truth tables of Kafka's StandardAuthorizer rules, filters, storage
encoding, authorized-operations bit fields, and the per-API check table (dray_broker/auth/api_checks.py)."""

import dataclasses
import random

import pytest
from kio.index import load_request_schema, load_response_schema

from dray_broker.auth.acls import (
    CLUSTER_NAME,
    AclBinding,
    AclBindingFilter,
    Authorizer,
    InvalidAcl,
    Permission,
    all_operations_bits,
    operations_bits,
)
from dray_broker.auth.acls import (
    Operation as Op,
)
from dray_broker.auth.acls import (
    PatternType as P,
)
from dray_broker.auth.acls import (
    ResourceType as R,
)
from dray_broker.auth.api_checks import ANY_RESOURCE, API_CHECKS, CLUSTER, Scope
from dray_broker.auth.principal import user
from dray_broker.protocol.kio_shim import EntityField, EntityTupleField, PrimitiveTupleField, classify_field

ALICE, BOB, ADMIN = user("alice"), user("bob"), user("admin")
HOST = "10.0.0.1"


def acl(name="t", op=Op.READ, perm=Permission.ALLOW, principal="User:alice", host="*", rtype=R.TOPIC,
        pattern=P.LITERAL):
    return AclBinding(rtype, name, pattern, principal, host, op, perm)


def authorizer(*acls, **kw):
    a = Authorizer(**kw)
    for b in acls:
        assert a.add(b)
    return a


def can(a, op, name="t", principal=ALICE, host=HOST, rtype=R.TOPIC):
    return a.authorize(principal, host, op, rtype, name)


def test_nothing_is_allowed_by_default():
    a = authorizer()
    assert not can(a, Op.READ)
    assert not can(a, Op.CREATE, CLUSTER_NAME, rtype=R.CLUSTER)


def test_allow_literal_and_the_implied_describe():
    a = authorizer(acl(op=Op.READ))
    assert can(a, Op.READ) and can(a, Op.DESCRIBE)
    assert not can(a, Op.WRITE) and not can(a, Op.DESCRIBE_CONFIGS)
    assert not can(a, Op.READ, "t2") and not can(a, Op.READ, "tt") and not can(a, Op.READ, principal=BOB)
    assert not can(a, Op.READ, rtype=R.GROUP)


@pytest.mark.parametrize("granted,asked,allowed", [
    (Op.READ, Op.DESCRIBE, True), (Op.WRITE, Op.DESCRIBE, True), (Op.DELETE, Op.DESCRIBE, True),
    (Op.ALTER, Op.DESCRIBE, True), (Op.CREATE, Op.DESCRIBE, False), (Op.DESCRIBE_CONFIGS, Op.DESCRIBE, False),
    (Op.ALTER_CONFIGS, Op.DESCRIBE_CONFIGS, True), (Op.ALTER_CONFIGS, Op.DESCRIBE, False),
    (Op.DESCRIBE, Op.READ, False), (Op.ALTER, Op.ALTER_CONFIGS, False), (Op.ALL, Op.ALTER_CONFIGS, True),
    (Op.ALL, Op.IDEMPOTENT_WRITE, True), (Op.WRITE, Op.IDEMPOTENT_WRITE, False),
])
def test_implied_operations(granted, asked, allowed):
    assert can(authorizer(acl(op=granted)), asked) is allowed


def test_deny_implies_nothing_but_wins_over_allow():
    a = authorizer(acl(op=Op.READ, perm=Permission.DENY), acl(op=Op.DESCRIBE))
    assert can(a, Op.DESCRIBE)  # DENY READ does not deny DESCRIBE
    assert not can(a, Op.READ)
    a = authorizer(acl(op=Op.ALL), acl(op=Op.WRITE, perm=Permission.DENY))
    assert can(a, Op.READ) and not can(a, Op.WRITE)
    a = authorizer(acl(op=Op.ALL, perm=Permission.DENY), acl(op=Op.READ))
    assert not can(a, Op.READ) and not can(a, Op.DESCRIBE)


def test_deny_wins_across_patterns_and_wildcards():
    a = authorizer(acl("*", op=Op.READ), acl("sec", op=Op.READ, perm=Permission.DENY, pattern=P.PREFIXED))
    assert can(a, Op.READ, "public") and not can(a, Op.READ, "secret") and not can(a, Op.READ, "sec")
    a = authorizer(acl("secret", op=Op.READ), acl("*", op=Op.READ, perm=Permission.DENY, principal="User:*"))
    assert not can(a, Op.READ, "secret")
    a = authorizer(acl("secret", op=Op.READ), acl("secret", op=Op.READ, perm=Permission.DENY, host=HOST))
    assert not can(a, Op.READ, "secret") and can(a, Op.READ, "secret", host="10.0.0.2")


def test_prefixed_patterns():
    a = authorizer(acl("app-", op=Op.WRITE, pattern=P.PREFIXED), acl("app-logs", op=Op.READ, pattern=P.PREFIXED),
                   acl("b", op=Op.READ, pattern=P.PREFIXED), acl("zz", op=Op.READ, pattern=P.PREFIXED))
    assert can(a, Op.WRITE, "app-") and can(a, Op.WRITE, "app-x") and can(a, Op.WRITE, "app-logs-2")
    assert can(a, Op.READ, "app-logs") and can(a, Op.READ, "app-logs-eu") and not can(a, Op.READ, "app-x")
    assert not can(a, Op.WRITE, "app") and not can(a, Op.WRITE, "ap") and not can(a, Op.WRITE, "other")
    assert can(a, Op.READ, "b") and can(a, Op.READ, "banana") and not can(a, Op.READ, "a")
    assert not can(a, Op.READ, "z") and can(a, Op.READ, "zzz")
    # A prefixed "*" is a prefix like any other (names that start with '*'), not a wildcard.
    a = authorizer(acl("*", op=Op.READ, pattern=P.PREFIXED))
    assert can(a, Op.READ, "*x") and not can(a, Op.READ, "x")


def test_wildcards():
    a = authorizer(acl("*", op=Op.READ, principal="User:*"))
    assert can(a, Op.READ, "anything", principal=BOB) and can(a, Op.READ, "*")
    assert not can(a, Op.READ, rtype=R.GROUP)
    a = authorizer(acl(principal="User:*", host="10.0.0.9"))
    assert not can(a, Op.READ) and can(a, Op.READ, host="10.0.0.9")
    # Only User:* is a wildcard principal.
    assert not can(authorizer(acl(principal="Group:*")), Op.READ)


def test_super_users():
    a = authorizer(acl(op=Op.ALL, perm=Permission.DENY, principal="User:*"), super_users=["User:admin"])
    assert can(a, Op.ALTER, principal=ADMIN) and can(a, Op.CLUSTER_ACTION, CLUSTER_NAME, principal=ADMIN,
                                                     rtype=R.CLUSTER)
    assert not can(a, Op.READ)
    with pytest.raises(ValueError):
        Authorizer(super_users=["admin"])


def test_allow_everyone_if_no_acl_found():
    a = authorizer(acl("guarded", op=Op.WRITE, principal="User:bob"), allow_everyone_if_no_acl_found=True)
    assert can(a, Op.READ, "open") and can(a, Op.ALTER, "open", principal=BOB)
    # Any ACL on the resource, for anyone, switches the default off for it.
    assert not can(a, Op.READ, "guarded") and can(a, Op.WRITE, "guarded", principal=BOB)
    a = authorizer(acl("g", pattern=P.PREFIXED, principal="User:bob"), allow_everyone_if_no_acl_found=True)
    assert not can(a, Op.READ, "guarded") and can(a, Op.READ, "open")
    a = authorizer(acl("*", principal="User:bob"), allow_everyone_if_no_acl_found=True)
    assert not can(a, Op.READ, "anything")


def test_add_remove_replace():
    a = authorizer()
    b1, b2 = acl("app-", pattern=P.PREFIXED), acl("t", op=Op.WRITE)
    assert a.add(b1) and not a.add(b1) and a.add(b2) and len(a) == 2 and b1 in a
    assert can(a, Op.READ, "app-1") and can(a, Op.WRITE)
    assert a.remove(b1) and not a.remove(b1) and not can(a, Op.READ, "app-1") and len(a) == 1
    a.replace([b1])
    assert len(a) == 1 and can(a, Op.READ, "app-1") and not can(a, Op.WRITE)
    with pytest.raises(InvalidAcl):
        a.add(acl(op=Op.ANY))


def test_prefix_index_against_a_scan():
    """The prefix index finds exactly the prefixes a scan of all ACLs finds, also after removals."""
    rng = random.Random(7)
    alphabet = "ab-"
    names = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(60)})
    a = authorizer(*[acl(n, principal=f"User:{n}", pattern=P.PREFIXED) for n in names])
    for _ in range(2000):
        resource = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        expected = {n for n in names if resource.startswith(n)}
        found = {b.name for p in a._prefixed[R.TOPIC].matching(resource) for s in p.by_principal.values() for b in s}
        assert found == expected, resource
    for n in names[::2]:
        a.remove(acl(n, principal=f"User:{n}", pattern=P.PREFIXED))
    for resource in names:
        found = {b.name for p in a._prefixed[R.TOPIC].matching(resource) for s in p.by_principal.values() for b in s}
        assert found == {n for n in names[1::2] if resource.startswith(n)}


def test_authorize_by_resource_type():
    """Kafka 4: an idempotent producer needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic (KIP-679)."""
    byt = Authorizer.authorize_by_resource_type
    assert not byt(authorizer(), ALICE, HOST, Op.WRITE, R.TOPIC)
    assert byt(authorizer(acl("orders", op=Op.WRITE)), ALICE, HOST, Op.WRITE, R.TOPIC)
    assert not byt(authorizer(acl("orders", op=Op.READ)), ALICE, HOST, Op.WRITE, R.TOPIC)
    assert byt(authorizer(acl("orders", op=Op.ALL)), ALICE, HOST, Op.WRITE, R.TOPIC)
    assert not byt(authorizer(acl("orders", op=Op.WRITE, host="10.9.9.9")), ALICE, HOST, Op.WRITE, R.TOPIC)
    assert byt(authorizer(acl("orders", op=Op.WRITE, principal="User:*")), ALICE, HOST, Op.WRITE, R.TOPIC)
    # A literal allow covered by a literal or prefixed deny does not count; one outside it does.
    assert not byt(authorizer(acl("orders", op=Op.WRITE), acl("orders", op=Op.WRITE, perm=Permission.DENY)),
                   ALICE, HOST, Op.WRITE, R.TOPIC)
    assert not byt(authorizer(acl("orders", op=Op.WRITE),
                              acl("ord", op=Op.WRITE, perm=Permission.DENY, pattern=P.PREFIXED)),
                   ALICE, HOST, Op.WRITE, R.TOPIC)
    assert byt(authorizer(acl("orders", op=Op.WRITE), acl("logs", op=Op.WRITE),
                          acl("ord", op=Op.WRITE, perm=Permission.DENY, pattern=P.PREFIXED)),
               ALICE, HOST, Op.WRITE, R.TOPIC)
    assert not byt(authorizer(acl("orders", op=Op.WRITE), acl("*", op=Op.WRITE, perm=Permission.DENY)),
                   ALICE, HOST, Op.WRITE, R.TOPIC)
    assert byt(authorizer(super_users=["User:alice"]), ALICE, HOST, Op.WRITE, R.TOPIC)
    assert byt(authorizer(allow_everyone_if_no_acl_found=True), ALICE, HOST, Op.WRITE, R.TOPIC)


def test_authorized_operations_bit_fields():
    a = authorizer(acl("t", op=Op.WRITE), acl("t", op=Op.ALTER_CONFIGS),
                   acl(CLUSTER_NAME, op=Op.DESCRIBE, rtype=R.CLUSTER))
    bits = a.authorized_operations(ALICE, HOST, R.TOPIC, "t")
    assert bits == (1 << 4) | (1 << 8) | (1 << 10) | (1 << 11)  # WRITE, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS
    assert a.authorized_operations(ALICE, HOST, R.CLUSTER, CLUSTER_NAME) == 1 << 8
    assert a.authorized_operations(BOB, HOST, R.TOPIC, "t") == 0
    assert operations_bits([Op.READ, Op.DESCRIBE]) == 0b100001000
    # With no authorizer Kafka reports every operation the resource type has (AclEntry.supportedOperations).
    assert all_operations_bits(R.GROUP) == operations_bits([Op.READ, Op.DESCRIBE, Op.DELETE, Op.DESCRIBE_CONFIGS,
                                                            Op.ALTER_CONFIGS])
    assert all_operations_bits(R.TRANSACTIONAL_ID) == operations_bits([Op.DESCRIBE, Op.WRITE, Op.TWO_PHASE_COMMIT])


BINDINGS = [
    acl("t", op=Op.READ), acl("t", op=Op.WRITE, principal="User:bob"), acl("*", op=Op.DESCRIBE),
    acl("t", pattern=P.PREFIXED), acl("te", pattern=P.PREFIXED, perm=Permission.DENY, host="1.2.3.4"),
    acl("x", pattern=P.PREFIXED), acl("g", rtype=R.GROUP), acl(CLUSTER_NAME, op=Op.ALTER, rtype=R.CLUSTER),
]


@pytest.mark.parametrize("f,expected", [
    (AclBindingFilter(), set(range(8))),
    (AclBindingFilter(R.TOPIC), {0, 1, 2, 3, 4, 5}),
    (AclBindingFilter(R.TOPIC, "t"), {0, 1, 3}),  # pattern ANY: exact names of any pattern type
    (AclBindingFilter(R.TOPIC, "t", P.LITERAL), {0, 1}),
    (AclBindingFilter(R.TOPIC, "t", P.PREFIXED), {3}),
    (AclBindingFilter(R.TOPIC, "test", P.MATCH), {2, 3, 4}),  # what applies to topic "test"
    (AclBindingFilter(R.TOPIC, "t", P.MATCH), {0, 1, 2, 3}),
    (AclBindingFilter(R.ANY, None, P.PREFIXED), {3, 4, 5}),
    (AclBindingFilter(R.ANY, None, P.MATCH), set(range(8))),
    (AclBindingFilter(principal="User:bob"), {1}),
    (AclBindingFilter(host="1.2.3.4"), {4}),
    (AclBindingFilter(operation=Op.READ, permission=Permission.ALLOW), {0, 3, 5, 6}),
    (AclBindingFilter(permission=Permission.DENY), {4}),
    (AclBindingFilter(R.CLUSTER, CLUSTER_NAME, P.LITERAL, operation=Op.ALTER), {7}),
])
def test_filters(f, expected):
    a = authorizer(*BINDINGS)
    assert {BINDINGS.index(b) for b in a.acls(f)} == expected


def test_filter_validation():
    AclBindingFilter().validate()
    for bad in [AclBindingFilter(R.UNKNOWN), AclBindingFilter(pattern_type=P.UNKNOWN),
                AclBindingFilter(operation=Op.UNKNOWN), AclBindingFilter(permission=Permission.UNKNOWN)]:
        with pytest.raises(InvalidAcl):
            bad.validate()
    assert R(99) is R.UNKNOWN and Op(-1) is Op.UNKNOWN  # unknown wire codes read as UNKNOWN, as in Kafka


@pytest.mark.parametrize("binding,message", [
    (acl(rtype=R.ANY), "resourceType"), (acl(rtype=R.UNKNOWN), "resourceType"),
    (acl(pattern=P.MATCH), "patternType"), (acl(pattern=P.ANY), "patternType"),
    (acl(op=Op.ANY), "operation"), (acl(op=Op.UNKNOWN), "operation"),
    (acl(perm=Permission.ANY), "permissionType"), (acl(name=""), "empty"),
    (acl("my-cluster", op=Op.ALTER, rtype=R.CLUSTER), "kafka-cluster"), (acl(principal="alice"), "principal"),
])
def test_bindings_kafka_refuses(binding, message):
    with pytest.raises(InvalidAcl, match=message):
        binding.validate()


def test_storage_encoding():
    b = acl("ünïcode, \"quoted\"", op=Op.IDEMPOTENT_WRITE, perm=Permission.DENY, host="::1", pattern=P.PREFIXED)
    data = b.to_json()
    assert AclBinding.from_json(data) == b and AclBinding.from_json(data.decode()) == b
    assert data == (b'{"host":"::1","name":"\\u00fcn\\u00efcode, \\"quoted\\"","operation":"IDEMPOTENT_WRITE",'
                    b'"pattern_type":"PREFIXED","permission":"DENY","principal":"User:alice","resource_type":"TOPIC"}')
    assert b.stable_id() == AclBinding.from_json(data).stable_id() != acl().stable_id()
    for bad in [b"", b"{}", b"[]", data.replace(b"TOPIC", b"TOPICS"), data.replace(b'"::1"', b"1"),
                data.replace(b"PREFIXED", b"MATCH"), data[:-1] + b',"x":"y"}']:
        with pytest.raises(InvalidAcl):
            AclBinding.from_json(bad)


# ---------------------------------------------------------------------------------------------------------------
# The per-API table


def _schema_paths(cls, prefix=""):
    for f in dataclasses.fields(cls):
        kind = classify_field(f)
        if isinstance(kind, EntityTupleField):
            yield from _schema_paths(kind.type_, f"{prefix}{f.name}[].")
        elif isinstance(kind, EntityField):
            yield from _schema_paths(kind.type_, f"{prefix}{f.name}.")
        elif isinstance(kind, PrimitiveTupleField):
            yield f"{prefix}{f.name}[]"
        else:
            yield f"{prefix}{f.name}"


def _all_paths(api_key, loader):
    paths = set()
    for version in range(20):
        try:
            paths |= set(_schema_paths(loader(api_key, version)))
        except Exception:  # noqa: BLE001 - kio has no schema for this version
            continue
    return paths


@pytest.mark.parametrize("api_key", sorted(API_CHECKS))
def test_api_check_sources_name_real_fields(api_key):
    """Every field a check names exists in the API's kio request (or response) schema, in some version."""
    request_paths, response_paths = _all_paths(api_key, load_request_schema), _all_paths(api_key, load_response_schema)
    assert request_paths, f"kio has no schema for API {api_key}"
    entry = API_CHECKS[api_key]
    for check in entry.checks + tuple(u for c in entry.checks for u in c.unless):
        if check.source in (CLUSTER, ANY_RESOURCE):
            assert check.scope is Scope.REQUEST or check.resource_type is R.CLUSTER
            continue
        for alternative in check.source.split(" | "):
            in_response = alternative.startswith("response:")
            paths = response_paths if in_response else request_paths
            for part in alternative.removeprefix("response:").split(":"):
                assert part in paths, f"{entry.name}: no field {part} (response: {in_response})"
        assert (check.error.value == 0) == (check.scope is Scope.FILTER)  # a denial that is not hidden is an error
    for resource_type, field, _ in entry.authorized_operations:
        assert field in response_paths and resource_type in (R.TOPIC, R.GROUP, R.CLUSTER)


def test_api_table_covers_what_dray_serves():
    from dray_broker.server.routes import ROUTES

    for route in ROUTES:  # every route names its API's checks
        assert route.checks is API_CHECKS[route.key] and route.checks.name == route.name
    assert API_CHECKS[0].checks[1].operation is Op.WRITE and API_CHECKS[1].checks[0].operation is Op.READ
    idempotent = API_CHECKS[22].checks[2]
    assert (idempotent.operation, idempotent.resource_type, idempotent.unless[0].source) == (
        Op.IDEMPOTENT_WRITE, R.CLUSTER, ANY_RESOURCE)


def test_may_describe_topic_reads_the_principal_and_host_as_a_group_member_stores_them():
    """The check KIP-848 regex matches go through: `Type:name` and Kafka's `/<ip>` client host."""
    a = authorizer(acl("t", Op.READ, host=HOST), acl("u", Op.DESCRIBE, perm=Permission.DENY))
    assert a.may_describe_topic("User:alice", f"/{HOST}", "t")  # READ implies DESCRIBE, from that host only
    assert not a.may_describe_topic("User:alice", "/10.0.0.2", "t")
    assert not a.may_describe_topic("User:bob", f"/{HOST}", "t")
    assert not a.may_describe_topic("User:alice", f"/{HOST}", "u")
