"""The group coordinator over a real (SQLite) metadata store, two "brokers" sharing it in one process: leases,
persistence, failover, offsets, expiry and listing. No network: the coordinators are called directly, with real
topic catalogs, a registry that the test kills brokers in, and a clock that the test moves."""

from __future__ import annotations

import asyncio

import pytest
from kio.schema.errors import ErrorCode

from dray_broker.config import Settings
from dray_broker.groups.coordinator import CoordinatorError, GroupCoordinator, consumer_config_from_settings
from dray_broker.groups.consumer_state import ConsumerConfig
from dray_broker.groups.state import STABLE, GroupConfig, JoinRequest
from dray_broker.groups.store import GroupStore
from dray_broker.metadata.sqlite import SqliteMetadataStore
from dray_broker.routing.registry import BrokerInfo
from dray_broker.topics.catalog import TopicCatalog
from tests.unit.clock import ManualClock

CONFIG = GroupConfig(initial_rebalance_delay_ms=0, min_session_timeout_ms=100)
TIMEOUT_S = 10


class LiveSet:
    """The live brokers, as a BrokerRegistry shows them (the coordinator's LiveBrokers); _close takes a broker out
    as its registration would go."""

    def __init__(self, brokers: dict[int, BrokerInfo], me: BrokerInfo):
        self.brokers = brokers
        self.me = me
        self.ready = True  # registered in the live session generation

    def live(self) -> list[BrokerInfo]:
        return sorted(self.brokers.values(), key=lambda b: b.id)


async def _coordinators(path, n=2, config=CONFIG, clock: ManualClock | None = None,
                        consumer_config: ConsumerConfig | None = None) -> list[GroupCoordinator]:
    """n coordinators over one SQLite file (a store, a topic catalog and a broker id each), on one clock."""
    clock = clock or ManualClock()
    live: dict[int, BrokerInfo] = {}
    out = []
    for i in range(1, n + 1):
        store = await SqliteMetadataStore.open(str(path), session_timeout_ms=2_000)
        topics = TopicCatalog(store)
        await topics.start()
        info = BrokerInfo(i, "127.0.0.1", 9000 + i, None)
        live[i] = info
        c = GroupCoordinator(store, topics, LiveSet(live, info), i, config,
                             consumer_config or consumer_config_from_settings(Settings()), clock)
        await c.start()
        out.append(c)
    return out


async def _close(*coordinators, crash=False):
    for c in coordinators:
        if not crash:
            await c.stop()
        else:
            # A crash: timers and tasks die with the process; only the store session ends (as when it expires).
            c._stopped = True
            for rt in list(c._groups.values()):
                if rt.timer:
                    rt.timer.cancel()
            for t in [c._watch_task, c._sweep_task, c._session_task, *c._tasks]:
                if t:
                    t.cancel()
        assert isinstance(c.registry, LiveSet)
        del c.registry.brokers[c.broker_id]
        await c.topics.stop()
        await c.metadata.close()


def _join(member_id="", client="c", session=5_000, rebalance=5_000, instance=None):
    return JoinRequest(member_id=member_id, group_instance_id=instance, client_id=client, client_host="",
                       session_timeout_ms=session, rebalance_timeout_ms=rebalance, protocol_type="consumer",
                       protocols=(("range", b"m"),))


async def _until(condition, what: str) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not condition():
            await asyncio.sleep(0.01)


def _parked(c: GroupCoordinator, group: str, member_id: str) -> bool:
    """The member's JoinGroup waits at the group's join barrier."""
    rt = c._groups.get(group)
    member = rt.group.members.get(member_id) if rt is not None else None
    return member is not None and member.join_waiter is not None


async def _join_barrier(c: GroupCoordinator, group: str, requests: list[JoinRequest]):
    """Known members join together: once all wait at the barrier, the clock moves on until the (initial)
    rebalance delay has passed and their JoinGroup results come."""
    joins = asyncio.gather(*(c.join(group, r) for r in requests))
    await _until(lambda: all(_parked(c, group, r.member_id) for r in requests), "members at the join barrier")
    async with asyncio.timeout(TIMEOUT_S):
        while not joins.done():  # a millisecond at a time: each step may run a timer that sets the next one
            c.clock.advance(1)
            await asyncio.wait({joins}, timeout=0.01)
    return joins.result()


async def _form(c: GroupCoordinator, group: str, n: int):
    """n members join and sync; returns (member ids, generation)."""
    ids = [(await c.join(group, _join(client=f"c{i}"))).member_id for i in range(n)]
    results = await _join_barrier(c, group, [_join(m) for m in ids])
    generation = results[0].generation_id
    leader = results[0].leader
    syncs = await asyncio.gather(*(
        c.sync(group, m, None, generation, None, None, {x: x.encode() for x in ids} if m == leader else {})
        for m in ids
    ))
    assert all(s.error == ErrorCode.none for s in syncs)
    return ids, generation


