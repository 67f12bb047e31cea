"""KIP-848 consumer groups (group.protocol=consumer) as a pure state machine.

No I/O, no clock: the caller passes `now` (ms) and a view of the topics (name -> (topic id, partition count)) into
every call, persists `snapshot` whenever `snapshot_seq` grew before answering, and calls `tick(now)` at
`next_deadline()`.

Semantics follow Apache Kafka's group coordinator (ConsumerGroup, CurrentAssignmentBuilder):

- The group epoch grows whenever membership, a subscription, the preferred assignor or the subscribed topics'
  metadata (a new topic matching a regex, more partitions, a deleted topic) change. Then the assignor computes a
  new target assignment for every member (assignment epoch = group epoch).
- Each member reconciles towards its target: partitions it must give up are first revoked (the member keeps its
  epoch, its assignment shrinks to what it keeps, state UNREVOKED_PARTITIONS) and only once the member acknowledges
  (its owned partitions no longer hold them) does it move to the target epoch. A partition still held by another
  member (in its assignment or pending revocation) is not handed out (UNRELEASED_PARTITIONS) until it is released.
  So no partition is ever owned by two members. A partition being moved stays with its owner until the owner's
  next heartbeat (at the group.consumer.heartbeat.interval.ms it was told, 5 s by default as in Kafka) tells it to
  revoke; the member waiting for it is told a shorter interval (waiting_heartbeat_interval_ms), so that it gets
  the partition soon after the owner acknowledged the revocation rather than up to one more interval later.
- Member epochs are validated: a bigger epoch than the member's, or a smaller one that is not its previous epoch
  with owned partitions within its assignment, is FENCED_MEMBER_EPOCH. Epoch 0 joins, -1 leaves, -2 is a static
  member leaving for a while (it keeps its assignment until the session times out; rejoining with its instance id
  takes its place without a rebalance).
- Sessions expire after group.consumer.session.timeout.ms without a heartbeat; a member that does not revoke within
  its rebalance timeout is fenced.
- A regex new to the group is resolved just after the heartbeat that brought it (Kafka resolves regexes off the
  request path): that heartbeat's target holds the member's named topics only, and the matching topics come with
  a new group epoch, at the member's next heartbeat. A regex the group already uses counts at once; one that no
  member uses any more is forgotten. Resolved regexes follow topic changes at every heartbeat.
- With an authorizer (ConsumerConfig.may_describe), a member's regex matches only the topics its principal may
  DESCRIBE (as Kafka 4: a regex never reveals a topic the member could not see). The principal is part of the
  member's stored state, so a new coordinator filters as the old one did; a member stored without one (state
  written before) is not filtered until its next heartbeat records it. ACL changes count at every heartbeat.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable, Mapping

import re2
from kio.schema.errors import ErrorCode

from dray_broker.groups import assignors

EMPTY = "Empty"
ASSIGNING = "Assigning"
RECONCILING = "Reconciling"
STABLE = "Stable"
DEAD = "Dead"

# Member reconciliation states.
M_STABLE = "stable"
M_UNREVOKED = "unrevoked_partitions"
M_UNRELEASED = "unreleased_partitions"

LEAVE_EPOCH = -1
LEAVE_STATIC_EPOCH = -2
RECORD_TYPE = "consumer"

Topics = Mapping[str, tuple[str, int]]  # name -> (topic id as str, partition count)
Parts = dict[str, set[int]]  # topic id -> partitions
MayDescribe = Callable[[str, str, str], bool]  # (principal `Type:name`, client host, topic name) -> allowed


@dataclass(frozen=True)
class ConsumerConfig:
    session_timeout_ms: int = 45_000
    heartbeat_interval_ms: int = 5_000
    # A member waiting for partitions that others still hold is told to come back this soon (if sooner than the
    # interval), so that it gets them shortly after their owners revoke (Kafka keeps the interval).
    waiting_heartbeat_interval_ms: int = 500
    assignors: tuple[str, ...] = assignors.ASSIGNORS  # the first is the default
    may_describe: MayDescribe | None = None  # the authorizer's topic DESCRIBE check (--acls), else None


@dataclass(frozen=True)
class HeartbeatRequest:
    member_id: str
    member_epoch: int
    instance_id: str | None = None
    rack_id: str | None = None
    rebalance_timeout_ms: int = -1
    subscribed_topic_names: tuple[str, ...] | None = None
    subscribed_topic_regex: str | None = None
    server_assignor: str | None = None
    owned: Parts | None = None  # topic id -> partitions; None = unchanged since the last heartbeat
    client_id: str = ""
    client_host: str = ""
    principal: str | None = None  # `Type:name`, given only when an authorizer filters regex matches


@dataclass(frozen=True)
class HeartbeatResult:
    error: ErrorCode
    message: str | None = None
    member_id: str | None = None
    member_epoch: int = 0
    heartbeat_interval_ms: int = 0
    assignment: Parts | None = None  # None: not sent


@dataclass(eq=False)
class ConsumerMember:
    member_id: str
    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    rebalance_timeout_ms: int = 300_000
    subscribed_names: tuple[str, ...] = ()
    subscribed_regex: str | None = None
    server_assignor: str | None = None
    epoch: int = 0
    previous_epoch: int = -1
    state: str = M_STABLE
    assigned: Parts = field(default_factory=dict)
    pending_revocation: Parts = field(default_factory=dict)
    # (topic id, partition) -> the member epoch at which the member got it (KIP-1251); covers `assigned`.
    assigned_at: dict[tuple[str, int], int] = field(default_factory=dict)
    principal: str | None = None  # who the member is, for the authorizer's regex filter (None: unfiltered)
    # Runtime only.
    session_deadline: int | None = None
    revocation_deadline: int | None = None

    def to_record(self) -> dict:
        record = {
            "id": self.member_id, "instance_id": self.instance_id, "rack_id": self.rack_id,
            "client_id": self.client_id, "client_host": self.client_host,
            "rebalance_timeout_ms": self.rebalance_timeout_ms, "names": list(self.subscribed_names),
            "regex": self.subscribed_regex, "assignor": self.server_assignor, "epoch": self.epoch,
            "previous_epoch": self.previous_epoch, "state": self.state, "assigned": _enc(self.assigned),
            "revoking": _enc(self.pending_revocation),
            "assigned_at": [[t, p, e] for (t, p), e in sorted(self.assigned_at.items())],
        }
        if self.principal is not None:
            record["principal"] = self.principal
        return record

    @classmethod
    def from_record(cls, d: dict) -> "ConsumerMember":
        m = cls(
            d["id"], d.get("instance_id"), d.get("rack_id"), d.get("client_id", ""), d.get("client_host", ""),
            int(d.get("rebalance_timeout_ms", 300_000)), tuple(d.get("names", ())), d.get("regex"),
            d.get("assignor"), int(d["epoch"]), int(d.get("previous_epoch", -1)), d.get("state", M_STABLE),
            _dec(d.get("assigned", {})), _dec(d.get("revoking", {})),
            {(t, int(p)): int(e) for t, p, e in d.get("assigned_at", ())}, d.get("principal"),
        )
        m.track_assignment_epochs()
        return m

    def track_assignment_epochs(self) -> None:
        """Forget partitions no longer assigned; a newly assigned partition gets the member's current epoch."""
        self.assigned_at = {(t, p): self.assigned_at.get((t, p), self.epoch)
                            for t, ps in self.assigned.items() for p in ps}


