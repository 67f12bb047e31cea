"""The authorizer at work: the dispatcher (server/dispatch.py) hands every decoded request to Enforcer.check before
its handler runs, when the broker runs with --acls (without it there is no Enforcer and no per-request work).

check() answers one of:
- a Response: the whole request is denied (Kafka's error for it in every error field, e.g. JoinGroup without READ on
  its group answers GROUP_AUTHORIZATION_FAILED);
- (request, finish): the handler gets `request`, from which the resources the principal may not touch are removed;
  finish(response body), if not None, puts them back into the handler's answer with their error
  (TOPIC_AUTHORIZATION_FAILED per topic and partition, GROUP_AUTHORIZATION_FAILED per group, ...), leaves out what
  the principal may not even see (Metadata for all topics, ListGroups, OffsetFetch of all topics), and fills the
  authorized-operations fields (KIP-430).

Produce and Fetch encode their answers by hand (hot paths): for them the denied topics go to the handler in
RequestContext.denied_topics, which it answers with TOPIC_AUTHORIZATION_FAILED.

Which operations each API needs is auth/api_checks.py (Kafka 4's checks). APIs whose checks are all whole-request
checks on the cluster or on one named resource (JoinGroup, CreateAcls, ...) are applied from that table as they
are; the others have a policy below that reads the request's own structure.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Callable, Iterable, TypeAlias

from kio.schema.errors import ErrorCode

from dray_broker.auth.acls import (
    CLUSTER_NAME,
    SUPPORTED_OPERATIONS,
    Authorizer,
    Operation,
    ResourceType,
    operations_bits,
)
from dray_broker.auth.api_checks import API_CHECKS, CLUSTER, Check, Scope
from dray_broker.protocol import apis
from dray_broker.protocol.codec import Request
from dray_broker.protocol.kio_shim import EntityTupleField, classify_field
from dray_broker.protocol.rejections import error_entry, error_response, response_class
from dray_broker.server.handling import RequestContext, Response
from dray_broker.topics.catalog import TopicCatalog

Op = Operation
R = ResourceType
Finish: TypeAlias = Callable[[Any], Any]
Verdict: TypeAlias = Response | tuple[Request, Finish | None]

TOPIC_DENIED = ErrorCode.topic_authorization_failed
GROUP_DENIED = ErrorCode.group_authorization_failed
CLUSTER_DENIED = ErrorCode.cluster_authorization_failed
TXN_DENIED = ErrorCode.transactional_id_authorization_failed

# DescribeConfigs & co: a config resource's type (Kafka's ConfigResource.Type) -> the ACL resource and its error.
_CONFIG_RESOURCES = {2: (R.TOPIC, TOPIC_DENIED), 4: (R.CLUSTER, CLUSTER_DENIED), 8: (R.CLUSTER, CLUSTER_DENIED),
                     16: (R.CLUSTER, CLUSTER_DENIED), 32: (R.GROUP, GROUP_DENIED)}
_FIND_COORDINATOR_KEYS = {0: (R.GROUP, GROUP_DENIED), 1: (R.TRANSACTIONAL_ID, TXN_DENIED)}


class Call:
    """One request being authorized: who asks, and the helpers the policies share."""

    __slots__ = ("enforcer", "ctx", "req", "principal", "host")

    def __init__(self, enforcer: Enforcer, ctx: RequestContext, req: Request):
        self.enforcer = enforcer
        self.ctx = ctx
        self.req = req
        self.principal = ctx.principal
        self.host = ctx.client_host.lstrip("/")  # Kafka's ACL hosts are bare addresses

    @property
    def body(self) -> Any:
        return self.req.body

    def may(self, operation: Operation, resource_type: ResourceType, name: str) -> bool:
        return self.enforcer.authorizer.authorize(self.principal, self.host, operation, resource_type, name)

    def may_cluster(self, operation: Operation) -> bool:
        return self.may(operation, R.CLUSTER, CLUSTER_NAME)

    def operations(self, resource_type: ResourceType, name: str) -> int:
        return operations_bits(op for op in SUPPORTED_OPERATIONS[resource_type] if self.may(op, resource_type, name))

    def passes(self, check: Check) -> bool:
        """A whole-request check whose source is the cluster or one field of the request (None: nothing to check)."""
        if any(self.passes(u) for u in check.unless):
            return True
        name = CLUSTER_NAME if check.source == CLUSTER else getattr(self.body, check.source, None)
        return name is None or self.may(check.operation, check.resource_type, name)

    def deny(self, code: ErrorCode) -> Response:
        """The whole request answered with `code`."""
        cls = response_class(self.req.api_key, self.req.version)
        return Response(error_response(cls, self.body, code, None))

    def topic_name(self, item: Any, name_field: str = "name") -> str | None:
        """A request topic's name, or the name of its topic id (None: unknown id)."""
        name = getattr(item, name_field, None)
        if name is None and (topic_id := getattr(item, "topic_id", None)) is not None:
            if not isinstance(topic_id, uuid.UUID):
                topic_id = uuid.UUID(str(topic_id))
            topic = self.enforcer.topics.by_id(topic_id)
            return topic.name if topic is not None else None
        return name

    def split(self, field: str,
              denial: Callable[[Any], ErrorCode | None]) -> tuple[Request, list[tuple[Any, ErrorCode]]]:
        """The request without the items of array `field` that `denial` refuses, and those items with their error."""
        kept, denied = [], []
        for item in getattr(self.body, field):
            code = denial(item)
            if code is None:
                kept.append(item)
            else:
                denied.append((item, code))
        if not denied:
            return self.req, denied
        return dataclasses.replace(self.req, body=dataclasses.replace(self.body, **{field: tuple(kept)})), denied

    def answer_denied(self, field: str, denied: list[tuple[Any, ErrorCode]],
                      then: Finish | None = None) -> Finish | None:
        """A finish that adds an entry per denied request item to the response's array `field` (and then `then`)."""
        if not denied:
            return then

        def finish(response: Any) -> Any:
            item_cls = _item_class(type(response), field)
            entries = tuple(error_entry(item_cls, item, code) for item, code in denied)
            response = dataclasses.replace(response, **{field: getattr(response, field) + entries})
            return then(response) if then is not None else response

        return finish