async def _owner(cs, group):
    """The coordinator that holds the group (asking one whose lease it is not raises NOT_COORDINATOR)."""
    node = await cs[0].find_coordinator(group)
    return next(c for c in cs if c.broker_id == node.id)


async def test_one_coordinator_per_group_and_find_coordinator_names_it(tmp_path):
    a, b = await _coordinators(tmp_path / "m.db")
    try:
        group = "g-lease"
        r = await a.join(group, _join())
        assert r.error == ErrorCode.member_id_required
        with pytest.raises(CoordinatorError) as e:
            await b.join(group, _join())
        assert e.value.error == ErrorCode.not_coordinator
        assert (await b.find_coordinator(group)).id == 1
        assert (await a.find_coordinator(group)).id == 1
        with pytest.raises(CoordinatorError):
            await b.commit_offsets(group, "", None, -1, 8, [("t", 0, 5, -1, None)])
        # A group nobody holds and that does not exist: no lease is taken by asking about it.
        assert await b.heartbeat("nothing-here", "m", None, 1) == ErrorCode.unknown_member_id
        assert await GroupStore(b.metadata).get_lease("nothing-here") is None
    finally:
        await _close(a, b)


async def test_failover_keeps_the_generation_and_committed_offsets(tmp_path):
    a, b = await _coordinators(tmp_path / "m.db")
    group = "g-failover"
    try:
        first = await _owner([a, b], group)
        other = b if first is a else a
        (m1, m2), gen = await _form(first, group, 2)
        errors = await first.commit_offsets(group, m1, None, gen, 8, [("t", 0, 10, 3, "meta"), ("t", 1, 20, 3, None)])
        assert errors == [ErrorCode.none, ErrorCode.none]
        await _close(first, crash=True)
        # The lease went with the session; the survivor loads the stored generation.
        assert await other.heartbeat(group, m1, None, gen) == ErrorCode.none
        assert await other.heartbeat(group, m2, None, gen) == ErrorCode.none
        assert other._groups[group].group.state == STABLE
        offsets = await other.fetch_offsets(group, [("t", 0), ("t", 1), ("t", 2)])
        assert offsets[("t", 0)].offset == 10 and offsets[("t", 0)].leader_epoch == 3
        assert offsets[("t", 0)].metadata == "meta" and offsets[("t", 1)].metadata == ""
        assert offsets[("t", 2)] is None
        assert (await other.sync(group, m2, None, gen, None, None, {})).assignment == m2.encode()
        # Sessions run on the new coordinator: a member that stays silent past its session timeout (5 s) is
        # evicted, and the one that heartbeats is told to rejoin.
        for _ in range(5):
            other.clock.advance(1_000)
            assert await other.heartbeat(group, m1, None, gen) == ErrorCode.none
        other.clock.advance(1_000)
        assert await other.heartbeat(group, m1, None, gen) == ErrorCode.rebalance_in_progress
        assert list(other._groups[group].group.members) == [m1]
    finally:
        await _close(*[c for c in (a, b) if not c._stopped])


async def test_graceful_stop_hands_over_at_once_and_parked_joins_get_not_coordinator(tmp_path):
    slow = GroupConfig(initial_rebalance_delay_ms=60_000, min_session_timeout_ms=100)
    a, b = await _coordinators(tmp_path / "m.db", config=slow)
    group = "g-stop"
    first = await _owner([a, b], group)
    other = b if first is a else a
    try:
        member = (await first.join(group, _join())).member_id
        parked = asyncio.ensure_future(first.join(group, _join(member)))
        await _until(lambda: _parked(first, group, member), "the join at the barrier")  # the delay never passes
        assert not parked.done()
        await _close(first)
        assert (await parked).error == ErrorCode.not_coordinator
        # The lease is gone at once: the other broker answers (the group was never completed: unknown member).
        r = await other.join(group, _join(member))
        assert r.error == ErrorCode.unknown_member_id
    finally:
        await _close(other)