@dataclass(frozen=True)
class DescribedConsumerMember:
    member_id: str
    instance_id: str | None
    rack_id: str | None
    member_epoch: int
    client_id: str
    client_host: str
    subscribed_topic_names: tuple[str, ...]
    subscribed_topic_regex: str | None
    assignment: Parts
    target_assignment: Parts


@dataclass(frozen=True)
class ConsumerDescription:
    state: str
    group_epoch: int
    assignment_epoch: int
    assignor_name: str
    members: tuple[DescribedConsumerMember, ...]


class ConsumerGroup:
    """One KIP-848 group. Attributes the coordinator shares with ClassicGroup: group_id, state, state_timestamp,
    members, pending_members, snapshot, snapshot_seq, generation (= group epoch), protocol_type."""

    protocol_type = "consumer"
    protocol_name = None

    def __init__(self, group_id: str, config: ConsumerConfig, now: int):
        self.group_id = group_id
        self.config = config
        self.group_epoch = 0
        self.assignment_epoch = 0
        self.members: dict[str, ConsumerMember] = {}
        self.static_members: dict[str, str] = {}
        self.target: dict[str, Parts] = {}
        self.subscription_metadata: dict[str, list] = {}  # topic name -> [topic id, partitions]
        self.pending_members: dict[str, int] = {}  # (always empty: shared interface)
        self.state_timestamp = now
        self.dead = False
        self.snapshot: dict | None = None
        self.snapshot_seq = 0
        self._regex_cache: dict[str, object] = {}
        self.resolved_regexes: set[str] = set()  # regexes whose matching topics count for the assignment
        self.regex_resolution_due: int | None = None  # when the members' new regexes get resolved
        # With an authorizer: member id -> the topics its regex gave it at the last metadata refresh (runtime only;
        # a change, e.g. an ACL granted or removed, means a new target even when the group's topics stay the same).
        self._regex_views: dict[str, frozenset[str]] | None = None

    # --- shared interface with ClassicGroup -------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self.group_epoch

    @property
    def state(self) -> str:
        if self.dead:
            return DEAD
        if not self.members:
            return EMPTY
        if self.group_epoch > self.assignment_epoch:
            return ASSIGNING
        for m in self.members.values():
            if m.state != M_STABLE or m.epoch != self.assignment_epoch:
                return RECONCILING
        return STABLE

    def take_outbox(self) -> list:
        return []

    def fail_all(self, error: ErrorCode) -> None:
        pass

    def mark_created(self) -> None:
        self._take_snapshot()

    def next_deadline(self) -> int | None:
        deadlines = [] if self.regex_resolution_due is None else [self.regex_resolution_due]
        for m in self.members.values():
            deadlines.extend(d for d in (m.session_deadline, m.revocation_deadline) if d is not None)
        return min(deadlines) if deadlines else None

    def subscribed_topic_names(self, topics: Topics | None = None) -> set[str]:
        names: set[str] = set()
        for m in self.members.values():
            names.update(m.subscribed_names)
        if topics is None:
            names.update(self.subscription_metadata)
        elif self.config.may_describe is None:
            for regex in self._regexes_in_use() & self.resolved_regexes:
                names.update(t for t in topics if self._matches(regex, t))
        else:
            names.update(*self._regex_views_of(topics).values())
        return names

    def is_subscribed_to(self, topic: str) -> bool:
        return topic in self.subscribed_topic_names()

    def offset_expiry_base(self) -> str | None:
        return "commit"  # as Kafka: a consumer group's offsets expire by their commit time

    def validate_offset_commit(self, now: int, member_id: str, group_instance_id: str | None, member_epoch: int,
                               api_version: int, partitions: list[tuple[str, int]]) -> list[ErrorCode]:
        """One error per (topic name, partition). As Kafka with KIP-1251: an epoch older than the member's is
        accepted for a partition the member was given at that epoch or before and still holds, so a commit that
        crossed a heartbeat bumping the epoch is not refused, while a zombie commit (a partition moved since) is."""
        def each(error: ErrorCode) -> list[ErrorCode]:
            return [error] * len(partitions)

        if self.dead:
            return each(ErrorCode.coordinator_not_available)
        if member_epoch < 0 and not self.members:
            return each(ErrorCode.none)
        m = self.members.get(member_id)
        if m is None:
            return each(ErrorCode.unknown_member_id)
        if api_version < 9:
            return each(ErrorCode.unsupported_version)
        if member_epoch == m.epoch:
            return each(ErrorCode.none)
        if member_epoch > m.epoch or member_epoch < 0:
            return each(ErrorCode.stale_member_epoch)
        out = []
        for topic, partition in partitions:
            tid = self.subscription_metadata.get(topic, (None,))[0]
            since = m.assigned_at.get((tid, partition)) if tid is not None else None
            out.append(ErrorCode.none if since is not None and since <= member_epoch
                       else ErrorCode.stale_member_epoch)
        return out

    def validate_offset_fetch(self, member_id: str | None, member_epoch: int) -> ErrorCode:
        if member_id is None and member_epoch < 0:
            return ErrorCode.none
        m = self.members.get(member_id or "")
        if m is None:
            return ErrorCode.unknown_member_id
        if member_epoch != m.epoch:
            return ErrorCode.stale_member_epoch
        return ErrorCode.none

    def validate_offset_delete(self) -> ErrorCode:
        return ErrorCode.group_id_not_found if self.dead else ErrorCode.none

    def validate_delete(self) -> ErrorCode:
        if self.dead:
            return ErrorCode.group_id_not_found
        return ErrorCode.non_empty_group if self.members else ErrorCode.none

    def delete(self, now: int) -> None:
        self.dead = True
        self.state_timestamp = now

    def describe_consumer(self) -> ConsumerDescription:
        return ConsumerDescription(
            self.state, self.group_epoch, self.assignment_epoch, self.preferred_assignor(),
            tuple(DescribedConsumerMember(
                m.member_id, m.instance_id, m.rack_id, m.epoch, m.client_id, m.client_host, m.subscribed_names,
                m.subscribed_regex, m.assigned, self.target.get(m.member_id, {}),
            ) for m in self.members.values()),
        )

    # --- the heartbeat ----------------------------------------------------------------------------------------

    def heartbeat(self, now: int, req: HeartbeatRequest, topics: Topics) -> HeartbeatResult:
        if self.dead:
            return self._error(ErrorCode.coordinator_not_available, req)
        error = self._validate(req)
        if error is not None:
            return error
        if req.member_epoch in (LEAVE_EPOCH, LEAVE_STATIC_EPOCH):
            return self._leave(now, req, topics)
        changed = False
        if req.member_epoch == 0:
            member, changed, error = self._join(now, req)
            if error is not None:
                return error
        else:
            member = self.members.get(req.member_id)
            if member is None:
                return self._error(ErrorCode.unknown_member_id, req, f"member {req.member_id} is not in the group")
            if req.instance_id is not None and member.instance_id != req.instance_id:
                return self._error(ErrorCode.fenced_instance_id, req)
            if req.member_epoch > member.epoch or (
                    req.member_epoch < member.epoch and not (
                        req.member_epoch == member.previous_epoch and req.owned is not None
                        and _subset(req.owned, member.assigned))):
                return self._error(ErrorCode.fenced_member_epoch, req,
                                   f"the member epoch is {member.epoch}, not {req.member_epoch}")
        before_assigned = _copy(member.assigned)
        changed |= self._update_member(member, req)
        if member.subscribed_regex and member.subscribed_regex not in self.resolved_regexes \
                and self.regex_resolution_due is None:
            self.regex_resolution_due = now
        member.session_deadline = now + self.config.session_timeout_ms
        if self._refresh_metadata(topics):
            changed = True
        if changed:
            self._bump_epoch()
        if self.group_epoch > self.assignment_epoch:
            self._compute_target(topics)
        self._reconcile(now, member, req.owned)
        full = req.member_epoch == 0 or (req.rebalance_timeout_ms != -1 and req.subscribed_topic_names is not None
                                         and req.owned is not None)
        self._take_snapshot_if_changed()
        return HeartbeatResult(
            ErrorCode.none, None, member.member_id, member.epoch, self._heartbeat_interval(member),
            _copy(member.assigned) if full or member.assigned != before_assigned else None,
        )

    def _heartbeat_interval(self, m: ConsumerMember) -> int:
        if m.state == M_UNRELEASED:
            return min(self.config.heartbeat_interval_ms, self.config.waiting_heartbeat_interval_ms)
        return self.config.heartbeat_interval_ms

    def _error(self, error: ErrorCode, req: HeartbeatRequest, message: str | None = None) -> HeartbeatResult:
        return HeartbeatResult(error, message, req.member_id, req.member_epoch, self.config.heartbeat_interval_ms)

    def _validate(self, req: HeartbeatRequest) -> HeartbeatResult | None:
        def invalid(msg: str) -> HeartbeatResult:
            return self._error(ErrorCode.invalid_request, req, msg)

        if req.member_epoch == 0:
            if req.rebalance_timeout_ms == -1:
                return invalid("RebalanceTimeoutMs must be provided in first request.")
            if req.owned is None or any(req.owned.values()):
                return invalid("TopicPartitions must be empty when (re-)joining.")
            # As Kafka: empty names or an empty regex join without a subscription (librdkafka sends "" for none).
            if req.subscribed_topic_names is None and req.subscribed_topic_regex is None:
                return invalid("Either SubscribedTopicNames or SubscribedTopicRegex must be non-null when "
                               "(re-)joining.")
        elif req.member_epoch < LEAVE_STATIC_EPOCH:
            return invalid(f"MemberEpoch {req.member_epoch} is invalid.")
        elif req.member_epoch == LEAVE_STATIC_EPOCH and req.instance_id is None:
            return invalid("InstanceId can't be null when MemberEpoch is -2.")
        if not req.member_id and req.member_epoch != 0:
            return invalid("MemberId can't be empty.")
        if req.server_assignor and req.server_assignor not in self.config.assignors:
            return self._error(ErrorCode.unsupported_assignor, req,
                               f"ServerAssignor {req.server_assignor} is not supported. Supported assignors: "
                               f"{', '.join(self.config.assignors)}.")
        if req.subscribed_topic_regex:
            try:
                self._compile(req.subscribed_topic_regex)
            except Exception as e:
                return self._error(ErrorCode.invalid_regular_expression, req,
                                   f"SubscribedTopicRegex {req.subscribed_topic_regex} is invalid: {e}")
        return None

    def _join(self, now: int, req: HeartbeatRequest):
        """Epoch 0: a new member, a member that lost its state, or a static member coming back."""
        member_id = req.member_id or str(uuid.uuid4())
        if req.instance_id is not None:
            old_id = self.static_members.get(req.instance_id)
            if old_id is not None and old_id != member_id:
                old = self.members[old_id]
                if old.epoch != LEAVE_STATIC_EPOCH:
                    return None, False, self._error(
                        ErrorCode.unreleased_instance_id, req,
                        f"static member {old_id} with instance id {req.instance_id} is still in the group")
                # The replacement takes over the old member's assignment and epoch: no rebalance.
                del self.members[old_id]
                old.member_id = member_id
                old.epoch = old.previous_epoch if old.previous_epoch >= 0 else self.assignment_epoch
                self.members[member_id] = old
                self.static_members[req.instance_id] = member_id
                if old_id in self.target:
                    self.target[member_id] = self.target.pop(old_id)
                return old, False, None
        existing = self.members.get(member_id)
        if existing is not None:
            # The member lost its assignment (it sent epoch 0 with nothing owned): start it over.
            self._remove(member_id)
            changed = True
        else:
            changed = True
        member = ConsumerMember(member_id, req.instance_id, epoch=0)
        self.members[member_id] = member
        if req.instance_id is not None:
            self.static_members[req.instance_id] = member_id
        return member, changed, None

    def _leave(self, now: int, req: HeartbeatRequest, topics: Topics) -> HeartbeatResult:
        member = self.members.get(req.member_id)
        if member is None:
            if req.instance_id is not None and req.instance_id in self.static_members:
                return self._error(ErrorCode.fenced_instance_id, req)
            return self._error(ErrorCode.unknown_member_id, req, f"member {req.member_id} is not in the group")
        if req.member_epoch == LEAVE_STATIC_EPOCH and member.instance_id is not None:
            # Keeps its assignment (nobody else gets its partitions) until its session expires.
            member.previous_epoch = member.epoch if member.epoch >= 0 else member.previous_epoch
            member.epoch = LEAVE_STATIC_EPOCH
            member.session_deadline = now + self.config.session_timeout_ms
            member.revocation_deadline = None
        else:
            self._fence(now, member, topics)
        self._take_snapshot_if_changed(force=True)
        return HeartbeatResult(ErrorCode.none, None, req.member_id, req.member_epoch,
                               self.config.heartbeat_interval_ms)

    def _update_member(self, m: ConsumerMember, req: HeartbeatRequest) -> bool:
        changed = False
        if req.rebalance_timeout_ms != -1:
            m.rebalance_timeout_ms = req.rebalance_timeout_ms
        if req.rack_id is not None:
            m.rack_id = req.rack_id
        if req.client_id:
            m.client_id = req.client_id
        if req.client_host:
            m.client_host = req.client_host
        if req.principal is not None:
            m.principal = req.principal  # what its regex may match (a change shows in _refresh_metadata's views)
        if req.subscribed_topic_names is not None and tuple(sorted(req.subscribed_topic_names)) != m.subscribed_names:
            m.subscribed_names = tuple(sorted(req.subscribed_topic_names))
            changed = True
        if req.subscribed_topic_regex is not None:
            regex = req.subscribed_topic_regex or None  # librdkafka sends "" for no regex
            if regex != m.subscribed_regex:
                m.subscribed_regex = regex
                changed = True
        if req.server_assignor is not None:
            assignor = req.server_assignor or None
            if assignor != m.server_assignor:
                m.server_assignor = assignor
                changed = True
        return changed

    # --- epochs and the target assignment --------------------------------------------------------------------

    def preferred_assignor(self) -> str:
        counts: dict[str, int] = {}
        for m in self.members.values():
            if m.server_assignor:
                counts[m.server_assignor] = counts.get(m.server_assignor, 0) + 1
        if not counts:
            return self.config.assignors[0]
        return max(sorted(counts), key=lambda a: counts[a])

    def _bump_epoch(self) -> None:
        self.group_epoch = max(self.group_epoch, self.assignment_epoch) + 1

    def _regexes_in_use(self) -> set[str]:
        return {m.subscribed_regex for m in self.members.values() if m.subscribed_regex}

    def _refresh_metadata(self, topics: Topics) -> bool:
        """Recompute the subscribed topics' metadata; True if it changed (then the group epoch must grow)."""
        self.resolved_regexes &= self._regexes_in_use()
        views_changed = False
        if self.config.may_describe is None:
            names = self.subscribed_topic_names(topics)
        else:
            views = self._regex_views_of(topics)
            views_changed = views != self._regex_views
            self._regex_views = views
            names = {n for m in self.members.values() for n in m.subscribed_names}.union(*views.values())
        meta = {name: [topics[name][0], topics[name][1]] for name in sorted(names) if name in topics}
        if meta != self.subscription_metadata:
            self.subscription_metadata = meta
            return True
        return views_changed

    def refresh_topics(self, now: int, topics: Topics) -> None:
        """Topics changed (created, grown, deleted): bump the epoch if the group's subscribed metadata changed."""
        if self.members and self._refresh_metadata(topics):
            self._bump_epoch()
            self._compute_target(topics)
            self._take_snapshot_if_changed(force=True)

    def _member_topics(self, m: ConsumerMember, topics: Topics) -> frozenset[str]:
        names = set(m.subscribed_names) | self._regex_topics(m, topics)
        return frozenset(topics[n][0] for n in names if n in topics)

    def _regex_views_of(self, topics: Topics) -> dict[str, frozenset[str]]:
        """Member id -> the topics its regex gives it; members with the same regex, principal and host share one."""
        views: dict[tuple, frozenset[str]] = {}
        out = {}
        for mid, m in self.members.items():
            key = (m.subscribed_regex, m.principal, m.client_host)
            if key not in views:
                views[key] = frozenset(self._regex_topics(m, topics))
            out[mid] = views[key]
        return out

    def _regex_topics(self, m: ConsumerMember, topics: Topics) -> set[str]:
        """The topics the member's resolved regex matches and (with an authorizer) its principal may describe."""
        regex = m.subscribed_regex
        if regex is None or regex not in self.resolved_regexes:
            return set()
        matched = {t for t in topics if self._matches(regex, t)}
        may_describe = self.config.may_describe
        if may_describe is None or m.principal is None:
            return matched
        return {t for t in matched if may_describe(m.principal, m.client_host, t)}

    def _compute_target(self, topics: Topics) -> None:
        subs = {mid: self._member_topics(m, topics) for mid, m in self.members.items()}
        partitions = {tid: n for tid, n in (topics[name] for name in self.subscription_metadata if name in topics)}
        self.target = assignors.assign(self.preferred_assignor(), subs, partitions, self.target)
        self.assignment_epoch = self.group_epoch

    # --- reconciliation (Kafka's CurrentAssignmentBuilder) ---------------------------------------------------

    def _owned_elsewhere(self, member_id: str) -> set[tuple[str, int]]:
        out = set()
        for mid, m in self.members.items():
            if mid == member_id:
                continue
            for parts in (m.assigned, m.pending_revocation):
                out.update((t, p) for t, ps in parts.items() for p in ps)
        return out

    def _reconcile(self, now: int, m: ConsumerMember, owned: Parts | None) -> None:
        if m.epoch < 0:
            return
        target = self.target.get(m.member_id, {})
        if m.state == M_UNREVOKED:
            if owned is None or _intersects(owned, m.pending_revocation):
                return  # still waiting for the member to revoke
            m.pending_revocation = {}
            m.revocation_deadline = None
            self._next_assignment(now, m, self.assignment_epoch, target)
        elif m.state == M_UNRELEASED or m.epoch != self.assignment_epoch:
            self._next_assignment(now, m, self.assignment_epoch, target)

    def _next_assignment(self, now: int, m: ConsumerMember, target_epoch: int, target: Parts) -> None:
        taken = self._owned_elsewhere(m.member_id)
        keep: Parts = {}
        revoke: Parts = {}
        unreleased = False
        ready: Parts = {}
        for t in set(m.assigned) | set(target):
            cur, want = m.assigned.get(t, set()), target.get(t, set())
            if cur & want:
                keep[t] = cur & want
            if cur - want:
                revoke[t] = cur - want
            for p in want - cur:
                if (t, p) in taken:
                    unreleased = True
                else:
                    ready.setdefault(t, set()).add(p)
        if revoke:
            # Revoke first, at the current epoch; the new partitions come once the member acknowledged.
            m.state = M_UNREVOKED
            m.assigned = keep
            m.track_assignment_epochs()
            m.pending_revocation = revoke
            m.revocation_deadline = now + m.rebalance_timeout_ms
            return
        for t, ps in ready.items():
            keep.setdefault(t, set()).update(ps)
        m.assigned = keep
        m.pending_revocation = {}
        m.revocation_deadline = None
        if m.epoch != target_epoch:
            m.previous_epoch, m.epoch = m.epoch, target_epoch
        m.track_assignment_epochs()
        m.state = M_UNRELEASED if unreleased else M_STABLE

    # --- removal and timers ----------------------------------------------------------------------------------

    def _remove(self, member_id: str) -> None:
        m = self.members.pop(member_id, None)
        if m is not None and m.instance_id is not None and self.static_members.get(m.instance_id) == member_id:
            del self.static_members[m.instance_id]
        self.target.pop(member_id, None)

    def _fence(self, now: int, m: ConsumerMember, topics: Topics | None) -> None:
        """Remove the member; its partitions become free; the group moves to a new epoch."""
        self._remove(m.member_id)
        if topics is not None:
            self._refresh_metadata(topics)
        self._bump_epoch()
        if self.members:
            self._compute_target(topics if topics is not None else self._topics_from_metadata())
        else:
            self.assignment_epoch = self.group_epoch
            self.subscription_metadata = {}
            self.state_timestamp = now  # offsets of an empty group expire counting from here
        self._take_snapshot_if_changed(force=True)

    def _topics_from_metadata(self) -> dict[str, tuple[str, int]]:
        return {name: (tid, n) for name, (tid, n) in self.subscription_metadata.items()}

    def tick(self, now: int, topics: Topics | None = None) -> None:
        if self.regex_resolution_due is not None and self.regex_resolution_due <= now and topics is not None:
            self._resolve_regexes(topics)
        for m in list(self.members.values()):
            if self.members.get(m.member_id) is not m:
                continue
            if (m.session_deadline is not None and m.session_deadline <= now) or (
                    m.revocation_deadline is not None and m.revocation_deadline <= now):
                self._fence(now, m, topics)

    def _resolve_regexes(self, topics: Topics) -> None:
        """The members' new regexes count from now on: a new target if they match anything."""
        self.regex_resolution_due = None
        self.resolved_regexes = self._regexes_in_use()
        if self.members and self._refresh_metadata(topics):
            self._bump_epoch()
            self._compute_target(topics)
        self._take_snapshot_if_changed()

    # --- persistence ------------------------------------------------------------------------------------------

    def _take_snapshot_if_changed(self, force: bool = False) -> None:
        record = self.to_record()
        if force or record != self.snapshot:
            self.snapshot = record
            self.snapshot_seq += 1

    def _take_snapshot(self) -> None:
        self._take_snapshot_if_changed(force=True)

    def to_record(self) -> dict:
        return {
            "v": 1, "type": RECORD_TYPE, "state": EMPTY if not self.members else STABLE,
            "group_epoch": self.group_epoch, "assignment_epoch": self.assignment_epoch,
            "state_timestamp": self.state_timestamp,
            "metadata": self.subscription_metadata,
            "members": [m.to_record() for m in self.members.values()],
            "target": {mid: _enc(parts) for mid, parts in self.target.items()},
            "regexes": sorted(self.resolved_regexes),
        }

    @classmethod
    def from_record(cls, group_id: str, config: ConsumerConfig, record: dict, now: int) -> "ConsumerGroup":
        g = cls(group_id, config, now)
        g.group_epoch = int(record.get("group_epoch", 0))
        g.assignment_epoch = int(record.get("assignment_epoch", 0))
        g.state_timestamp = int(record.get("state_timestamp", now))
        g.subscription_metadata = {k: list(v) for k, v in record.get("metadata", {}).items()}
        for d in record.get("members", []):
            m = ConsumerMember.from_record(d)
            m.session_deadline = now + config.session_timeout_ms
            if m.state == M_UNREVOKED:
                m.revocation_deadline = now + m.rebalance_timeout_ms
            g.members[m.member_id] = m
            if m.instance_id is not None:
                g.static_members[m.instance_id] = m.member_id
        g.target = {mid: _dec(parts) for mid, parts in record.get("target", {}).items()}
        g.resolved_regexes = set(record.get("regexes", ()))
        if g._regexes_in_use() - g.resolved_regexes:
            g.regex_resolution_due = now
        g.snapshot = record
        return g

    # --- regexes ----------------------------------------------------------------------------------------------

    def _compile(self, regex: str):
        r = self._regex_cache.get(regex)
        if r is None:
            r = re2.compile(regex)
            self._regex_cache[regex] = r
        return r

    def _matches(self, regex: str, topic: str) -> bool:
        try:
            return self._compile(regex).fullmatch(topic) is not None
        except Exception:
            return False


def is_consumer_record(record: dict) -> bool:
    return record.get("type") == RECORD_TYPE


def _enc(parts: Parts) -> dict[str, list[int]]:
    return {t: sorted(ps) for t, ps in sorted(parts.items()) if ps}


def _dec(d: dict) -> Parts:
    return {t: set(ps) for t, ps in d.items() if ps}


def _copy(parts: Parts) -> Parts:
    return {t: set(ps) for t, ps in parts.items() if ps}


def _subset(a: Parts, b: Parts) -> bool:
    return all(set(ps) <= b.get(t, set()) for t, ps in a.items())


def _intersects(a: Parts, b: Parts) -> bool:
    return any(set(ps) & b.get(t, set()) for t, ps in a.items())