def _item_class(cls: type, field: str) -> type:
    for f in dataclasses.fields(cls):
        if f.name == field:
            kind = classify_field(f)
            assert isinstance(kind, EntityTupleField), f"{cls.__name__}.{field} is not an array of entities"
            return kind.type_
    raise KeyError(f"{cls.__name__} has no {field}")


def _whole_request_checks(checks: tuple[Check, ...]) -> bool:
    return all(c.scope is Scope.REQUEST and not c.when and (c.source == CLUSTER or c.source.isidentifier())
               for c in checks)


Policy: TypeAlias = Callable[[Call], Verdict]


class Enforcer:
    def __init__(self, authorizer: Authorizer, topics: TopicCatalog, routed: Iterable[int]):
        """routed: the API keys the broker answers; each one gets a policy (or this fails: none goes unchecked)."""
        self.authorizer = authorizer
        self.topics = topics
        self._policies: dict[int, Policy] = {}
        for key in routed:
            checks = API_CHECKS[key].checks
            if key in _POLICIES:
                self._policies[key] = _POLICIES[key]
            elif key in apis.TRANSACTION_APIS or not checks:
                continue  # answered with errors anyway (no transactions), or nothing to check (ApiVersions)
            elif _whole_request_checks(checks):
                self._policies[key] = _table_policy(checks)
            else:
                raise ValueError(f"no authorization policy for {API_CHECKS[key].name}")

    def check(self, ctx: RequestContext, req: Request) -> Verdict:
        policy = self._policies.get(req.api_key)
        if policy is None:
            return req, None
        return policy(Call(self, ctx, req))


def _table_policy(checks: tuple[Check, ...]) -> Policy:
    def policy(call: Call) -> Verdict:
        for c in checks:
            if not call.passes(c):
                return call.deny(c.error)
        return call.req, None
    return policy


# --- policies ----------------------------------------------------------------------------------------------------

def _produce(call: Call) -> Verdict:
    denied = frozenset(name for t in call.body.topic_data
                       if (name := call.topic_name(t)) is not None and not call.may(Op.WRITE, R.TOPIC, name))
    if denied:
        call.ctx.denied_topics = denied
    return call.req, None