async def test_bad_commits_store_nothing(tmp_path):
    (a,) = await _coordinators(tmp_path / "m.db", n=1)
    group = "g-bad"
    try:
        (m1,), gen = await _form(a, group, 1)
        assert await a.commit_offsets(group, "ghost", None, gen, 8, [("t", 0, 1, -1, "")]) == \
            [ErrorCode.unknown_member_id]
        assert await a.commit_offsets(group, m1, None, gen + 1, 8, [("t", 0, 1, -1, "")]) == \
            [ErrorCode.illegal_generation]
        assert await a.commit_offsets(group, "", None, -1, 8, [("t", 0, 1, -1, "")]) == \
            [ErrorCode.unknown_member_id]
        assert await a.commit_offsets(group, m1, None, gen, 8, [("t", 0, 1, -1, "x" * 5000)]) == \
            [ErrorCode.offset_metadata_too_large]
        assert await a.fetch_offsets(group, None) == {}
        # A group that does not exist: v9+ says so, older versions answer ILLEGAL_GENERATION.
        assert await a.commit_offsets("nope", "m", None, 1, 9, [("t", 0, 1, -1, "")]) == \
            [ErrorCode.group_id_not_found]
        assert await a.commit_offsets("nope", "m", None, 1, 8, [("t", 0, 1, -1, "")]) == \
            [ErrorCode.illegal_generation]
        assert await GroupStore(a.metadata).get_state("nope") is None
    finally:
        await _close(a)


async def test_simple_group_commits_list_describe_and_delete(tmp_path):
    a, b = await _coordinators(tmp_path / "m.db")
    try:
        groups = [f"g-simple-{i}" for i in range(8)] + ["weird/id ~%", ""]
        for g in groups:
            owner = await _owner([a, b], g)
            assert await owner.commit_offsets(g, "", None, -1, 8, [("t", 0, 7, -1, "x")]) == [ErrorCode.none]
            assert (await owner.fetch_offsets(g, None))[("t", 0)].offset == 7
            d = await owner.describe(g)
            assert d.state == "Empty" and d.protocol_type == "" and d.members == ()
        listed = [x.group_id for x in await a.list_groups()] + [x.group_id for x in await b.list_groups()]
        assert sorted(listed) == sorted(groups)  # every group once, across both brokers
        for g in groups:
            owner = await _owner([a, b], g)
            assert await owner.delete_group(g) == ErrorCode.none
            assert await owner.describe(g) is None
            assert await owner.fetch_offsets(g, None) == {}
            assert await owner.delete_group(g) == ErrorCode.group_id_not_found
        assert await a.list_groups() == [] and await b.list_groups() == []
    finally:
        await _close(a, b)


async def test_offsets_of_an_empty_group_expire_after_retention(tmp_path):
    config = GroupConfig(initial_rebalance_delay_ms=0, min_session_timeout_ms=100, offsets_retention_ms=300,
                         offsets_retention_check_interval_ms=3_600_000)
    clock = ManualClock()
    (a,) = await _coordinators(tmp_path / "m.db", n=1, config=config, clock=clock)
    try:
        group = "g-expiry"
        (m1,), gen = await _form(a, group, 1)
        await a.commit_offsets(group, m1, None, gen, 8, [("t", 0, 3, -1, "")])
        clock.advance(400)
        await a.expire_offsets()  # Stable and subscribed (unparseable metadata counts as subscribed): kept
        assert (await a.fetch_offsets(group, [("t", 0)]))[("t", 0)].offset == 3
        assert (await a.leave(group, [(m1, None)])) == (ErrorCode.none, [ErrorCode.none])
        await a.expire_offsets()  # empty, but only just: kept
        assert (await a.fetch_offsets(group, [("t", 0)]))[("t", 0)] is not None
        clock.advance(400)
        await a.expire_offsets()
        assert await a.describe(group) is None  # offsets gone, and the empty group with them
        assert await GroupStore(a.metadata).get_state(group) is None
    finally:
        await _close(a)


async def test_offset_delete_refuses_subscribed_topics(tmp_path):
    from tests.unit.test_groups_state import subscription

    (a,) = await _coordinators(tmp_path / "m.db", n=1)
    group = "g-odel"
    try:
        m = (await a.join(group, _join())).member_id
        req = JoinRequest(member_id=m, group_instance_id=None, client_id="c", client_host="", session_timeout_ms=5000,
                          rebalance_timeout_ms=5000, protocol_type="consumer",
                          protocols=(("range", subscription("t1")),))
        (r,) = await _join_barrier(a, group, [req])
        await a.sync(group, m, None, r.generation_id, None, None, {})
        await a.commit_offsets(group, m, None, r.generation_id, 8, [("t1", 0, 1, -1, ""), ("t2", 0, 1, -1, "")])
        error, results = await a.delete_offsets(group, [("t1", [0]), ("t2", [0])])
        assert error == ErrorCode.none
        assert results == {("t1", 0): ErrorCode.group_subscribed_to_topic, ("t2", 0): ErrorCode.none}
        assert set(await a.fetch_offsets(group, None)) == {("t1", 0)}
        assert await a.delete_offsets("nope", [("t", [0])]) == (ErrorCode.group_id_not_found, {})
    finally:
        await _close(a)
