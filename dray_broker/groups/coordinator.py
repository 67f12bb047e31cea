"""The group coordinator: the I/O shell around ClassicGroup (state.py) and KIP-848 ConsumerGroup (consumer_state.py).

One broker at a time coordinates a group: the one holding its ephemeral lease key (store.py). A broker takes a
free lease when a request for the group reaches it (or when the holder's lease goes and the rendezvous hash picks
it), loads the last persisted generation, and from then on runs the group's join barrier and timers in memory.
When the holder dies, its session ends, the lease key goes, and the next broker to see the group loads it from the
store; members keep their generation (a Stable group stays Stable) and committed offsets are untouched. A broker
asked about a group whose lease another broker holds answers NOT_COORDINATOR, and FindCoordinator names the lease
holder (or, for an unleased group, the rendezvous choice over live brokers), so clients converge on one broker.

Per group, each request runs the state machine synchronously, then `_settle` persists the group's snapshot if it
changed (CAS on the state key's version; a mismatch means another broker took over: the group is dropped here and
its parked requests get NOT_COORDINATOR) and only then releases the replies, so no member sees a generation that is
not stored. One asyncio timer per group calls `tick` at the group's next deadline. Loading a group and settling it
run in tasks of the coordinator, not of the request: a client that disconnects cancels its request, and must not
stop a state write half-way (its new version unrecorded, the next CAS would fail) nor the replies to other members.

Leases live in the broker's metadata session. When a session generation ends (the broker or the store stalled past
the session timeout), its leases are gone: every group held in it is dropped here (NOT_COORDINATOR), and once the
store opened the next generation and the broker registered again, the coordinator takes those groups back (unless
another broker took one meanwhile).

A group id holds one type at a time (the stored record says which): a classic group with members refuses
ConsumerGroupHeartbeat and a consumer group with members refuses JoinGroup (GROUP_ID_NOT_FOUND, as Kafka without
online migration); an empty group changes type when the other protocol's first member arrives. ConsumerGroupHeartbeat
persists the group (epochs, members, target and current assignments) before it answers, so a coordinator that takes
over continues with the same epochs and nobody is fenced.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Coroutine, Literal, Protocol, TypeVar, overload

from kio.schema.errors import ErrorCode

from dray_broker.clock import SYSTEM_CLOCK, Clock, Timer
from dray_broker.config import Settings
from dray_broker.groups.consumer_state import (
    ConsumerConfig,
    ConsumerDescription,
    ConsumerGroup,
    MayDescribe,
    HeartbeatRequest,
    HeartbeatResult,
    is_consumer_record,
)
from dray_broker.groups.state import (
    DEAD,
    EMPTY,
    ClassicGroup,
    Description,
    GroupConfig,
    JoinRequest,
    JoinResult,
    SyncResult,
)
from dray_broker.groups.store import CommittedOffset, GroupStore, Lease
from dray_broker.metadata import MetadataError, MetadataStore, SessionExpiredError, VersionMismatchError, Watch
from dray_broker.routing.registry import BrokerInfo
from dray_broker.routing.zones import brokers_for
from dray_broker.server.listeners import DEFAULT_LISTENER
from dray_broker.topics.catalog import TopicCatalog

log = logging.getLogger(__name__)

# After a lease disappears, wait this long (for the broker registry to drop a dead holder too) before the
# rendezvous choice among live brokers takes the group over on its own.
TAKEOVER_DELAY_S = 0.5
# How often a coordinator whose session was renewed looks whether the broker registered again.
REGISTERED_POLL_S = 0.05
DEFAULT_RETENTION_TIME = -1


T = TypeVar("T")
G = TypeVar("G", ClassicGroup, ConsumerGroup)


class CoordinatorError(Exception):
    def __init__(self, error: ErrorCode, message: str = ""):
        super().__init__(message or error.name)
        self.error = error


def config_from_settings(settings: Settings) -> GroupConfig:
    """Group settings from the broker settings."""
    return GroupConfig(
        min_session_timeout_ms=settings.group_min_session_timeout_ms,
        max_session_timeout_ms=settings.group_max_session_timeout_ms,
        initial_rebalance_delay_ms=settings.group_initial_rebalance_delay_ms,
        offsets_retention_ms=int(settings.offsets_retention_minutes * 60_000),
        offsets_retention_check_interval_ms=settings.offsets_retention_check_interval_ms,
    )


def rendezvous(group_id: str, broker_ids: list[int]) -> int:
    return max(broker_ids, key=lambda b: hashlib.blake2b(f"group/{group_id}/{b}".encode(), digest_size=8).digest())


def consumer_config_from_settings(settings: Settings, may_describe: MayDescribe | None = None) -> ConsumerConfig:
    """KIP-848 group settings from the broker settings; may_describe: the authorizer's check (--acls) that limits
    each member's regex to the topics its principal may describe."""
    return ConsumerConfig(
        session_timeout_ms=settings.group_consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.group_consumer_heartbeat_interval_ms,
        may_describe=may_describe,
    )