def _fetch(call: Call) -> Verdict:
    replica = getattr(call.body, "replica_id", -1)
    state = getattr(call.body, "replica_state", None)
    follower = replica >= 0 or (state is not None and state.replica_id >= 0)
    denied = frozenset(name for t in call.body.topics if (name := call.topic_name(t, "topic")) is not None
                       and (follower and not call.may_cluster(Op.CLUSTER_ACTION)
                            or not follower and not call.may(Op.READ, R.TOPIC, name)))
    if denied:
        call.ctx.denied_topics = denied
    return call.req, None


def _topics_each(field: str, operation: Operation, response_field: str, name_field: str = "name",
                 unless_cluster: Operation | None = None) -> Policy:
    """Each topic of request array `field` needs `operation` (unless the cluster allows `unless_cluster`)."""
    def policy(call: Call) -> Verdict:
        if unless_cluster is not None and call.may_cluster(unless_cluster):
            return call.req, None
        req, denied = call.split(field, lambda t: _topic_denial(call, t, operation, name_field))
        return req, call.answer_denied(response_field, denied)
    return policy


def _topic_denial(call: Call, item: Any, operation: Operation, name_field: str = "name") -> ErrorCode | None:
    name = item if isinstance(item, str) else call.topic_name(item, name_field)
    return None if name is None or call.may(operation, R.TOPIC, name) else TOPIC_DENIED


def _metadata(call: Call) -> Verdict:
    body = call.body
    req, finish = call.req, None
    every_topic = body.topics is None or (call.req.version == 0 and not body.topics)  # v0: [] is all
    if not every_topic:
        create_cluster = None
        auto_create = getattr(body, "allow_auto_topic_creation", True)  # v0-3: always

        def denial(t: Any) -> ErrorCode | None:
            nonlocal create_cluster
            name = call.topic_name(t)
            if name is None:
                return None  # an unknown id: the handler says so
            if not call.may(Op.DESCRIBE, R.TOPIC, name):
                return TOPIC_DENIED
            if auto_create and call.enforcer.topics.cached(name) is None:
                if create_cluster is None:
                    create_cluster = call.may_cluster(Op.CREATE)
                if not create_cluster and not call.may(Op.CREATE, R.TOPIC, name):
                    return TOPIC_DENIED
            return None

        req, denied = call.split("topics", denial)
        finish = call.answer_denied("topics", denied)
    include_topic_ops = getattr(body, "include_topic_authorized_operations", False)
    include_cluster_ops = getattr(body, "include_cluster_authorized_operations", False)

    def visible(response: Any) -> Any:
        topics = response.topics
        if every_topic:
            topics = tuple(t for t in topics if t.name is not None and call.may(Op.DESCRIBE, R.TOPIC, t.name))
        if include_topic_ops:
            topics = tuple(dataclasses.replace(t, topic_authorized_operations=call.operations(R.TOPIC, t.name))
                           if t.error_code == ErrorCode.none and t.name is not None else t for t in topics)
        response = dataclasses.replace(response, topics=topics)
        if include_cluster_ops:
            response = dataclasses.replace(response, cluster_authorized_operations=_cluster_operations(call))
        return response

    return req, _then(finish, visible)


def _cluster_operations(call: Call) -> int:
    return call.operations(R.CLUSTER, CLUSTER_NAME) if call.may_cluster(Op.DESCRIBE) else 0


def _then(first: Finish | None, second: Finish) -> Finish:
    if first is None:
        return second
    return lambda response: second(first(response))


def _describe_cluster(call: Call) -> Verdict:
    if not call.body.include_cluster_authorized_operations:
        return call.req, None
    return call.req, lambda r: dataclasses.replace(r, cluster_authorized_operations=_cluster_operations(call))


def _group_then_topics(group_op: Operation, topic_op: Operation) -> Policy:
    """OffsetCommit, OffsetDelete: the group as a whole, then each topic."""
    def policy(call: Call) -> Verdict:
        if not call.may(group_op, R.GROUP, call.body.group_id):
            return call.deny(GROUP_DENIED)
        req, denied = call.split("topics", lambda t: _topic_denial(call, t, topic_op))
        return req, call.answer_denied("topics", denied)
    return policy


