"""The classic consumer group protocol (JoinGroup/SyncGroup/Heartbeat/LeaveGroup) as a pure state machine.

No I/O, no clock, no tasks: the caller passes the time (`now`, wall-clock milliseconds) into every call, and reads
three outputs after each call (h11 style):

- `take_outbox()`: replies to requests that were parked (a JoinGroup waiting at the join barrier, a SyncGroup
  waiting for the leader's assignment), as (token, JoinResult | SyncResult). A token is whatever the caller passed
  with the request (the coordinator passes an asyncio future); the machine never looks inside it.
- `snapshot` / `snapshot_seq`: the record to persist. It changes only where Kafka writes the group to its log:
  when the group is created, when a generation completes (the leader's SyncGroup), when the group becomes empty,
  and when a static member replaces its old member id without a rebalance. Heartbeats and the transient
  PreparingRebalance/CompletingRebalance states are never persisted, as in Kafka: a coordinator that takes over
  loads the last completed generation and gives every member a fresh session timeout.
- `next_deadline()`: when `tick(now)` must be called next (join barrier, initial rebalance delay, pending SyncGroups,
  member session timeouts).

The semantics follow Apache Kafka's classic group coordinator (GroupMetadataManager / ClassicGroup): states Empty,
PreparingRebalance, CompletingRebalance, Stable and Dead; the join barrier waits for every known member up to the
rebalance timeout (the largest of the members'); new groups wait group.initial.rebalance.delay.ms for more members;
JoinGroup v4+ hands out a member id first (MEMBER_ID_REQUIRED); static members (group.instance.id) keep their
assignment across restarts and fence their old member id (FENCED_INSTANCE_ID); session timeouts evict members;
members that do not send SyncGroup within the rebalance timeout are evicted. Protocol metadata and assignments are
opaque bytes: the leader runs any client-side assignor.
"""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from kio.schema.errors import ErrorCode

EMPTY = "Empty"
PREPARING_REBALANCE = "PreparingRebalance"
COMPLETING_REBALANCE = "CompletingRebalance"
STABLE = "Stable"
DEAD = "Dead"
STATES = (EMPTY, PREPARING_REBALANCE, COMPLETING_REBALANCE, STABLE, DEAD)

CONSUMER_PROTOCOL_TYPE = "consumer"
RECORD_VERSION = 1


@dataclass(frozen=True)
class GroupConfig:
    """Kafka's group coordinator settings (same names with dots)."""

    min_session_timeout_ms: int = 6_000  # group.min.session.timeout.ms
    max_session_timeout_ms: int = 1_800_000  # group.max.session.timeout.ms
    initial_rebalance_delay_ms: int = 3_000  # group.initial.rebalance.delay.ms
    new_member_join_timeout_ms: int = 300_000  # a joining member without a member id yet
    max_size: int = 2**31 - 1  # group.max.size
    offset_metadata_max_bytes: int = 4_096  # offset.metadata.max.bytes
    offsets_retention_ms: int = 7 * 24 * 3_600_000  # offsets.retention.minutes
    offsets_retention_check_interval_ms: int = 600_000  # offsets.retention.check.interval.ms


# --- requests and results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinRequest:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]  # (name, metadata), in the member's order of preference
    require_known_member_id: bool = True  # JoinGroup v4+
    supports_skip_assignment: bool = True  # JoinGroup v9+
    reason: str | None = None


@dataclass(frozen=True)
class JoinMember:
    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass(frozen=True)
class JoinResult:
    error: ErrorCode
    member_id: str = ""
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: tuple[JoinMember, ...] = ()
    skip_assignment: bool = False


@dataclass(frozen=True)
class SyncResult:
    error: ErrorCode
    protocol_type: str | None = None
    protocol_name: str | None = None
    assignment: bytes = b""


@dataclass(frozen=True)
class DescribedMember:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True)
class Description:
    state: str
    protocol_type: str
    protocol_data: str
    members: tuple[DescribedMember, ...]


