"""Consumer group APIs (classic protocol): thin translations between kio entities and the group coordinator.

FindCoordinator (v0-6), JoinGroup (v0-9), SyncGroup (v0-5), Heartbeat (v0-4), LeaveGroup (v0-5), OffsetCommit
(v2-10), OffsetFetch (v1-10), OffsetDelete (v0), ListGroups (v0-5), DescribeGroups (v0-6), DeleteGroups (v0-2);
KIP-848: ConsumerGroupHeartbeat (v0-1), ConsumerGroupDescribe (v0-1).
JoinGroup and SyncGroup defer their answers (Deferred), so that the connection keeps reading while they wait at the
join or sync barrier.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from dray_broker.groups.consumer_state import HeartbeatRequest, HeartbeatResult
from dray_broker.groups.coordinator import CoordinatorError, NotClassicGroupError
from dray_broker.groups.state import JoinRequest, JoinResult, SyncResult
from dray_broker.groups.store import CommittedOffset
from dray_broker.protocol.codec import NULL_UUID, Request, make, ms, response_module
from dray_broker.server.handling import Deferred, HandlerResult, RequestContext, Response
from dray_broker.server.services import GroupService
from dray_broker.topics.catalog import TopicCatalog

log = logging.getLogger(__name__)

KEY_TYPE_GROUP, KEY_TYPE_TRANSACTION = 0, 1
UNKNOWN_AUTHORIZED_OPERATIONS = -2147483648
# Without an authorizer Kafka grants every operation a group supports: READ(3), DELETE(6), DESCRIBE(8).
GROUP_OPERATIONS = sum(1 << op for op in (3, 6, 8))
GROUP_TYPE_CLASSIC = "classic"


# --- FindCoordinator ------------------------------------------------------------------------------------------


async def handle_find_coordinator(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    key_type = getattr(body, "key_type", KEY_TYPE_GROUP)
    keys = list(body.coordinator_keys) if req.version >= 4 else [body.key]
    coordinator = groups.coordinator
    found = []
    for key in keys:
        node, error, message = None, ErrorCode.none, None
        if key_type == KEY_TYPE_TRANSACTION:
            error, message = ErrorCode.transactional_id_authorization_failed, \
                "transactions are not supported by this broker (Dray)"
        elif key_type != KEY_TYPE_GROUP:
            error, message = ErrorCode.invalid_request, f"coordinator key type {key_type} is not supported"
        else:
            try:
                node = await coordinator.find_coordinator(key, ctx.client_id, ctx.listener)
                if node is None:
                    error, message = ErrorCode.coordinator_not_available, \
                        f"the coordinator has no {ctx.listener} listener"
            except Exception as e:
                log.warning("FindCoordinator(%r) failed: %r", key, e)
                error, message = ErrorCode.coordinator_not_available, "the metadata store is unavailable"
        found.append((key, node, error, message))
    if req.version >= 4:
        return Response(make(M.FindCoordinatorResponse, throttle_time=0, coordinators=tuple(
            make(M.Coordinator, key=key, node_id=node.id if node else -1, host=node.host if node else "",
                 port=node.port if node else -1, error_code=error, error_message=message)
            for key, node, error, message in found
        )))
    _, node, error, message = found[0]
    return Response(make(M.FindCoordinatorResponse, throttle_time=0, error_code=error, error_message=message,
                         node_id=node.id if node else -1, host=node.host if node else "",
                         port=node.port if node else -1))


# --- JoinGroup, SyncGroup, Heartbeat, LeaveGroup -------------------------------------------------------------


async def handle_join_group(groups: GroupService, ctx: RequestContext, req: Request) -> HandlerResult:
    body = req.body
    M = response_module(req.api_key, req.version)

    def response(r: JoinResult) -> Response:
        protocol_name = r.protocol_name
        if protocol_name is None and req.version < 7:
            protocol_name = ""  # nullable from v7 only
        return Response(make(
            M.JoinGroupResponse, throttle_time=0, error_code=r.error, generation_id=r.generation_id,
            protocol_type=r.protocol_type, protocol_name=protocol_name, leader=r.leader,
            skip_assignment=r.skip_assignment, member_id=r.member_id,
            members=tuple(make(M.JoinGroupResponseMember, member_id=m.member_id,
                               group_instance_id=m.group_instance_id, metadata=m.metadata) for m in r.members),
        ))

    if not body.group_id:
        return response(JoinResult(ErrorCode.invalid_group_id, member_id=body.member_id))
    session_timeout = ms(body.session_timeout)
    rebalance_timeout = ms(getattr(body, "rebalance_timeout", None))
    if rebalance_timeout < 0:  # v0 has none: the session timeout serves
        rebalance_timeout = session_timeout
    join = JoinRequest(
        member_id=body.member_id, group_instance_id=getattr(body, "group_instance_id", None),
        client_id=ctx.client_id or "", client_host=ctx.client_host,
        session_timeout_ms=session_timeout,
        rebalance_timeout_ms=rebalance_timeout, protocol_type=body.protocol_type,
        protocols=tuple((p.name, bytes(p.metadata)) for p in body.protocols),
        require_known_member_id=req.version >= 4, supports_skip_assignment=req.version >= 9,
        reason=getattr(body, "reason", None),
    )
    coordinator = groups.coordinator

    async def answer() -> Response:
        try:
            result = await coordinator.join(body.group_id, join)
        except CoordinatorError as e:
            result = JoinResult(e.error, member_id=body.member_id)
        return response(result)

    return Deferred(answer())


async def handle_sync_group(groups: GroupService, ctx: RequestContext, req: Request) -> HandlerResult:
    body = req.body
    M = response_module(req.api_key, req.version)

    def response(r: SyncResult) -> Response:
        return Response(make(M.SyncGroupResponse, throttle_time=0, error_code=r.error,
                             protocol_type=r.protocol_type, protocol_name=r.protocol_name, assignment=r.assignment))

    if not body.group_id:
        return response(SyncResult(ErrorCode.invalid_group_id))
    assignments = {a.member_id: bytes(a.assignment) for a in body.assignments}
    coordinator = groups.coordinator

    async def answer() -> Response:
        try:
            result = await coordinator.sync(
                body.group_id, body.member_id, getattr(body, "group_instance_id", None), body.generation_id,
                getattr(body, "protocol_type", None), getattr(body, "protocol_name", None), assignments,
            )
        except CoordinatorError as e:
            result = SyncResult(e.error)
        return response(result)

    return Deferred(answer())


async def handle_heartbeat(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    if not body.group_id:
        error = ErrorCode.invalid_group_id
    else:
        try:
            error = await groups.coordinator.heartbeat(
                body.group_id, body.member_id, getattr(body, "group_instance_id", None), body.generation_id)
        except CoordinatorError as e:
            error = e.error
    return Response(make(M.HeartbeatResponse, throttle_time=0, error_code=error))


async def handle_leave_group(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    if req.version >= 3:
        members = [(m.member_id, m.group_instance_id) for m in body.members]
    else:
        members = [(body.member_id, None)]
    results: list[ErrorCode] = []
    if not body.group_id:
        error = ErrorCode.invalid_group_id
    else:
        try:
            error, results = await groups.coordinator.leave(body.group_id, members)
        except CoordinatorError as e:
            error, results = e.error, []
    if req.version < 3:
        if error == ErrorCode.none and results:
            error = results[0]
        return Response(make(M.LeaveGroupResponse, throttle_time=0, error_code=error))
    return Response(make(M.LeaveGroupResponse, throttle_time=0, error_code=error, members=tuple(
        make(M.MemberResponse, member_id=member_id, group_instance_id=instance_id, error_code=member_error)
        for (member_id, instance_id), member_error in zip(members, results)
    ) if error == ErrorCode.none else ()))


# --- OffsetCommit, OffsetFetch, OffsetDelete ----------------------------------------------------------------


def _topic_name(topics: TopicCatalog, topic: Any) -> str | None:
    """The topic's name: given (v<=9), or resolved from its id (v10)."""
    name: str | None = getattr(topic, "name", None)
    if name is not None:
        return name
    t = topics.by_id(topic.topic_id)
    return t.name if t is not None else None


