"""The authorizer's place in dispatch (auth/enforce.py): every routed API has a policy, and a request whose
resources are partly denied reaches the handler without them and is answered for them with Kafka's error."""

from __future__ import annotations

import uuid

from kio.schema.errors import ErrorCode

from dray_broker.auth.acls import AclBinding, Authorizer, Operation, PatternType, Permission, ResourceType
from dray_broker.auth.enforce import Enforcer
from dray_broker.auth.principal import user
from dray_broker.protocol import apis
from dray_broker.protocol.codec import Request, make, response_module
from dray_broker.server.handling import RequestContext, Response
from dray_broker.server.routes import ROUTES
from tests.integration.wire import request


NO_ID = uuid.UUID(int=0)


class Topics:
    """The enforcer's view of the topic catalog: which topics exist (by name; no ids here)."""

    def __init__(self, *names: str):
        self.names = set(names)

    def by_id(self, topic_id):
        return None

    def cached(self, name):
        return name if name in self.names else None


def enforcer(*bindings: AclBinding, topics: Topics = Topics()) -> Enforcer:
    authorizer = Authorizer(super_users=["User:root"])
    for b in bindings:
        authorizer.add(b)
    return Enforcer(authorizer, topics, [r.key for r in ROUTES])  # type: ignore[arg-type]


def allow_topic(name: str, op: Operation, principal: str = "User:alice") -> AclBinding:
    return AclBinding(ResourceType.TOPIC, name, PatternType.LITERAL, principal, "*", op, Permission.ALLOW)


def test_every_route_has_a_policy_or_table_checks():
    enforcer()  # raises for a routed API whose checks it cannot apply


def list_offsets(*topics: str) -> Request:
    body = request(apis.LIST_OFFSETS, 7, "ListOffsetsRequest", replica_id=-1, isolation_level=0, topics=tuple(
        request(apis.LIST_OFFSETS, 7, "ListOffsetsTopic", name=t, partitions=tuple(
            request(apis.LIST_OFFSETS, 7, "ListOffsetsPartition", partition_index=p, timestamp=-1) for p in (0, 1)))
        for t in topics))
    return Request(apis.LIST_OFFSETS, 7, 1, "c", body)


def test_denied_topics_are_taken_out_and_answered_per_partition():
    e = enforcer(allow_topic("seen", Operation.DESCRIBE))
    req, finish = e.check(RequestContext("c", "/10.0.0.1", user("alice")), list_offsets("seen", "hidden"))
    assert [t.name for t in req.body.topics] == ["seen"]  # the handler gets only what is allowed
    M = response_module(apis.LIST_OFFSETS, 7)
    handled = make(M.ListOffsetsResponse, throttle_time=0, topics=(make(M.ListOffsetsTopicResponse, name="seen",
        partitions=(make(M.ListOffsetsPartitionResponse, partition_index=0, error_code=ErrorCode.none, timestamp=-1,
                         offset=5, leader_epoch=0),)),))
    answered = finish(handled)
    assert [(t.name, [(p.partition_index, p.error_code) for p in t.partitions]) for t in answered.topics] == [
        ("seen", [(0, ErrorCode.none)]),
        ("hidden", [(0, ErrorCode.topic_authorization_failed), (1, ErrorCode.topic_authorization_failed)])]


def test_super_users_and_deny():
    e = enforcer(allow_topic("t", Operation.ALL), AclBinding(ResourceType.TOPIC, "t", PatternType.LITERAL,
                                                              "User:alice", "10.0.0.9", Operation.DESCRIBE,
                                                              Permission.DENY))
    req, finish = e.check(RequestContext("c", "/10.0.0.9", user("alice")), list_offsets("t"))
    assert req.body.topics == () and finish is not None  # the DENY from its host wins
    req, finish = e.check(RequestContext("c", "/10.0.0.1", user("alice")), list_offsets("t"))
    assert [t.name for t in req.body.topics] == ["t"] and finish is None
    req, finish = e.check(RequestContext("c", "/10.0.0.9", user("root")), list_offsets("t", "u"))
    assert [t.name for t in req.body.topics] == ["t", "u"] and finish is None


def test_a_request_denied_as_a_whole_is_answered_with_its_error():
    body = request(apis.HEARTBEAT, 4, "HeartbeatRequest", group_id="g", generation_id=1, member_id="m",
                   group_instance_id=None)
    verdict = enforcer().check(RequestContext("c", "/10.0.0.1", user("alice")),
                               Request(apis.HEARTBEAT, 4, 1, "c", body))
    assert isinstance(verdict, Response) and verdict.body.error_code == ErrorCode.group_authorization_failed
    create = request(apis.CREATE_ACLS, 3, "CreateAclsRequest", creations=(
        request(apis.CREATE_ACLS, 3, "AclCreation", resource_type=2, resource_name="t", resource_pattern_type=3,
                principal="User:alice", host="*", operation=3, permission_type=3),) * 2)
    verdict = enforcer().check(RequestContext("c", "/10.0.0.1", user("alice")),
                               Request(apis.CREATE_ACLS, 3, 1, "c", create))
    assert isinstance(verdict, Response)
    assert [r.error_code for r in verdict.body.results] == [ErrorCode.cluster_authorization_failed] * 2


