"""KIP-848 consumer groups in the group coordinator over a real (SQLite) metadata store: persistence and failover,
group types, offsets with member epochs, listing and deletion. No network: the coordinators are called directly."""

from __future__ import annotations

import pytest
from kio.schema.errors import ErrorCode

from dray_broker.config import Settings
from dray_broker.groups.consumer_state import ConsumerGroup, HeartbeatRequest
from dray_broker.groups.coordinator import consumer_config_from_settings
from tests.unit.test_groups_coordinator import _close, _coordinators, _join, _join_barrier, _owner, _until


async def _with_topics(path, consumer_config=None, **counts):
    """Coordinators whose topic catalogs (over their shared store) hold these topics: name=partitions."""
    cs = await _coordinators(path, consumer_config=consumer_config)
    for name, partitions in counts.items():
        await cs[0].topics.create(name, partitions)
        for c in cs:
            assert await c.topics.get(name) is not None  # in each catalog's cache, which subscriptions read
    return cs


def _hb(member_id, epoch, owned=None, names=("t",)):
    first = epoch == 0
    return HeartbeatRequest(member_id=member_id, member_epoch=epoch, rebalance_timeout_ms=30_000 if first else -1,
                            subscribed_topic_names=names if first else None,
                            subscribed_topic_regex="" if first else None, owned={} if first else owned)


def _count(result):
    return sum(len(p) for p in (result.assignment or {}).values())


async def test_consumer_group_survives_failover(tmp_path):
    a, b = await _with_topics(tmp_path / "m.db", t=4)
    group = "cg-failover"
    try:
        first = await _owner([a, b], group)
        other = b if first is a else a
        r1 = await first.consumer_heartbeat(group, _hb("m1", 0))
        assert r1.error == ErrorCode.none and _count(r1) == 4
        r2 = await first.consumer_heartbeat(group, _hb("m2", 0))
        assert r2.member_epoch == 2 and _count(r2) == 0
        r1 = await first.consumer_heartbeat(group, _hb("m1", 1, r1.assignment))  # told to revoke
        assert r1.member_epoch == 1 and _count(r1) == 2
        owned1 = r1.assignment
        await _close(first, crash=True)
        # The survivor loads epochs and assignments; the revocation acknowledgement lands there.
        r1 = await other.consumer_heartbeat(group, _hb("m1", 1, owned1))
        assert r1.error == ErrorCode.none and r1.member_epoch == 2
        r2 = await other.consumer_heartbeat(group, _hb("m2", 2, {}))
        assert r2.error == ErrorCode.none and _count(r2) == 2
        assert not set(r2.assignment[next(iter(r2.assignment))]) & set(owned1[next(iter(owned1))])
        g = other._groups[group].group
        assert isinstance(g, ConsumerGroup) and g.state == "Stable"
        assert await other.commit_offsets(group, "m1", None, 2, 9, [("t", 0, 5, -1, None)]) == [ErrorCode.none]
        # Epoch 1 still counts for the partitions m1 kept since then (KIP-1251), not for those it gave away.
        (kept,) = owned1.values()
        given = [p for p in range(4) if p not in kept]
        assert await other.commit_offsets(group, "m1", None, 1, 9, [("t", p, 5, -1, None) for p in kept]) \
            == [ErrorCode.none] * len(kept)
        assert await other.commit_offsets(group, "m1", None, 1, 9, [("t", p, 5, -1, None) for p in given]) \
            == [ErrorCode.stale_member_epoch] * len(given)
        with pytest.raises(Exception):
            await other.fetch_offsets(group, [("t", 0)], "m1", 1, check_member=True)
        assert (await other.fetch_offsets(group, [("t", 0)], None, -1, check_member=True))[("t", 0)].offset == 5
    finally:
        await _close(*[c for c in (a, b) if not c._stopped])


async def test_regex_filtered_by_the_stored_principal_after_failover(tmp_path):
    """With an authorizer, alice's regex gives her only the topic she may describe; the coordinator that takes
    over filters by the principal stored with her, before any heartbeat of hers says who she is again."""
    allowed = {("User:alice", "ev-1")}
    config = consumer_config_from_settings(Settings(), may_describe=lambda p, host, t: (p, t) in allowed)
    a, b = await _with_topics(tmp_path / "m.db", config, **{"ev-1": 2, "ev-2": 2})
    group = "cg-regex-acl"

    def hb(epoch, owned=None, principal="User:alice"):
        first = epoch == 0
        return HeartbeatRequest(member_id="alice", member_epoch=epoch, rebalance_timeout_ms=30_000 if first else -1,
                                subscribed_topic_names=() if first else None,
                                subscribed_topic_regex="ev-.*" if first else None, owned={} if first else owned,
                                client_host="/127.0.0.1", principal=principal)

    try:
        first = await _owner([a, b], group)
        other = b if first is a else a
        ev1 = first.topics_view()["ev-1"][0]
        r = await first.consumer_heartbeat(group, hb(0))
        assert r.error == ErrorCode.none and _count(r) == 0  # the regex is resolved after this heartbeat
        first.clock.advance(1)
        await _until(lambda: first._groups[group].group.regex_resolution_due is None, "the regex resolved")
        r = await first.consumer_heartbeat(group, hb(r.member_epoch, {}))
        assert r.assignment == {ev1: {0, 1}}
        await _close(first, crash=True)
        r = await other.consumer_heartbeat(group, hb(r.member_epoch, r.assignment, principal=None))
        assert r.error == ErrorCode.none
        g = other._groups[group].group
        assert g.members["alice"].principal == "User:alice" and g.target["alice"] == {ev1: {0, 1}}
    finally:
        await _close(*[c for c in (a, b) if not c._stopped])


async def test_group_types_and_conversion(tmp_path):
    a, b = await _with_topics(tmp_path / "m.db", t=2)
    try:
        c = await _owner([a, b], "classic-1")
        # A classic group with a member refuses KIP-848 members.
        mid = (await c.join("classic-1", _join())).member_id
        await _join_barrier(c, "classic-1", [_join(mid)])
        r = await c.consumer_heartbeat("classic-1", _hb("x", 0))
        assert r.error == ErrorCode.group_id_not_found
        # A consumer group with a member refuses JoinGroup; describe (classic) says it is not classic.
        c2 = await _owner([a, b], "modern-1")
        assert (await c2.consumer_heartbeat("modern-1", _hb("m", 0))).error == ErrorCode.none
        assert (await c2.join("modern-1", _join())).error == ErrorCode.group_id_not_found
        with pytest.raises(Exception) as e:
            await c2.describe("modern-1")
        assert e.value.error == ErrorCode.group_id_not_found
        d = await c2.consumer_describe("modern-1")
        assert d.state == "Stable" and d.members[0].member_id == "m"
        listed = {g.group_id: g for g in await c2.list_groups()}
        assert listed["modern-1"].group_type == "consumer" and listed["modern-1"].protocol_type == "consumer"
        assert (await c2.delete_group("modern-1")) == ErrorCode.non_empty_group
        # Once empty, the id may become a classic group again.
        r = await c2.consumer_heartbeat("modern-1", _hb("m", -1))
        assert r.error == ErrorCode.none and r.member_epoch == -1
        assert (await c2.join("modern-1", _join())).error == ErrorCode.member_id_required
        assert (await c2.delete_group("modern-1")) == ErrorCode.none
        with pytest.raises(Exception):
            await c2.consumer_describe("modern-1")
    finally:
        await _close(a, b)