# --- members --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]
    assignment: bytes = b""
    # Runtime only (never persisted).
    join_waiter: Any = None
    sync_waiter: Any = None
    is_new: bool = False
    heartbeat_deadline: int | None = None

    def metadata(self, protocol: str | None) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return b""

    def protocol_names(self) -> set[str]:
        return {name for name, _ in self.protocols}

    def vote(self, candidates: set[str]) -> str:
        for name, _ in self.protocols:
            if name in candidates:
                return name
        raise ValueError("the member supports none of the candidate protocols")

    def has_satisfied_heartbeat(self) -> bool:
        # New members can be expired even while awaiting join; others are alive while they wait for a response.
        return not self.is_new and (self.join_waiter is not None or self.sync_waiter is not None)


def new_member_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def subscribed_topics(metadata: bytes) -> list[str]:
    """Topics of a ConsumerProtocolSubscription (any version: all start with version, then the topic array)."""
    try:
        _version, count = struct.unpack_from(">hi", metadata, 0)
        pos = 6
        topics = []
        for _ in range(count):
            (n,) = struct.unpack_from(">h", metadata, pos)
            pos += 2
            if n < 0 or pos + n > len(metadata):
                raise ValueError("bad topic name length")
            topics.append(metadata[pos:pos + n].decode())
            pos += n
        return topics
    except (struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"not a consumer protocol subscription: {e}") from None


# --- the group ------------------------------------------------------------------------------------------------