def _offset_fetch(call: Call) -> Verdict:
    body = call.body

    def topics_seen(topics: Any, listed: bool) -> Any:
        # Committed offsets of topics the principal may not describe: hidden when all were asked for, an error
        # per partition when they were named.
        out = []
        for t in topics:
            name = call.topic_name(t)
            if name is None or call.may(Op.DESCRIBE, R.TOPIC, name):
                out.append(t)
            elif listed:
                out.append(dataclasses.replace(t, partitions=tuple(
                    dataclasses.replace(p, error_code=TOPIC_DENIED, committed_offset=-1) for p in t.partitions)))
        return tuple(out)

    if hasattr(body, "groups"):  # v8+: several groups
        req, denied = call.split("groups", lambda g: None if call.may(Op.DESCRIBE, R.GROUP, g.group_id)
                                 else GROUP_DENIED)
        listed = {g.group_id: g.topics is not None for g in body.groups}

        def seen(response: Any) -> Any:
            return dataclasses.replace(response, groups=tuple(
                dataclasses.replace(g, topics=topics_seen(g.topics, listed.get(g.group_id, False)))
                if g.error_code == ErrorCode.none else g for g in response.groups))

        return req, call.answer_denied("groups", [(dataclasses.replace(g, topics=()), code) for g, code in denied],
                                       seen)
    if not call.may(Op.DESCRIBE, R.GROUP, body.group_id):
        return call.deny(GROUP_DENIED)
    return call.req, lambda r: dataclasses.replace(r, topics=topics_seen(r.topics, body.topics is not None))


def _find_coordinator(call: Call) -> Verdict:
    body = call.body
    resource = _FIND_COORDINATOR_KEYS.get(getattr(body, "key_type", 0))  # v0: groups only
    if resource is None:
        return call.req, None  # SHARE and unknown types: the handler refuses them
    resource_type, code = resource
    if not hasattr(body, "coordinator_keys"):  # v0-3: one key
        return (call.req, None) if call.may(Op.DESCRIBE, resource_type, body.key) else call.deny(code)
    req, denied = call.split("coordinator_keys", lambda k: None if call.may(Op.DESCRIBE, resource_type, k) else code)
    return req, call.answer_denied("coordinators", denied)


def _groups_each(field: str, operation: Operation, response_field: str, ops_field: str | None = None) -> Policy:
    """DescribeGroups, DeleteGroups, ConsumerGroupDescribe: each group of request array `field`."""
    def policy(call: Call) -> Verdict:
        req, denied = call.split(field, lambda g: None if call.may(operation, R.GROUP, g) else GROUP_DENIED)
        finish = call.answer_denied(response_field, denied)
        if ops_field is not None and getattr(call.body, "include_authorized_operations", False):
            finish = _then(finish, lambda r: dataclasses.replace(r, **{response_field: tuple(
                dataclasses.replace(g, **{ops_field: call.operations(R.GROUP, g.group_id)})
                if g.error_code == ErrorCode.none else g for g in getattr(r, response_field))}))
        return req, finish
    return policy


def _create_topics(call: Call) -> Verdict:
    """CREATE on each topic unless on the cluster; from v5 a created topic's configs are answered only with
    DESCRIBE_CONFIGS on it (else topic_config_error_code says TOPIC_AUTHORIZATION_FAILED, as Kafka does)."""
    verdict = _create_each(call)
    if isinstance(verdict, Response) or call.req.version < 5:
        return verdict
    req, finish = verdict

    def configs_seen(response: Any) -> Any:
        return dataclasses.replace(response, topics=tuple(
            dataclasses.replace(t, configs=(), topic_config_error_code=TOPIC_DENIED)
            if t.error_code == ErrorCode.none and not call.may(Op.DESCRIBE_CONFIGS, R.TOPIC, t.name) else t
            for t in response.topics))

    return req, _then(finish, configs_seen)


_create_each = _topics_each("topics", Op.CREATE, "topics", unless_cluster=Op.CREATE)


def _list_groups(call: Call) -> Verdict:
    if call.may_cluster(Op.DESCRIBE):
        return call.req, None
    return call.req, lambda r: dataclasses.replace(r, groups=tuple(
        g for g in r.groups if call.may(Op.DESCRIBE, R.GROUP, g.group_id)))