class NotClassicGroupError(CoordinatorError):
    """The group is a consumer (KIP-848) group."""


@dataclass(eq=False)
class _Runtime:
    group: ClassicGroup | ConsumerGroup
    state_version: int | None
    lease: Lease
    persisted_seq: int = 0
    logged: tuple[int, str] = (-1, "")
    timer: Timer | None = None
    persist_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False


@dataclass(frozen=True)
class ListedGroup:
    group_id: str
    protocol_type: str
    state: str
    group_type: str = "classic"


class LiveBrokers(Protocol):
    """The broker registry as the coordinator uses it (routing/registry.py BrokerRegistry)."""

    @property
    def me(self) -> BrokerInfo: ...

    @property
    def ready(self) -> bool: ...  # registered in the live metadata session generation

    def live(self) -> list[BrokerInfo]: ...


class GroupCoordinator:
    def __init__(self, metadata: MetadataStore, topics: TopicCatalog, registry: LiveBrokers, broker_id: int,
                 config: GroupConfig, consumer_config: ConsumerConfig, clock: Clock = SYSTEM_CLOCK):
        self.metadata = metadata
        self.topics = topics  # KIP-848 subscriptions resolve topic names to ids and partition counts
        self.registry = registry
        self.broker_id = broker_id
        self.config = config
        self.consumer_config = consumer_config
        self.clock = clock  # session timers, takeover delay and offset expiry run on it (tests drive it)
        self.store = GroupStore(metadata)
        self.instance = uuid.uuid4().hex  # tells this process's leases from an earlier one with the same id
        self._groups: dict[str, _Runtime] = {}
        self._acquiring: dict[str, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._watch_task: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None
        self._session_task: asyncio.Task | None = None
        self._stopped = False

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        watch = await self.store.watch_leases()
        self._watch_task = asyncio.create_task(self._follow_leases(watch), name="group-lease-watch")
        self._sweep_task = asyncio.create_task(self._sweep_loop(), name="group-offset-expiry")
        self._session_task = asyncio.create_task(self._follow_session(), name="group-session")

    async def stop(self) -> None:
        """Give up every group: parked requests get NOT_COORDINATOR, leases are released so that another broker
        takes over at once."""
        self._stopped = True
        for task in (self._watch_task, self._sweep_task, self._session_task):
            if task is not None:
                task.cancel()
        runtimes = list(self._groups.values())
        for rt in runtimes:
            self._unload(rt, ErrorCode.not_coordinator)
        await asyncio.gather(*(self._release(rt) for rt in runtimes), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _unowned(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run coro in a task of the coordinator and wait for it: cancelling the caller (its client went away)
        does not cancel the work."""
        return asyncio.shield(self._spawn(coro))

    def now(self) -> int:
        return self.clock.now_ms()

    # --- who coordinates what ---------------------------------------------------------------------------------

    def _live_ids(self) -> list[int]:
        return [b.id for b in self.registry.live()]

    def preferred(self, group_id: str) -> int:
        """The broker that should take an unleased group: rendezvous hash over live brokers."""
        return rendezvous(group_id, self._live_ids())

    async def find_coordinator(self, group_id: str, client_id: str | None = None,
                               listener: str = DEFAULT_LISTENER) -> BrokerInfo | None:
        """The BrokerInfo clients (connected on that listener) should send this group's requests to, at that
        listener's endpoint: the lease holder, whatever its zone (one broker runs a group); for a group nobody
        holds, a broker of the client's zone, which takes the lease when the group's first request reaches it.
        None when the lease holder has no such listener."""
        live = {b.id: b for b in self.registry.live()}
        rt = self._groups.get(group_id)
        if rt is not None:
            return (live.get(self.broker_id) or self.registry.me).on(listener)
        lease = await self.store.get_lease(group_id)
        if lease is not None and lease.broker_id in live:
            return live[lease.broker_id].on(listener)
        candidates = brokers_for(list(live.values()), client_id, listener)
        if not candidates:
            return None
        return live[rendezvous(group_id, [b.id for b in candidates])].on(listener)

    def _ours(self, lease: Lease) -> bool:
        """Taken by this process (in any session generation)."""
        return lease.broker_id == self.broker_id and lease.instance == self.instance

    def _mine(self, lease: Lease) -> bool:
        """Held by this process in its live session generation."""
        session = self.metadata.session
        return self._ours(lease) and session.alive and lease.session == session.generation

    def topics_view(self) -> dict[str, tuple[str, int]]:
        """Topic name -> (topic id, partition count), from the broker's topic cache."""
        return {t.name: (str(t.id), t.partitions) for t in self.topics.all()}

    @overload
    async def _runtime(self, group_id: str, *, create: Literal[True], kind: str = "classic") -> _Runtime: ...

    @overload
    async def _runtime(self, group_id: str, *, create: bool, kind: str = "classic") -> _Runtime | None: ...

    async def _runtime(self, group_id: str, *, create: bool, kind: str = "classic") -> _Runtime | None:
        """The group, loaded here (taking its lease if nobody holds it). None if it does not exist and create is
        False (then no lease is taken). CoordinatorError(NOT_COORDINATOR) if another broker holds the lease."""
        while True:
            if self._stopped:
                raise CoordinatorError(ErrorCode.not_coordinator, "this broker is shutting down")
            rt = self._groups.get(group_id)
            if rt is not None:
                return rt
            pending = self._acquiring.get(group_id)
            if pending is None:
                break
            await asyncio.shield(pending)
        done = asyncio.get_running_loop().create_future()
        self._acquiring[group_id] = done

        async def acquire() -> _Runtime | None:
            try:
                return await self._acquire(group_id, create, kind)
            except CoordinatorError:
                raise
            except MetadataError as e:
                log.warning("cannot load group %r: %r", group_id, e)
                raise CoordinatorError(ErrorCode.coordinator_not_available, f"metadata store: {e!r}") from None
            finally:
                del self._acquiring[group_id]
                done.set_result(None)

        return await self._unowned(acquire())

    async def _acquire(self, group_id: str, create: bool, kind: str = "classic") -> _Runtime | None:
        lease = await self.store.get_lease(group_id)
        if lease is not None and self._ours(lease) and not self._mine(lease):
            # Ours from a session generation that ended: it goes with that session, but not soon enough.
            try:
                await self.store.release_lease(group_id, lease.version)
            except VersionMismatchError:
                pass
            lease = await self.store.get_lease(group_id)
        if lease is not None and not self._mine(lease):
            raise CoordinatorError(ErrorCode.not_coordinator, f"broker {lease.broker_id} coordinates the group")
        stored = await self.store.get_state(group_id)
        if stored is None and not create:
            return None
        if lease is None:
            try:
                lease = await self.store.take_lease(group_id, self.broker_id, self.instance,
                                                    self.metadata.session.require())
            except VersionMismatchError:
                holder = await self.store.get_lease(group_id)
                raise CoordinatorError(
                    ErrorCode.not_coordinator,
                    f"broker {holder.broker_id if holder else '?'} took the group first",
                ) from None
            stored = await self.store.get_state(group_id)  # as of now that the lease is ours
        now = self.now()
        if stored is None:
            if not create:
                await self.store.release_lease(group_id, lease.version)
                return None
            group: ClassicGroup | ConsumerGroup
            if kind == "consumer":
                group = ConsumerGroup(group_id, self.consumer_config, now)
            else:
                group = ClassicGroup(group_id, self.config, now)
            group.mark_created()
            rt = _Runtime(group, None, lease)
            self._add(rt)
            try:
                await self._persist(rt)
            except Exception as e:
                self._unload(rt, ErrorCode.coordinator_not_available)
                await self._release(rt)
                raise CoordinatorError(ErrorCode.coordinator_not_available, f"cannot create the group: {e!r}")
            log.info("group %r created, coordinated by broker %d", group_id, self.broker_id)
            return rt
        record, version = stored
        if is_consumer_record(record):
            group = ConsumerGroup.from_record(group_id, self.consumer_config, record, now)
        else:
            group = ClassicGroup.from_record(group_id, self.config, record, now)
        rt = _Runtime(group, version, lease, persisted_seq=group.snapshot_seq)
        self._add(rt)
        self._reschedule(rt)
        log.info("group %r loaded (generation %d, %s, %d members), coordinated by broker %d",
                 group_id, group.generation, group.state, len(group.members), self.broker_id)
        return rt

    def _add(self, rt: _Runtime) -> None:
        """Coordinate the group here, on its lease; the lease's session generation must still be alive (if it
        ended while the lease was being taken, the session follower did not see this group)."""
        if not self._mine(rt.lease):
            raise SessionExpiredError(f"the metadata session generation {rt.lease.session} of the lease ended")
        self._groups[rt.group.group_id] = rt

    def _unload(self, rt: _Runtime, error: ErrorCode) -> None:
        """Forget the group here; parked requests get error."""
        if rt.closed:
            return
        rt.closed = True
        if rt.timer is not None:
            rt.timer.cancel()
            rt.timer = None
        if self._groups.get(rt.group.group_id) is rt:
            del self._groups[rt.group.group_id]
        rt.group.fail_all(error)
        _deliver(rt.group.take_outbox())

    async def _release(self, rt: _Runtime) -> None:
        try:
            await self.store.release_lease(rt.group.group_id, rt.lease.version)
        except Exception as e:  # gone already, or the store is unreachable (the session's end removes it)
            log.debug("releasing the lease of group %r: %r", rt.group.group_id, e)

    # --- persistence and timers -------------------------------------------------------------------------------

    async def _persist(self, rt: _Runtime) -> None:
        target = rt.group.snapshot_seq
        async with rt.persist_lock:
            if rt.persisted_seq >= target:
                return
            if rt.closed:
                raise CoordinatorError(ErrorCode.not_coordinator, "the group moved")
            seq, record = rt.group.snapshot_seq, rt.group.snapshot
            assert record is not None  # snapshot_seq > persisted_seq >= 0: a snapshot was taken
            rt.state_version = await self.store.put_state(rt.group.group_id, record, rt.state_version)
            rt.persisted_seq = seq

    def _settle(self, rt: _Runtime) -> asyncio.Future[None]:
        """After the state machine ran: persist its snapshot if it changed, then release its replies (in a task of
        the coordinator: a request cancelled meanwhile stops neither)."""
        return self._unowned(self._settle_now(rt))

    async def _settle_now(self, rt: _Runtime) -> None:
        replies = rt.group.take_outbox()
        self._reschedule(rt)
        group = rt.group
        if (group.generation, group.state) != rt.logged:
            rt.logged = (group.generation, group.state)
            log.info("group %r: %s, generation %d, %d members%s", group.group_id, group.state, group.generation,
                     len(group.members), f", protocol {group.protocol_name}" if group.protocol_name else "")
        if rt.group.snapshot_seq > rt.persisted_seq:
            try:
                await self._persist(rt)
            except Exception as e:
                lost = isinstance(e, (VersionMismatchError, CoordinatorError))
                error = ErrorCode.not_coordinator if lost else ErrorCode.coordinator_not_available
                log.warning("group %r could not be stored (%r): dropping it here", rt.group.group_id, e)
                replies = [(token, _as_error(result, error)) for token, result in replies]
                self._unload(rt, error)
                await self._release(rt)
        _deliver(replies)

    def _reschedule(self, rt: _Runtime) -> None:
        if rt.timer is not None:
            rt.timer.cancel()
            rt.timer = None
        deadline = rt.group.next_deadline()
        if deadline is None or rt.closed:
            return
        delay = max(0.0, (deadline - self.now() + 1) / 1000)
        rt.timer = self.clock.call_later(delay, functools.partial(self._on_timer, rt))

    def _on_timer(self, rt: _Runtime) -> None:
        rt.timer = None
        if rt.closed:
            return
        if isinstance(rt.group, ConsumerGroup):
            rt.group.tick(self.now(), self.topics_view())
        else:
            rt.group.tick(self.now())
        self._spawn(self._settle_now(rt))

    # --- JoinGroup, SyncGroup, Heartbeat, LeaveGroup ------------------------------------------------------------

    async def join(self, group_id: str, req: JoinRequest) -> JoinResult:
        rt = await self._runtime(group_id, create=req.member_id == "")
        if rt is None:
            return JoinResult(ErrorCode.unknown_member_id, member_id=req.member_id)
        group = rt.group
        if isinstance(group, ConsumerGroup):
            if group.members or req.member_id:
                return JoinResult(ErrorCode.group_id_not_found, member_id=req.member_id)  # not a classic group
            group = self._convert(rt, ClassicGroup(group_id, self.config, self.now()))
        reply: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        group.join(self.now(), reply, req)
        await self._settle(rt)
        return await reply

    async def sync(self, group_id: str, member_id: str, group_instance_id: str | None, generation_id: int,
                   protocol_type: str | None, protocol_name: str | None,
                   assignments: dict[str, bytes]) -> SyncResult:
        rt = await self._runtime(group_id, create=False)
        if rt is None or isinstance(rt.group, ConsumerGroup):
            return SyncResult(ErrorCode.unknown_member_id)
        reply: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        rt.group.sync(self.now(), reply, member_id, group_instance_id, generation_id, protocol_type, protocol_name,
                      assignments)
        await self._settle(rt)
        return await reply

    async def heartbeat(self, group_id: str, member_id: str, group_instance_id: str | None,
                        generation_id: int) -> ErrorCode:
        rt = await self._runtime(group_id, create=False)
        if rt is None or isinstance(rt.group, ConsumerGroup):
            return ErrorCode.unknown_member_id
        error = rt.group.heartbeat(self.now(), member_id, group_instance_id, generation_id)
        self._reschedule(rt)
        return error

    async def leave(self, group_id: str, members: list[tuple[str, str | None]]) -> tuple[ErrorCode, list[ErrorCode]]:
        rt = await self._runtime(group_id, create=False)
        if rt is None or isinstance(rt.group, ConsumerGroup):
            return ErrorCode.none, [ErrorCode.unknown_member_id] * len(members)
        result = rt.group.leave(self.now(), members)
        await self._settle(rt)
        return result

    # --- ConsumerGroupHeartbeat, ConsumerGroupDescribe (KIP-848) -------------------------------------------------

    def _convert(self, rt: _Runtime, group: G) -> G:
        """An empty group changes type (its committed offsets stay)."""
        group.snapshot_seq = rt.group.snapshot_seq
        group.state_timestamp = rt.group.state_timestamp
        rt.group = group
        group.mark_created()
        log.info("group %r is now a %s group", group.group_id,
                 "consumer" if isinstance(group, ConsumerGroup) else "classic")
        return group

    async def consumer_heartbeat(self, group_id: str, req: HeartbeatRequest) -> HeartbeatResult:
        def error(code: ErrorCode, message: str | None = None) -> HeartbeatResult:
            return HeartbeatResult(code, message, req.member_id, req.member_epoch,
                                   self.consumer_config.heartbeat_interval_ms)

        rt = await self._runtime(group_id, create=req.member_epoch == 0, kind="consumer")
        if rt is None:
            return error(ErrorCode.unknown_member_id, f"group {group_id} has no member {req.member_id}")
        group = rt.group
        if isinstance(group, ClassicGroup):
            if group.state != EMPTY or group.members or req.member_epoch != 0:
                return error(ErrorCode.group_id_not_found, f"Group {group_id} is not a consumer group.")
            group = self._convert(rt, ConsumerGroup(group_id, self.consumer_config, self.now()))
        result = group.heartbeat(self.now(), req, self.topics_view())
        await self._settle(rt)
        if rt.closed and result.error == ErrorCode.none:
            return error(ErrorCode.not_coordinator, "the group moved to another coordinator")
        return result

    async def consumer_describe(self, group_id: str) -> ConsumerDescription:
        """ConsumerDescription, or CoordinatorError(GROUP_ID_NOT_FOUND)."""
        rt = await self._runtime(group_id, create=False)
        if rt is None or rt.group.state == DEAD:
            raise CoordinatorError(ErrorCode.group_id_not_found, f"Group {group_id} not found.")
        if not isinstance(rt.group, ConsumerGroup):
            raise CoordinatorError(ErrorCode.group_id_not_found, f"Group {group_id} is not a consumer group.")
        return rt.group.describe_consumer()

    # --- offsets ----------------------------------------------------------------------------------------------

    async def commit_offsets(
        self, group_id: str, member_id: str, group_instance_id: str | None, generation_id: int, api_version: int,
        offsets: list[tuple[str, int, int, int, str | None]], retention_ms: int = DEFAULT_RETENTION_TIME,
    ) -> list[ErrorCode]:
        """Commit (topic, partition, offset, leader epoch, metadata) entries; one error per entry."""
        rt = await self._runtime(group_id, create=False)
        if rt is None:
            if generation_id >= 0:
                error = ErrorCode.group_id_not_found if api_version >= 9 else ErrorCode.illegal_generation
                return [error] * len(offsets)
            rt = await self._runtime(group_id, create=True)  # a "simple" group that only stores offsets
        if isinstance(rt.group, ConsumerGroup):
            errors = rt.group.validate_offset_commit(self.now(), member_id, group_instance_id, generation_id,
                                                     api_version, [(t, p) for t, p, *_ in offsets])
        else:
            errors = [rt.group.validate_offset_commit(self.now(), member_id, group_instance_id,
                                                      generation_id)] * len(offsets)
        self._reschedule(rt)
        now = self.now()
        expire = None if retention_ms == DEFAULT_RETENTION_TIME else now + retention_ms
        results: list[ErrorCode] = []
        writes = []
        for (topic, partition, offset, epoch, metadata), error in zip(offsets, errors):
            metadata = metadata or ""
            if not error and len(metadata.encode()) > self.config.offset_metadata_max_bytes:
                error = ErrorCode.offset_metadata_too_large
            if error:
                results.append(error)
                continue
            results.append(ErrorCode.none)
            writes.append((len(results) - 1, self.store.put_offset(
                group_id, topic, partition, CommittedOffset(offset, epoch, metadata, now, expire))))
        outcomes = await asyncio.gather(*(w for _, w in writes), return_exceptions=True)
        for (i, _), outcome in zip(writes, outcomes):
            if isinstance(outcome, BaseException):
                log.warning("offset commit of group %r failed: %r", group_id, outcome)
                results[i] = ErrorCode.coordinator_not_available
        return results

    async def fetch_offsets(
        self, group_id: str, wanted: list[tuple[str, int]] | None,
        member_id: str | None = None, member_epoch: int = -1, check_member: bool = False,
    ) -> dict[tuple[str, int], CommittedOffset | None]:
        """Committed offsets of the wanted partitions (None: all committed ones); None where nothing is.
        check_member (OffsetFetch v9+): a consumer group checks the member id and epoch."""
        rt = await self._runtime(group_id, create=False)
        if rt is None or rt.group.state == DEAD:
            return {} if wanted is None else {tp: None for tp in wanted}
        if check_member and isinstance(rt.group, ConsumerGroup):
            error = rt.group.validate_offset_fetch(member_id, member_epoch)
            if error:
                raise CoordinatorError(error)
        try:
            if wanted is None:
                return dict(sorted((await self.store.all_offsets(group_id)).items()))
            found = await self.store.get_offsets(group_id, wanted)
        except MetadataError as e:
            raise CoordinatorError(ErrorCode.coordinator_not_available, f"metadata store: {e!r}") from None
        return {tp: found.get(tp) for tp in wanted}

    async def delete_offsets(self, group_id: str,
                             topics: list[tuple[str, list[int]]]) -> tuple[ErrorCode, dict[tuple[str, int], ErrorCode]]:
        rt = await self._runtime(group_id, create=False)
        if rt is None:
            return ErrorCode.group_id_not_found, {}
        error = rt.group.validate_offset_delete()
        if error:
            return error, {}
        results: dict[tuple[str, int], ErrorCode] = {}
        deletes = []
        for topic, partitions in topics:
            subscribed = rt.group.is_subscribed_to(topic)
            for p in partitions:
                if subscribed:
                    results[(topic, p)] = ErrorCode.group_subscribed_to_topic
                else:
                    results[(topic, p)] = ErrorCode.none
                    deletes.append(self.store.delete_offset(group_id, topic, p))
        await asyncio.gather(*deletes)
        return ErrorCode.none, results

    # --- admin ------------------------------------------------------------------------------------------------

    async def describe(self, group_id: str) -> Description | None:
        rt = await self._runtime(group_id, create=False)
        if rt is None or rt.group.state == DEAD:
            return None
        if isinstance(rt.group, ConsumerGroup):
            raise NotClassicGroupError(ErrorCode.group_id_not_found, f"Group {group_id} is not a classic group.")
        return rt.group.describe()

    async def delete_group(self, group_id: str) -> ErrorCode:
        rt = await self._runtime(group_id, create=False)
        if rt is None:
            return ErrorCode.group_id_not_found
        error = rt.group.validate_delete()
        if error:
            return error
        rt.group.delete(self.now())
        self._unload(rt, ErrorCode.coordinator_not_available)
        return await self._unowned(self._delete_stored(rt))

    async def _delete_stored(self, rt: _Runtime) -> ErrorCode:
        group_id = rt.group.group_id
        try:
            await self.store.delete_all_offsets(group_id)
            await self.store.delete_state(group_id, rt.state_version)
        except VersionMismatchError:
            return ErrorCode.not_coordinator
        finally:
            await self._release(rt)
        log.info("group %r deleted", group_id)
        return ErrorCode.none

    async def list_groups(self) -> list[ListedGroup]:
        """The groups this broker coordinates: the ones loaded here, and stored ones nobody holds whose
        rendezvous choice is this broker (so that asking every broker lists every group once)."""
        states, leases = await asyncio.gather(self.store.all_states(), self.store.all_leases())
        live = self._live_ids()
        out = []
        for group_id, record in states.items():
            rt = self._groups.get(group_id)
            if rt is not None:
                if rt.group.state != DEAD:
                    kind = "consumer" if isinstance(rt.group, ConsumerGroup) else "classic"
                    out.append(ListedGroup(group_id, rt.group.protocol_type or "", rt.group.state, kind))
                continue
            lease = leases.get(group_id)
            if lease is not None and lease.broker_id in live:
                if lease.broker_id != self.broker_id:
                    continue
            elif rendezvous(group_id, live) != self.broker_id:
                continue
            state = record.get("state", EMPTY) if record.get("members") else EMPTY
            if is_consumer_record(record):
                out.append(ListedGroup(group_id, "consumer", state, "consumer"))
                continue
            out.append(ListedGroup(group_id, record.get("protocol_type") or "", state))
        return out

    # --- lease watch, takeover, offset expiry -----------------------------------------------------------------

    async def _follow_leases(self, watch: Watch) -> None:
        try:
            async for n in watch:
                group_id = GroupStore.lease_group(n.key)
                if group_id is not None:
                    self._spawn(self._lease_changed(group_id))
        except asyncio.CancelledError:
            await watch.aclose()
            raise
        except Exception:
            log.exception("group lease watch failed")

    async def _lease_changed(self, group_id: str) -> None:
        try:
            lease = await self.store.get_lease(group_id)
        except MetadataError:
            return
        rt = self._groups.get(group_id)
        if rt is not None and (lease is None or not self._mine(lease)):
            log.warning("lost the lease of group %r: dropping it here", group_id)
            self._unload(rt, ErrorCode.not_coordinator)
            rt = None
        if lease is None and rt is None and not self._stopped:
            await self.clock.sleep(TAKEOVER_DELAY_S)
            if self._stopped or self.preferred(group_id) != self.broker_id:
                return
            try:
                await self._runtime(group_id, create=False)
            except CoordinatorError:
                pass
            except Exception as e:
                log.debug("taking over group %r: %r", group_id, e)

    async def _follow_session(self) -> None:
        """Drop the groups of an ended session generation; take them back in the next one."""
        session = self.metadata.session
        try:
            generation = await session.wait_alive()
        except MetadataError:  # the store closed
            return
        while True:
            await session.wait_ended(generation)
            if session.closed:
                return
            held = [rt for rt in self._groups.values() if rt.lease.session == generation]
            for rt in held:
                self._unload(rt, ErrorCode.not_coordinator)
            if held:
                log.warning("metadata session generation %d ended: dropped its %d groups here", generation,
                            len(held))
            try:
                generation = await session.wait_alive()
            except MetadataError:
                return
            # Registered again first: FindCoordinator on other brokers names live lease holders only.
            while not self.registry.ready and session.alive and session.generation == generation:
                await self.clock.sleep(REGISTERED_POLL_S)
            for rt in held:
                try:
                    await self._runtime(rt.group.group_id, create=False)
                except CoordinatorError as e:
                    log.info("group %r not taken back: %s", rt.group.group_id, e)
                except Exception:  # a bug: the group is taken on its next request; keep following the session
                    log.exception("taking group %r back failed", rt.group.group_id)
            if held:
                log.warning("metadata session generation %d: took back %d of %d groups", generation,
                            sum(1 for rt in held if rt.group.group_id in self._groups), len(held))

    async def _sweep_loop(self) -> None:
        interval = self.config.offsets_retention_check_interval_ms / 1000
        while True:
            await self.clock.sleep(interval)
            try:
                await self.expire_offsets()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("offset expiry failed")

    async def expire_offsets(self) -> None:
        """Delete expired committed offsets of the groups this broker coordinates (or should), and delete empty
        groups left without offsets."""
        states, leases = await asyncio.gather(self.store.all_states(), self.store.all_leases())
        for group_id in states:
            lease = leases.get(group_id)
            if lease is not None and not self._mine(lease):
                continue
            if lease is None and self.preferred(group_id) != self.broker_id:
                continue
            try:
                rt = await self._runtime(group_id, create=False)
                if rt is not None:
                    await self._expire_group_offsets(rt)
            except CoordinatorError:
                continue

    async def _expire_group_offsets(self, rt: _Runtime) -> None:
        group = rt.group
        base = group.offset_expiry_base()
        if base is None:
            return
        now = self.now()
        offsets = await self.store.all_offsets(group.group_id)
        expired = []
        for (topic, partition), o in offsets.items():
            if group.is_subscribed_to(topic):
                continue
            if o.expire_timestamp is not None:
                gone = now >= o.expire_timestamp
            else:
                since = group.state_timestamp if base == "state" else o.commit_timestamp
                gone = now - since >= self.config.offsets_retention_ms
            if gone:
                expired.append((topic, partition))
        await asyncio.gather(*(self.store.delete_offset(group.group_id, t, p) for t, p in expired))
        if expired:
            log.info("group %r: %d committed offsets expired", group.group_id, len(expired))
        if len(expired) == len(offsets) and group.state == EMPTY and not group.pending_members:
            if await self.delete_group(group.group_id) == ErrorCode.none:
                log.info("empty group %r without offsets removed", group.group_id)


def _as_error(result: JoinResult | SyncResult, error: ErrorCode) -> JoinResult | SyncResult:
    if isinstance(result, JoinResult):
        return JoinResult(error, member_id=result.member_id)
    return SyncResult(error)


def _deliver(replies: list[tuple[Any, JoinResult | SyncResult]]) -> None:
    for token, result in replies:
        if isinstance(token, asyncio.Future) and not token.done():
            token.set_result(result)