class ClassicGroup:
    def __init__(
        self,
        group_id: str,
        config: GroupConfig,
        now: int,
        *,
        make_member_id: Callable[[str], str] = new_member_id,
    ):
        self.group_id = group_id
        self.config = config
        self.make_member_id = make_member_id
        self.state = EMPTY
        self.previous_state: str | None = None
        self.state_timestamp = now
        self.generation = 0
        self.protocol_type: str | None = None
        self.protocol_name: str | None = None
        self.leader_id: str | None = None
        self.members: dict[str, Member] = {}
        self.static_members: dict[str, str] = {}  # group.instance.id -> member id
        self.pending_members: dict[str, int] = {}  # member ids handed out by MEMBER_ID_REQUIRED -> deadline
        self.pending_sync: set[str] = set()
        self.new_member_added = False
        self.subscribed: frozenset[str] | None = None
        # Timers: (deadline, kind, delay, remaining) for the join barrier; (deadline, generation) for SyncGroups.
        self._join_timer: tuple[int, str, int, int] | None = None
        self._sync_timer: tuple[int, int] | None = None
        self._outbox: list[tuple[Any, JoinResult | SyncResult]] = []
        self.snapshot: dict | None = None
        self.snapshot_seq = 0

    # --- outputs ----------------------------------------------------------------------------------------------

    def take_outbox(self) -> list[tuple[Any, JoinResult | SyncResult]]:
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> int | None:
        deadlines = [d for d in (m.heartbeat_deadline for m in self.members.values()) if d is not None]
        deadlines.extend(self.pending_members.values())
        if self._join_timer is not None:
            deadlines.append(self._join_timer[0])
        if self._sync_timer is not None:
            deadlines.append(self._sync_timer[0])
        return min(deadlines) if deadlines else None

    def mark_created(self) -> None:
        """A new group: persist it (so that it exists for every broker, and its key fences other coordinators)."""
        self._take_snapshot()

    # --- queries ----------------------------------------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        return self.state == EMPTY

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def all_members_joined(self) -> bool:
        return not self.pending_members and all(m.join_waiter is not None for m in self.members.values())

    def supports_protocols(self, protocol_type: str, names: Iterable[str]) -> bool:
        names = set(names)
        if self.state == EMPTY:
            return bool(protocol_type) and bool(names)
        return self.protocol_type == protocol_type and bool(names & self._candidate_protocols())

    def uses_consumer_protocol(self) -> bool:
        return self.protocol_type == CONSUMER_PROTOCOL_TYPE

    def is_subscribed_to(self, topic: str) -> bool:
        if self.subscribed is not None:
            return topic in self.subscribed
        return self.uses_consumer_protocol()

    def offset_expiry_base(self) -> str | None:
        """How committed offsets of this group expire (Kafka's offsetExpirationCondition): "state" = retention
        counted from when the group became empty, "commit" = from each offset's commit time, None = never now."""
        if self.protocol_type is not None:
            if self.state == EMPTY:
                return "state"
            if self.uses_consumer_protocol() and self.subscribed is not None and self.state == STABLE:
                return "commit"
            return None
        return "commit"

    def describe(self) -> Description:
        if self.state == STABLE:
            members = tuple(
                DescribedMember(m.member_id, m.group_instance_id, m.client_id, m.client_host,
                                m.metadata(self.protocol_name), m.assignment)
                for m in self.members.values()
            )
            return Description(self.state, self.protocol_type or "", self.protocol_name or "", members)
        members = tuple(
            DescribedMember(m.member_id, m.group_instance_id, m.client_id, m.client_host, b"", m.assignment)
            for m in self.members.values()
        )
        return Description(self.state, self.protocol_type or "", "", members)

    # --- JoinGroup --------------------------------------------------------------------------------------------

    def join(self, now: int, token: Any, req: JoinRequest) -> None:
        """Handle a JoinGroup; its reply goes to the outbox with this token (now or when the join phase ends)."""
        if not (self.config.min_session_timeout_ms <= req.session_timeout_ms <= self.config.max_session_timeout_ms):
            self._reply(token, JoinResult(ErrorCode.invalid_session_timeout, member_id=req.member_id))
            return
        if not self._accept_joining_member(req.member_id):
            self._reply(token, JoinResult(ErrorCode.group_max_size_reached, member_id=""))
            return
        if req.member_id == "":
            self._join_new_member(now, token, req)
        else:
            self._join_existing_member(now, token, req)

    def _accept_joining_member(self, member_id: str) -> bool:
        if self.state in (EMPTY, DEAD):
            return True
        if self.state == PREPARING_REBALANCE:
            m = self.members.get(member_id)
            awaiting = sum(1 for x in self.members.values() if x.join_waiter is not None)
            return (m is not None and m.join_waiter is not None) or awaiting < self.config.max_size
        return member_id in self.members or len(self.members) < self.config.max_size

    def _join_new_member(self, now: int, token: Any, req: JoinRequest) -> None:
        if self.state == DEAD:
            self._reply(token, JoinResult(ErrorCode.coordinator_not_available))
            return
        if not self.supports_protocols(req.protocol_type, (n for n, _ in req.protocols)):
            self._reply(token, JoinResult(ErrorCode.inconsistent_group_protocol))
            return
        if req.group_instance_id is not None:
            member_id = self.make_member_id(req.group_instance_id)
            existing = self.static_members.get(req.group_instance_id)
            if existing is not None:
                self._replace_static_member(now, token, req, req.group_instance_id, existing, member_id)
            else:
                self._add_member_and_rebalance(now, token, req, member_id)
            return
        member_id = self.make_member_id(req.client_id)
        if req.require_known_member_id:
            # The member must come back with this id; until then it is pending (and expires after its session).
            self.pending_members[member_id] = now + req.session_timeout_ms
            self._reply(token, JoinResult(ErrorCode.member_id_required, member_id=member_id))
        else:
            self._add_member_and_rebalance(now, token, req, member_id)

    def _join_existing_member(self, now: int, token: Any, req: JoinRequest) -> None:
        member_id = req.member_id
        if self.state == DEAD:
            self._reply(token, JoinResult(ErrorCode.coordinator_not_available, member_id=member_id))
            return
        if not self.supports_protocols(req.protocol_type, (n for n, _ in req.protocols)):
            self._reply(token, JoinResult(ErrorCode.inconsistent_group_protocol, member_id=member_id))
            return
        if member_id in self.pending_members:
            if req.group_instance_id is not None:
                # Pending ids are only handed to dynamic members.
                error = self.validate_member(member_id, req.group_instance_id)
                self._reply(token, JoinResult(error or ErrorCode.unknown_member_id, member_id=member_id))
                return
            self._add_member_and_rebalance(now, token, req, member_id)
            return
        error = self.validate_member(member_id, req.group_instance_id)
        if error:
            self._reply(token, JoinResult(error, member_id=member_id))
            return
        member = self.members[member_id]
        if self.state == PREPARING_REBALANCE:
            self._update_member_and_rebalance(now, token, member, req)
        elif self.state == COMPLETING_REBALANCE:
            if member.protocols == req.protocols:
                # The member missed the JoinGroup response (same metadata): send it the current generation again.
                self._reply(token, self._join_result(member_id, with_members=member_id == self.leader_id))
            else:
                self._update_member_and_rebalance(now, token, member, req)
        elif self.state == STABLE:
            if member_id == self.leader_id or member.protocols != req.protocols:
                # The leader rejoins to trigger a rebalance (e.g. topic metadata changed); or metadata changed.
                self._update_member_and_rebalance(now, token, member, req)
            else:
                self._reply(token, self._join_result(member_id, with_members=False))
        else:
            self._reply(token, JoinResult(ErrorCode.unknown_member_id, member_id=member_id))

    def _join_result(self, member_id: str, *, with_members: bool, skip_assignment: bool = False,
                     leader: str | None = None) -> JoinResult:
        members: tuple[JoinMember, ...] = ()
        if with_members:
            members = tuple(JoinMember(m.member_id, m.group_instance_id, m.metadata(self.protocol_name))
                            for m in self.members.values())
        return JoinResult(
            ErrorCode.none, member_id=member_id, generation_id=self.generation, protocol_type=self.protocol_type,
            protocol_name=self.protocol_name, leader=(self.leader_id or "") if leader is None else leader,
            members=members, skip_assignment=skip_assignment,
        )

    def _set_join_waiter(self, member: Member, token: Any) -> None:
        if member.join_waiter is not None and member.join_waiter is not token:
            # A second JoinGroup while one is parked: the older one is answered, the newer waits.
            self._reply(member.join_waiter, JoinResult(ErrorCode.rebalance_in_progress, member_id=member.member_id))
        member.join_waiter = token

    def _update_member_and_rebalance(self, now: int, token: Any, member: Member, req: JoinRequest) -> None:
        member.protocols = req.protocols
        member.rebalance_timeout_ms = req.rebalance_timeout_ms
        member.session_timeout_ms = req.session_timeout_ms
        self._set_join_waiter(member, token)
        self._maybe_prepare_rebalance_or_complete_join(now)

    def _add_member_and_rebalance(self, now: int, token: Any, req: JoinRequest, member_id: str) -> None:
        member = Member(
            member_id, req.group_instance_id, req.client_id, req.client_host, req.rebalance_timeout_ms,
            req.session_timeout_ms, req.protocol_type, req.protocols, is_new=True,
        )
        if self.state == PREPARING_REBALANCE and self.previous_state == EMPTY:
            self.new_member_added = True  # extends the initial rebalance delay
        if member.group_instance_id is not None:
            self.static_members[member.group_instance_id] = member_id
        if not self.members:
            self.protocol_type = member.protocol_type
        if self.leader_id is None:
            self.leader_id = member_id
        self.members[member_id] = member
        self.pending_members.pop(member_id, None)
        member.join_waiter = token
        # A member parked in JoinGroup cannot heartbeat; a new one that went away must not stay forever.
        member.heartbeat_deadline = now + self.config.new_member_join_timeout_ms
        self._maybe_prepare_rebalance_or_complete_join(now)

    def _replace_static_member(self, now: int, token: Any, req: JoinRequest, instance_id: str, old_id: str,
                               new_id: str) -> None:
        """A static member rejoins with an unknown member id: it takes its old place under a new id; the old id is
        fenced. A stable group whose protocol does not change keeps its assignment (no rebalance)."""
        current_leader = self.leader_id
        old = self.members.pop(old_id)
        if old.join_waiter is not None:
            self._reply(old.join_waiter, JoinResult(ErrorCode.fenced_instance_id, member_id=old_id))
        if old.sync_waiter is not None:
            self._reply(old.sync_waiter, SyncResult(ErrorCode.fenced_instance_id))
        member = Member(
            new_id, old.group_instance_id, old.client_id, old.client_host, old.rebalance_timeout_ms,
            old.session_timeout_ms, old.protocol_type, old.protocols, assignment=old.assignment,
        )
        self.members[new_id] = member
        if self.leader_id == old_id:
            self.leader_id = new_id
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(new_id)
        self.static_members[instance_id] = new_id
        member.heartbeat_deadline = now + member.session_timeout_ms
        member.protocols = req.protocols
        member.rebalance_timeout_ms = req.rebalance_timeout_ms
        member.session_timeout_ms = req.session_timeout_ms
        member.join_waiter = token

        if self.state == STABLE:
            if self.protocol_name == self._select_protocol():
                self._take_snapshot()
                member.join_waiter = None
                if req.supports_skip_assignment:
                    is_leader = self.leader_id == new_id
                    self._reply(token, self._join_result(new_id, with_members=is_leader, skip_assignment=is_leader))
                else:
                    # Older clients must not think they lead (they would run an assignment): the old leader id.
                    self._reply(token, self._join_result(new_id, with_members=False, leader=current_leader or ""))
            else:
                self._maybe_prepare_rebalance_or_complete_join(now)
        elif self.state == COMPLETING_REBALANCE:
            # The leader may already be assigning with the old member id: rebalance.
            self._prepare_rebalance(now)
        else:
            self._maybe_complete_join_phase(now)

    # --- the join barrier -------------------------------------------------------------------------------------

    def _maybe_prepare_rebalance_or_complete_join(self, now: int) -> None:
        if self.state in (STABLE, COMPLETING_REBALANCE, EMPTY):
            self._prepare_rebalance(now)
        else:
            self._maybe_complete_join_phase(now)

    def _prepare_rebalance(self, now: int) -> None:
        if self.state == COMPLETING_REBALANCE:
            for m in self.members.values():
                m.assignment = b""
            self._propagate_assignment(now, ErrorCode.rebalance_in_progress)
        self.pending_sync.clear()
        self._sync_timer = None
        initial = self.state == EMPTY
        if initial:
            delay = self.config.initial_rebalance_delay_ms
            remaining = max(self.rebalance_timeout_ms() - delay, 0)
            self._join_timer = (now + delay, "initial", delay, remaining)
        self._transition(PREPARING_REBALANCE, now)
        if not initial:
            if self.all_members_joined():
                self._complete_join(now)
            else:
                self._join_timer = (now + self.rebalance_timeout_ms(), "join", 0, 0)

    def _maybe_complete_join_phase(self, now: int) -> None:
        if self.state != PREPARING_REBALANCE:
            return
        if self.previous_state == EMPTY:
            return  # the initial rebalance waits for its delay
        if self.all_members_joined():
            self._complete_join(now)

    def _complete_join(self, now: int) -> None:
        self._join_timer = None
        for m in [m for m in self.members.values() if m.join_waiter is None and m.group_instance_id is None]:
            self._remove(m.member_id)  # dynamic members that did not rejoin in time are out
        if self.state == DEAD:
            return
        if not self._elect_joined_leader() and self.members:
            # Nobody rejoined (only static members that stay): wait another round; sessions will expire them.
            self._join_timer = (now + self.rebalance_timeout_ms(), "join", 0, 0)
            return
        self._init_next_generation(now)
        if self.state == EMPTY:
            self._take_snapshot()
            return
        for m in self.members.values():
            if m.join_waiter is not None:
                self._reply(m.join_waiter, self._join_result(m.member_id, with_members=m.member_id == self.leader_id))
                m.join_waiter = None
            m.heartbeat_deadline = now + m.session_timeout_ms
            m.is_new = False
            self.pending_sync.add(m.member_id)
        self._sync_timer = (now + self.rebalance_timeout_ms(), self.generation)

    def _elect_joined_leader(self) -> bool:
        if self.leader_id is None:
            return False
        if self.members[self.leader_id].join_waiter is None:
            for m in self.members.values():
                if m.join_waiter is not None:
                    self.leader_id = m.member_id
                    return True
            return False
        return True

    def _init_next_generation(self, now: int) -> None:
        self.generation += 1
        if self.members:
            self.protocol_name = self._select_protocol()
            self._transition(COMPLETING_REBALANCE, now)
        else:
            self.protocol_name = None
            self._transition(EMPTY, now)
        self.subscribed = self._compute_subscribed()
        self.pending_sync.clear()

    def _candidate_protocols(self) -> set[str]:
        members = list(self.members.values())
        if not members:
            return set()
        common = members[0].protocol_names()
        for m in members[1:]:
            common &= m.protocol_names()
        return common

    def _select_protocol(self) -> str:
        candidates = self._candidate_protocols()
        votes: dict[str, int] = {}
        for m in self.members.values():
            name = m.vote(candidates)
            votes[name] = votes.get(name, 0) + 1
        return max(votes, key=lambda n: votes[n])  # ties: the first voted for

    def _compute_subscribed(self) -> frozenset[str] | None:
        if self.protocol_type != CONSUMER_PROTOCOL_TYPE:
            return None
        if not self.members:
            return frozenset()
        if self.protocol_name is None:
            return None
        topics: set[str] = set()
        try:
            for m in self.members.values():
                topics.update(subscribed_topics(m.metadata(self.protocol_name)))
        except ValueError:
            return None
        return frozenset(topics)

    # --- SyncGroup --------------------------------------------------------------------------------------------

    def sync(self, now: int, token: Any, member_id: str, group_instance_id: str | None, generation_id: int,
             protocol_type: str | None, protocol_name: str | None, assignments: dict[str, bytes]) -> None:
        if self.state == EMPTY:
            self._reply(token, SyncResult(ErrorCode.unknown_member_id))
            return
        if self.state == DEAD:
            self._reply(token, SyncResult(ErrorCode.coordinator_not_available))
            return
        error = self.validate_member(member_id, group_instance_id)
        if not error and generation_id != self.generation:
            error = ErrorCode.illegal_generation
        if not error and (_inconsistent(protocol_type, self.protocol_type)
                          or _inconsistent(protocol_name, self.protocol_name)):
            error = ErrorCode.inconsistent_group_protocol
        if error:
            self._reply(token, SyncResult(error))
        elif self.state == PREPARING_REBALANCE:
            self._reply(token, SyncResult(ErrorCode.rebalance_in_progress))
        elif self.state == COMPLETING_REBALANCE:
            member = self.members[member_id]
            if member.sync_waiter is not None and member.sync_waiter is not token:
                self._reply(member.sync_waiter, SyncResult(ErrorCode.rebalance_in_progress))
            member.sync_waiter = token
            self._synced(member_id)
            if member_id == self.leader_id:
                for m in self.members.values():
                    m.assignment = assignments.get(m.member_id, b"")
                self._propagate_assignment(now, ErrorCode.none)
                self._transition(STABLE, now)
                self._take_snapshot()
        else:  # STABLE
            self._synced(member_id)
            member = self.members[member_id]
            self._reply(token, SyncResult(ErrorCode.none, self.protocol_type, self.protocol_name, member.assignment))

    def _synced(self, member_id: str) -> None:
        self.pending_sync.discard(member_id)
        if not self.pending_sync:
            self._sync_timer = None

    def _propagate_assignment(self, now: int, error: ErrorCode) -> None:
        ok = error == ErrorCode.none
        for m in self.members.values():
            if m.sync_waiter is not None:
                self._reply(m.sync_waiter, SyncResult(
                    error, self.protocol_type if ok else None, self.protocol_name if ok else None, m.assignment,
                ))
                m.sync_waiter = None
                m.heartbeat_deadline = now + m.session_timeout_ms

    # --- Heartbeat, LeaveGroup, OffsetCommit checks ----------------------------------------------------------

    def validate_member(self, member_id: str, group_instance_id: str | None) -> ErrorCode | None:
        if group_instance_id is not None:
            existing = self.static_members.get(group_instance_id)
            if existing is None:
                return ErrorCode.unknown_member_id
            if existing != member_id:
                return ErrorCode.fenced_instance_id
        if member_id not in self.members:
            return ErrorCode.unknown_member_id
        return None

    def heartbeat(self, now: int, member_id: str, group_instance_id: str | None, generation_id: int) -> ErrorCode:
        if self.state == DEAD:
            return ErrorCode.coordinator_not_available
        error = self.validate_member(member_id, group_instance_id)
        if error:
            return error
        if generation_id != self.generation:
            return ErrorCode.illegal_generation
        if self.state == EMPTY:
            return ErrorCode.unknown_member_id
        member = self.members[member_id]
        member.heartbeat_deadline = now + member.session_timeout_ms
        return ErrorCode.rebalance_in_progress if self.state == PREPARING_REBALANCE else ErrorCode.none

    def leave(self, now: int, members: list[tuple[str, str | None]]) -> tuple[ErrorCode, list[ErrorCode]]:
        """LeaveGroup for (member id, group instance id) pairs: a group error and one error per member."""
        if self.state == DEAD:
            return ErrorCode.coordinator_not_available, [ErrorCode.coordinator_not_available] * len(members)
        results = []
        for member_id, instance_id in members:
            if member_id == "":
                # Administrative removal of a static member by its instance id.
                if instance_id is not None and instance_id in self.static_members:
                    self._remove_current(self.static_members[instance_id])
                    results.append(ErrorCode.none)
                else:
                    results.append(ErrorCode.unknown_member_id)
            elif member_id in self.pending_members:
                del self.pending_members[member_id]
                results.append(ErrorCode.none)
            else:
                error = self.validate_member(member_id, instance_id)
                if error:
                    results.append(error)
                else:
                    self._remove_current(member_id)
                    results.append(ErrorCode.none)
        if ErrorCode.none in results:
            if self.state in (STABLE, COMPLETING_REBALANCE):
                self._maybe_prepare_rebalance_or_complete_join(now)
            elif self.state == PREPARING_REBALANCE:
                self._maybe_complete_join_phase(now)
        return ErrorCode.none, results

    def validate_offset_commit(self, now: int, member_id: str, group_instance_id: str | None,
                               generation_id: int) -> ErrorCode:
        if self.state == DEAD:
            return ErrorCode.coordinator_not_available
        if generation_id < 0 and self.state == EMPTY:
            return ErrorCode.none  # the admin client or a consumer that assigns partitions itself
        if generation_id >= 0 or member_id or group_instance_id is not None:
            error = self.validate_member(member_id, group_instance_id)
            if error:
                return error
            if generation_id != self.generation:
                return ErrorCode.illegal_generation
        elif self.state != EMPTY:
            return ErrorCode.unknown_member_id
        if self.state == COMPLETING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        member = self.members.get(member_id)
        if member is not None and self.state in (STABLE, PREPARING_REBALANCE):
            member.heartbeat_deadline = now + member.session_timeout_ms  # a commit keeps the session alive
        return ErrorCode.none

    def validate_offset_delete(self) -> ErrorCode:
        if self.state == DEAD:
            return ErrorCode.group_id_not_found
        if self.state != EMPTY and not self.uses_consumer_protocol():
            return ErrorCode.non_empty_group
        return ErrorCode.none

    def validate_delete(self) -> ErrorCode:
        if self.state == DEAD:
            return ErrorCode.group_id_not_found
        if self.state != EMPTY:
            return ErrorCode.non_empty_group
        return ErrorCode.none

    def delete(self, now: int) -> None:
        self.pending_members.clear()
        self._join_timer = self._sync_timer = None
        self._transition(DEAD, now)

    def fail_all(self, error: ErrorCode) -> None:
        """Answer every parked request with error (the coordinator unloads the group)."""
        for m in self.members.values():
            if m.join_waiter is not None:
                self._reply(m.join_waiter, JoinResult(error, member_id=m.member_id))
                m.join_waiter = None
            if m.sync_waiter is not None:
                self._reply(m.sync_waiter, SyncResult(error))
                m.sync_waiter = None

    # --- timers -----------------------------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        """Run every timer that is due."""
        if self._join_timer is not None and self._join_timer[0] <= now:
            self._join_timer_fired(now, self._join_timer)
        if self._sync_timer is not None and self._sync_timer[0] <= now:
            self._sync_timer_fired(now, self._sync_timer)
        for member_id, deadline in list(self.pending_members.items()):
            if deadline <= now and member_id in self.pending_members:
                del self.pending_members[member_id]
                if self.state == PREPARING_REBALANCE and self.all_members_joined():
                    self._complete_join(now)
        for member in list(self.members.values()):
            if member.heartbeat_deadline is not None and member.heartbeat_deadline <= now \
                    and self.members.get(member.member_id) is member:
                self._session_expired(now, member)

    def _join_timer_fired(self, now: int, timer: tuple[int, str, int, int]) -> None:
        _, kind, delay, remaining = timer
        self._join_timer = None
        if self.state != PREPARING_REBALANCE:
            return
        if kind == "initial" and self.new_member_added and remaining != 0:
            # More members arrived during the initial delay: wait a little longer (up to the rebalance timeout).
            self.new_member_added = False
            new_delay = min(self.config.initial_rebalance_delay_ms, remaining)
            self._join_timer = (now + new_delay, "initial", new_delay, max(remaining - delay, 0))
            return
        self._complete_join(now)

    def _sync_timer_fired(self, now: int, timer: tuple[int, int]) -> None:
        _, generation = timer
        self._sync_timer = None
        if generation != self.generation or self.state not in (COMPLETING_REBALANCE, STABLE):
            return
        if self.pending_sync:
            for member_id in list(self.pending_sync):
                if member_id in self.members:
                    self._remove_current(member_id)
            self._prepare_rebalance(now)

    def _session_expired(self, now: int, member: Member) -> None:
        if member.has_satisfied_heartbeat():
            member.heartbeat_deadline = None  # rescheduled when its join or sync completes
            return
        self._remove_current(member.member_id)
        if self.state in (STABLE, COMPLETING_REBALANCE):
            self._maybe_prepare_rebalance_or_complete_join(now)
        elif self.state == PREPARING_REBALANCE and self.all_members_joined():
            self._complete_join(now)

    # --- membership helpers -----------------------------------------------------------------------------------

    def _remove_current(self, member_id: str) -> None:
        member = self.members[member_id]
        if member.join_waiter is not None:
            # Tell a parked JoinGroup to start over (the member may still be alive).
            self._reply(member.join_waiter, JoinResult(ErrorCode.unknown_member_id))
            member.join_waiter = None
        if member.sync_waiter is not None:
            self._reply(member.sync_waiter, SyncResult(ErrorCode.unknown_member_id))
            member.sync_waiter = None
        self._remove(member_id)

    def _remove(self, member_id: str) -> None:
        member = self.members.pop(member_id, None)
        if member is not None and member.group_instance_id is not None \
                and self.static_members.get(member.group_instance_id) == member_id:
            del self.static_members[member.group_instance_id]
        if self.leader_id == member_id:
            self.leader_id = next(iter(self.members), None)
        self.pending_members.pop(member_id, None)
        self.pending_sync.discard(member_id)

    def _transition(self, state: str, now: int) -> None:
        self.previous_state = self.state
        self.state = state
        self.state_timestamp = now

    def _reply(self, token: Any, result: JoinResult | SyncResult) -> None:
        self._outbox.append((token, result))

    # --- persistence ------------------------------------------------------------------------------------------

    def _take_snapshot(self) -> None:
        self.snapshot = self.to_record()
        self.snapshot_seq += 1

    def to_record(self) -> dict:
        """The persisted form: the last completed generation (Stable) or an empty group."""
        return {
            "v": RECORD_VERSION,
            "state": EMPTY if self.state in (EMPTY, DEAD) or not self.members else STABLE,
            "generation": self.generation,
            "protocol_type": self.protocol_type,
            "protocol_name": self.protocol_name,
            "leader": self.leader_id,
            "state_timestamp": self.state_timestamp,
            "members": [
                {
                    "id": m.member_id,
                    "instance_id": m.group_instance_id,
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                    "rebalance_timeout_ms": m.rebalance_timeout_ms,
                    "session_timeout_ms": m.session_timeout_ms,
                    "protocols": [[name, _b64(md)] for name, md in m.protocols],
                    "assignment": _b64(m.assignment),
                }
                for m in self.members.values()
            ],
        }

    @classmethod
    def from_record(cls, group_id: str, config: GroupConfig, record: dict, now: int, *,
                    make_member_id: Callable[[str], str] = new_member_id) -> "ClassicGroup":
        """Load a persisted group. Every member gets a fresh session timeout from now."""
        group = cls(group_id, config, now, make_member_id=make_member_id)
        group.generation = int(record["generation"])
        group.protocol_type = record.get("protocol_type")
        group.protocol_name = record.get("protocol_name")
        group.state_timestamp = int(record.get("state_timestamp", now))
        for d in record.get("members", []):
            m = Member(
                d["id"], d.get("instance_id"), d.get("client_id", ""), d.get("client_host", ""),
                int(d["rebalance_timeout_ms"]), int(d["session_timeout_ms"]), group.protocol_type or "",
                tuple((name, _unb64(md)) for name, md in d["protocols"]), assignment=_unb64(d.get("assignment", "")),
            )
            m.heartbeat_deadline = now + m.session_timeout_ms
            group.members[m.member_id] = m
            if m.group_instance_id is not None:
                group.static_members[m.group_instance_id] = m.member_id
        if group.members:
            group.state = STABLE
            leader = record.get("leader")
            group.leader_id = leader if leader in group.members else next(iter(group.members))
        else:
            group.state = EMPTY
            group.protocol_name = None
        group.subscribed = group._compute_subscribed()
        group.snapshot = record
        return group


def _inconsistent(requested: str | None, current: str | None) -> bool:
    return requested is not None and current is not None and requested != current


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""