def test_metadata_of_every_topic_shows_only_the_described_ones_in_every_version():
    e = enforcer(allow_topic("seen", Operation.READ), topics=Topics("seen", "hidden"))
    ctx = RequestContext("c", "/10.0.0.1", user("alice"))
    for version in range(0, 13):
        every = None if version > 0 else ()
        body = request(apis.METADATA, version, "MetadataRequest", topics=every, allow_auto_topic_creation=True,
                       include_cluster_authorized_operations=False, include_topic_authorized_operations=True)
        req, finish = e.check(ctx, Request(apis.METADATA, version, 1, "c", body))
        M = response_module(apis.METADATA, version)
        handled = make(M.MetadataResponse, throttle_time=0, brokers=(), cluster_id="c", controller_id=1, topics=tuple(
            make(M.MetadataResponseTopic, error_code=ErrorCode.none, name=n, topic_id=NO_ID, is_internal=False,
                 partitions=(),
                 topic_authorized_operations=-2**31) for n in ("seen", "hidden")))
        answered = finish(handled)
        assert [t.name for t in answered.topics] == ["seen"], version
        if version >= 8:  # READ implies DESCRIBE: bits 3 and 8
            assert answered.topics[0].topic_authorized_operations == (1 << 3) | (1 << 8)
        # Named: the hidden one answers TOPIC_AUTHORIZATION_FAILED (it would otherwise be auto-created).
        named = request(apis.METADATA, version, "MetadataRequest", topics=tuple(
            request(apis.METADATA, version, "MetadataRequestTopic", name=n, topic_id=NO_ID)
            for n in ("seen", "hidden")),
            allow_auto_topic_creation=True, include_cluster_authorized_operations=False,
            include_topic_authorized_operations=False)
        req, finish = e.check(ctx, Request(apis.METADATA, version, 1, "c", named))
        assert [t.name for t in req.body.topics] == ["seen"]
        answered = finish(make(M.MetadataResponse, throttle_time=0, brokers=(), cluster_id="c", controller_id=1,
                               topics=()))
        assert [(t.name, t.error_code) for t in answered.topics] == [("hidden", ErrorCode.topic_authorization_failed)]


def test_metadata_does_not_create_a_topic_without_create():
    e = enforcer(allow_topic("new", Operation.DESCRIBE))
    body = request(apis.METADATA, 12, "MetadataRequest", topics=(request(apis.METADATA, 12, "MetadataRequestTopic",
                                                                          name="new", topic_id=NO_ID),),
                   allow_auto_topic_creation=True, include_topic_authorized_operations=False)
    req, finish = e.check(RequestContext("c", "/10.0.0.1", user("alice")), Request(apis.METADATA, 12, 1, "c", body))
    assert req.body.topics == ()  # the handler would create it
    e = enforcer(allow_topic("new", Operation.DESCRIBE), allow_topic("new", Operation.CREATE))
    req, finish = e.check(RequestContext("c", "/10.0.0.1", user("alice")), Request(apis.METADATA, 12, 1, "c", body))
    assert [t.name for t in req.body.topics] == ["new"]


def test_find_coordinator_one_key_or_each_key():
    e = enforcer(AclBinding(ResourceType.GROUP, "mine", PatternType.LITERAL, "User:alice", "*", Operation.READ,
                            Permission.ALLOW))
    ctx = RequestContext("c", "/10.0.0.1", user("alice"))
    for version in range(0, 4):
        for key, allowed in (("mine", True), ("theirs", False)):
            body = request(apis.FIND_COORDINATOR, version, "FindCoordinatorRequest", key=key, key_type=0)
            verdict = e.check(ctx, Request(apis.FIND_COORDINATOR, version, 1, "c", body))
            if allowed:
                assert not isinstance(verdict, Response)
            else:
                assert isinstance(verdict, Response)
                assert verdict.body.error_code == ErrorCode.group_authorization_failed
    body = request(apis.FIND_COORDINATOR, 4, "FindCoordinatorRequest", key_type=0, coordinator_keys=("mine", "theirs"))
    req, finish = e.check(ctx, Request(apis.FIND_COORDINATOR, 4, 1, "c", body))
    assert req.body.coordinator_keys == ("mine",)
    M = response_module(apis.FIND_COORDINATOR, 4)
    answered = finish(make(M.FindCoordinatorResponse, throttle_time=0, coordinators=()))
    assert [(c.key, c.error_code) for c in answered.coordinators] == [("theirs", ErrorCode.group_authorization_failed)]