def _topic_id(topics: TopicCatalog, name: str) -> uuid.UUID:
    t = topics.cached(name)
    return t.id if t is not None else NULL_UUID


async def _commit_target_errors(topics: TopicCatalog, t: Any, by_id: bool) -> tuple[str, list[ErrorCode | None]]:
    """As Kafka checks an OffsetCommit topic before the group sees it: the topic's name, and per partition None
    (commit it) or the error to answer. An unknown topic id (v10) is UNKNOWN_TOPIC_ID; an unknown topic name or a
    partition index out of range is UNKNOWN_TOPIC_OR_PARTITION."""
    if by_id:
        topic = topics.by_id(t.topic_id)
        if topic is None:
            return "", [ErrorCode.unknown_topic_id] * len(t.partitions)
    else:
        topic = await topics.get(t.name)
        if topic is None:
            return t.name, [ErrorCode.unknown_topic_or_partition] * len(t.partitions)
    return topic.name, [None if 0 <= p.partition_index < topic.partitions else ErrorCode.unknown_topic_or_partition
                        for p in t.partitions]


async def handle_offset_commit(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    checked = []  # per topic: per partition, the error to answer or None (committed by the group)
    entries: list[tuple[str, int, int, int, str | None]] = []
    for t in body.topics:
        name, errors = await _commit_target_errors(groups.topics, t, by_id=req.version >= 10)
        checked.append(errors)
        for p, error in zip(t.partitions, errors):
            if error is None:
                entries.append((name, p.partition_index, p.committed_offset,
                                getattr(p, "committed_leader_epoch", -1), p.committed_metadata))
    # As Kafka: when no partition is committable, the group is not consulted at all.
    try:
        results = await groups.coordinator.commit_offsets(
            body.group_id, body.member_id, getattr(body, "group_instance_id", None),
            body.generation_id_or_member_epoch, req.version, entries,
            retention_ms=ms(getattr(body, "retention_time", None)),
        ) if entries else []
    except CoordinatorError as e:
        results = [e.error] * len(entries)
    it = iter(results)
    topics = []
    for t, errors in zip(body.topics, checked):
        topics.append(make(
            M.OffsetCommitResponseTopic, name=getattr(t, "name", None), topic_id=getattr(t, "topic_id", None),
            partitions=tuple(make(M.OffsetCommitResponsePartition, partition_index=p.partition_index,
                                  error_code=next(it) if e is None else e)
                             for p, e in zip(t.partitions, errors)),
        ))
    return Response(make(M.OffsetCommitResponse, throttle_time=0, topics=tuple(topics)))


async def _without_offsets_of_earlier_topics(
    topics: TopicCatalog, found: dict[tuple[str, int], CommittedOffset | None], listed: bool,
) -> dict[tuple[str, int], CommittedOffset | None]:
    """Offsets committed before their topic was created belong to a deleted topic of the same name: as Kafka
    deletes a deleted topic's offsets, they count as none (else a group would skip into the new topic). listed:
    the caller asked for every committed offset, so such partitions are left out."""
    created = {}  # topic name -> creation time, for the topics that have committed offsets here
    for name in {n for (n, _), o in found.items() if o is not None}:
        topic = await topics.get(name)
        if topic is not None:
            created[name] = topic.created_ms
    out = {}
    for (name, p), o in found.items():
        if o is not None and name in created and o.commit_timestamp < created[name]:
            if listed:
                continue
            o = None
        out[(name, p)] = o
    return out


async def _fetch_group(groups: GroupService, group_id: str, topics: Any, version: int, topic_cls: type,
                       partition_cls: type, member_id: str | None = None,
                       member_epoch: int = -1) -> tuple[ErrorCode, tuple[Any, ...]]:
    """One group's OffsetFetch answer: (error, topics), built with the version's topic and partition classes
    (their names differ between v1-7 and v8+)."""
    by_id = version >= 10
    wanted: list[tuple[str, int]] | None = None
    unknown_ids = []
    if topics is not None:
        wanted = []
        for t in topics:
            name = _topic_name(groups.topics, t)
            if name is None:
                unknown_ids.append(t)
                continue
            wanted.extend((name, p) for p in t.partition_indexes)
    found: dict[tuple[str, int], CommittedOffset | None] | None
    try:
        fetched = await groups.coordinator.fetch_offsets(group_id, wanted, member_id, member_epoch,
                                                         check_member=version >= 9)
        found = await _without_offsets_of_earlier_topics(groups.topics, fetched, listed=wanted is None)
        error = ErrorCode.none
    except CoordinatorError as e:
        error, found = e.error, None

    def partition(index: int, o: CommittedOffset | None, partition_error: ErrorCode = ErrorCode.none) -> Any:
        return make(partition_cls, partition_index=index, committed_offset=o.offset if o else -1,
                    committed_leader_epoch=o.leader_epoch if o else -1, metadata=o.metadata if o else "",
                    error_code=partition_error)

    if found is None:
        if version >= 2:
            return error, ()
        # v1 has no group error: every requested partition carries it.
        return error, tuple(make(topic_cls, name=t.name, partitions=tuple(
            partition(p, None, error) for p in t.partition_indexes)) for t in topics)
    grouped: dict[str, list[Any]] = {}
    for (topic, p), o in found.items():
        grouped.setdefault(topic, []).append(partition(p, o))
    out = []
    for topic, partitions in grouped.items():
        if by_id:
            topic_id = _topic_id(groups.topics, topic)
            if topic_id == NULL_UUID and topics is None:
                continue  # a deleted topic cannot be named by id
            out.append(make(topic_cls, topic_id=topic_id, partitions=tuple(partitions)))
        else:
            out.append(make(topic_cls, name=topic, partitions=tuple(partitions)))
    for t in unknown_ids:
        out.append(make(topic_cls, topic_id=t.topic_id, partitions=tuple(
            partition(p, None, ErrorCode.unknown_topic_id) for p in t.partition_indexes)))
    return error, tuple(out)


async def handle_offset_fetch(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    if req.version >= 8:
        answers = []
        for g in body.groups:
            error, topics = await _fetch_group(groups, g.group_id, g.topics, req.version,
                                               M.OffsetFetchResponseTopics, M.OffsetFetchResponsePartitions,
                                               getattr(g, "member_id", None), getattr(g, "member_epoch", -1))
            answers.append(make(M.OffsetFetchResponseGroup, group_id=g.group_id, topics=topics, error_code=error))
        return Response(make(M.OffsetFetchResponse, throttle_time=0, groups=tuple(answers)))
    error, topics = await _fetch_group(groups, body.group_id, body.topics, req.version,
                                       M.OffsetFetchResponseTopic, M.OffsetFetchResponsePartition)
    return Response(make(M.OffsetFetchResponse, throttle_time=0, topics=topics, error_code=error))


async def handle_offset_delete(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    wanted = [(t.name, [p.partition_index for p in t.partitions]) for t in body.topics]
    try:
        error, results = await groups.coordinator.delete_offsets(body.group_id, wanted)
    except CoordinatorError as e:
        error, results = e.error, {}
    topics = () if error != ErrorCode.none else tuple(
        make(M.OffsetDeleteResponseTopic, name=name, partitions=tuple(
            make(M.OffsetDeleteResponsePartition, partition_index=p, error_code=results[(name, p)])
            for p in partitions))
        for name, partitions in wanted
    )
    return Response(make(M.OffsetDeleteResponse, error_code=error, throttle_time=0, topics=topics))


# --- ListGroups, DescribeGroups, DeleteGroups ---------------------------------------------------------------


async def handle_list_groups(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    states = {s.strip().lower() for s in getattr(body, "states_filter", ())}
    types = {t.strip().lower() for t in getattr(body, "types_filter", ())}
    try:
        listed = await groups.coordinator.list_groups()
        error = ErrorCode.none
    except Exception as e:
        log.warning("ListGroups failed: %r", e)
        listed, error = [], ErrorCode.coordinator_not_available
    found = tuple(
        make(M.ListedGroup, group_id=g.group_id, protocol_type=g.protocol_type, group_state=g.state,
             group_type=g.group_type)
        for g in listed
        if (not states or g.state.lower() in states) and (not types or g.group_type in types)
    )
    return Response(make(M.ListGroupsResponse, throttle_time=0, error_code=error, groups=found))


async def handle_describe_groups(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    operations = GROUP_OPERATIONS if getattr(body, "include_authorized_operations", False) \
        else UNKNOWN_AUTHORIZED_OPERATIONS
    coordinator = groups.coordinator
    out = []
    for group_id in body.groups:
        try:
            d = await coordinator.describe(group_id)
        except NotClassicGroupError as e:
            # KIP-1043: v6 says GROUP_ID_NOT_FOUND; older versions a Dead group.
            not_found = req.version >= 6
            out.append(make(
                M.DescribedGroup, error_code=ErrorCode.group_id_not_found if not_found else ErrorCode.none,
                error_message=str(e) if not_found else None, group_id=group_id, group_state="Dead",
                protocol_type="", protocol_data="", members=(), authorized_operations=UNKNOWN_AUTHORIZED_OPERATIONS,
            ))
            continue
        except CoordinatorError as e:
            out.append(make(M.DescribedGroup, error_code=e.error, error_message=str(e), group_id=group_id,
                            group_state="", protocol_type="", protocol_data="", members=(),
                            authorized_operations=UNKNOWN_AUTHORIZED_OPERATIONS))
            continue
        if d is None:
            not_found = req.version >= 6
            out.append(make(
                M.DescribedGroup, error_code=ErrorCode.group_id_not_found if not_found else ErrorCode.none,
                error_message=f"Group {group_id} not found." if not_found else None, group_id=group_id,
                group_state="Dead", protocol_type="", protocol_data="", members=(),
                authorized_operations=UNKNOWN_AUTHORIZED_OPERATIONS,
            ))
            continue
        out.append(make(
            M.DescribedGroup, error_code=ErrorCode.none, error_message=None, group_id=group_id,
            group_state=d.state, protocol_type=d.protocol_type, protocol_data=d.protocol_data,
            members=tuple(make(M.DescribedGroupMember, member_id=m.member_id, group_instance_id=m.group_instance_id,
                               client_id=m.client_id, client_host=m.client_host, member_metadata=m.metadata,
                               member_assignment=m.assignment) for m in d.members),
            authorized_operations=operations,
        ))
    return Response(make(M.DescribeGroupsResponse, throttle_time=0, groups=tuple(out)))


async def handle_delete_groups(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    coordinator = groups.coordinator
    results = []
    for group_id in body.groups_names:
        try:
            error = await coordinator.delete_group(group_id)
        except CoordinatorError as e:
            error = e.error
        results.append(make(M.DeletableGroupResult, group_id=group_id, error_code=error))
    return Response(make(M.DeleteGroupsResponse, throttle_time=0, results=tuple(results)))


# --- ConsumerGroupHeartbeat, ConsumerGroupDescribe (KIP-848) -------------------------------------------------


def _owned_parts(topic_partitions: Any) -> dict[str, set[int]] | None:
    if topic_partitions is None:
        return None
    return {str(tp.topic_id): set(tp.partitions) for tp in topic_partitions if tp.partitions}


async def handle_consumer_group_heartbeat(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)

    def response(r: HeartbeatResult) -> Response:
        assignment = None
        if r.assignment is not None:
            assignment = make(M.Assignment, topic_partitions=tuple(
                make(M.TopicPartitions, topic_id=uuid.UUID(t), partitions=tuple(sorted(ps)))
                for t, ps in sorted(r.assignment.items())))
        return Response(make(M.ConsumerGroupHeartbeatResponse, throttle_time=0, error_code=r.error,
                             error_message=r.message, member_id=r.member_id, member_epoch=r.member_epoch,
                             heartbeat_interval=r.heartbeat_interval_ms, assignment=assignment))

    hb = HeartbeatRequest(
        member_id=body.member_id, member_epoch=body.member_epoch, instance_id=body.instance_id,
        rack_id=body.rack_id, rebalance_timeout_ms=ms(body.rebalance_timeout),
        subscribed_topic_names=None if body.subscribed_topic_names is None else tuple(body.subscribed_topic_names),
        subscribed_topic_regex=getattr(body, "subscribed_topic_regex", None), server_assignor=body.server_assignor,
        owned=_owned_parts(body.topic_partitions), client_id=ctx.client_id or "", client_host=ctx.client_host,
        # Only an authorizer needs to know who the member is (its regex matches what it may describe).
        principal=str(ctx.principal) if groups.coordinator.consumer_config.may_describe is not None else None,
    )
    if not body.group_id:
        return response(HeartbeatResult(ErrorCode.invalid_request, "GroupId can't be empty.", body.member_id,
                                        body.member_epoch))
    if req.version >= 1 and not body.member_id:
        return response(HeartbeatResult(ErrorCode.invalid_request, "MemberId can't be empty.", body.member_id,
                                        body.member_epoch))
    try:
        result = await groups.coordinator.consumer_heartbeat(body.group_id, hb)
    except CoordinatorError as e:
        result = HeartbeatResult(e.error, str(e), body.member_id, body.member_epoch)
    return response(result)


async def handle_consumer_group_describe(groups: GroupService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    operations = GROUP_OPERATIONS if body.include_authorized_operations else UNKNOWN_AUTHORIZED_OPERATIONS
    coordinator = groups.coordinator

    def assignment(parts: dict[str, set[int]]) -> Any:
        out = []
        for t, ps in sorted(parts.items()):
            topic = groups.topics.by_id(uuid.UUID(t))
            out.append(make(M.TopicPartitions, topic_id=uuid.UUID(t), topic_name=topic.name if topic else "",
                            partitions=tuple(sorted(ps))))
        return make(M.Assignment, topic_partitions=tuple(out))

    described = []
    for group_id in body.group_ids:
        try:
            d = await coordinator.consumer_describe(group_id)
        except CoordinatorError as e:
            described.append(make(M.DescribedGroup, error_code=e.error, error_message=str(e), group_id=group_id,
                               group_state="Dead" if e.error == ErrorCode.group_id_not_found else "",
                               group_epoch=-1, assignment_epoch=-1, assignor_name="", members=(),
                               authorized_operations=UNKNOWN_AUTHORIZED_OPERATIONS))
            continue
        described.append(make(
            M.DescribedGroup, error_code=ErrorCode.none, error_message=None, group_id=group_id,
            group_state=d.state, group_epoch=d.group_epoch, assignment_epoch=d.assignment_epoch,
            assignor_name=d.assignor_name, authorized_operations=operations,
            members=tuple(make(
                M.Member, member_id=m.member_id, instance_id=m.instance_id, rack_id=m.rack_id,
                member_epoch=m.member_epoch, client_id=m.client_id, client_host=m.client_host,
                subscribed_topic_names=m.subscribed_topic_names, subscribed_topic_regex=m.subscribed_topic_regex,
                assignment=assignment(m.assignment), target_assignment=assignment(m.target_assignment),
                member_type=1,
            ) for m in d.members),
        ))
    return Response(make(M.ConsumerGroupDescribeResponse, throttle_time=0, groups=tuple(described)))