def _delete_topics(call: Call) -> Verdict:
    if call.may_cluster(Op.DELETE):
        return call.req, None
    field = "topics" if hasattr(call.body, "topics") else "topic_names"  # v6 names topics or ids

    def denial(t: Any) -> ErrorCode | None:
        name = t if isinstance(t, str) else call.topic_name(t)
        if name is None:
            return None
        ok = call.may(Op.DESCRIBE, R.TOPIC, name) and call.may(Op.DELETE, R.TOPIC, name)
        return None if ok else TOPIC_DENIED

    req, denied = call.split(field, denial)
    return req, call.answer_denied("responses", denied)


def _init_producer_id(call: Call) -> Verdict:
    txn = call.body.transactional_id
    if txn is not None:
        return (call.req, None) if call.may(Op.WRITE, R.TRANSACTIONAL_ID, txn) else call.deny(TXN_DENIED)
    if call.may_cluster(Op.IDEMPOTENT_WRITE) or call.enforcer.authorizer.authorize_by_resource_type(
            call.principal, call.host, Op.WRITE, R.TOPIC):
        return call.req, None
    return call.deny(CLUSTER_DENIED)


def _configs(operation: Operation, response_field: str) -> Policy:
    def policy(call: Call) -> Verdict:
        def denial(resource: Any) -> ErrorCode | None:
            kind = _CONFIG_RESOURCES.get(resource.resource_type)
            if kind is None:
                return None  # an unknown type: the handler refuses it
            resource_type, code = kind
            name = CLUSTER_NAME if resource_type is R.CLUSTER else resource.resource_name
            return None if call.may(operation, resource_type, name) else code
        req, denied = call.split("resources", denial)
        return req, call.answer_denied(response_field, denied)
    return policy


def _consumer_group_heartbeat(call: Call) -> Verdict:
    body = call.body
    if not call.may(Op.READ, R.GROUP, body.group_id):
        return call.deny(GROUP_DENIED)
    if any(not call.may(Op.DESCRIBE, R.TOPIC, t) for t in body.subscribed_topic_names or ()):
        return call.deny(TOPIC_DENIED)
    return call.req, None


_POLICIES: dict[int, Policy] = {
    apis.PRODUCE: _produce,
    apis.FETCH: _fetch,
    apis.LIST_OFFSETS: _topics_each("topics", Op.DESCRIBE, "topics"),
    apis.METADATA: _metadata,
    apis.OFFSET_COMMIT: _group_then_topics(Op.READ, Op.READ),
    apis.OFFSET_FETCH: _offset_fetch,
    apis.FIND_COORDINATOR: _find_coordinator,
    apis.DESCRIBE_GROUPS: _groups_each("groups", Op.DESCRIBE, "groups", "authorized_operations"),
    apis.LIST_GROUPS: _list_groups,
    apis.CREATE_TOPICS: _create_topics,
    apis.DELETE_TOPICS: _delete_topics,
    apis.INIT_PRODUCER_ID: _init_producer_id,
    apis.DESCRIBE_CONFIGS: _configs(Op.DESCRIBE_CONFIGS, "results"),
    apis.ALTER_CONFIGS: _configs(Op.ALTER_CONFIGS, "responses"),
    apis.INCREMENTAL_ALTER_CONFIGS: _configs(Op.ALTER_CONFIGS, "responses"),
    apis.CREATE_PARTITIONS: _topics_each("topics", Op.ALTER, "results"),
    apis.DELETE_RECORDS: _topics_each("topics", Op.DELETE, "topics"),
    apis.DELETE_GROUPS: _groups_each("groups_names", Op.DELETE, "results"),
    apis.OFFSET_DELETE: _group_then_topics(Op.DELETE, Op.READ),
    apis.DESCRIBE_CLUSTER: _describe_cluster,
    apis.CONSUMER_GROUP_HEARTBEAT: _consumer_group_heartbeat,
    apis.CONSUMER_GROUP_DESCRIBE: _groups_each("group_ids", Op.DESCRIBE, "groups", "authorized_operations"),
}
