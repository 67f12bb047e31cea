"""KIP-848 consumer groups: the pure state machine (consumer_state.py) and the assignors."""

from __future__ import annotations

import random
import uuid

import pytest
from kio.schema.errors import ErrorCode

from dray_broker.groups import assignors
from dray_broker.groups.consumer_state import (
    ConsumerConfig,
    ConsumerGroup,
    HeartbeatRequest,
)

CFG = ConsumerConfig(session_timeout_ms=10_000, heartbeat_interval_ms=1_000)
T1 = str(uuid.UUID(int=1))
T2 = str(uuid.UUID(int=2))


def topics(**counts):
    ids = {"a": T1, "b": T2}
    return {name: (ids.get(name, str(uuid.uuid5(uuid.NAMESPACE_DNS, name))), n) for name, n in counts.items()}


class Client:
    """A well-behaved consumer: it owns what the last assignment said, and sends what it owns."""

    def __init__(self, group: ConsumerGroup, member_id: str, *, names=("a",), regex=None, instance=None,
                 assignor=None, principal=None):
        self.group, self.member_id, self.principal = group, member_id, principal
        self.names, self.regex, self.instance, self.assignor = names, regex, instance, assignor
        self.epoch = 0
        self.owned: dict[str, set[int]] = {}

    def heartbeat(self, now, topic_view, *, full=False):
        join = self.epoch == 0
        r = self.group.heartbeat(now, HeartbeatRequest(
            member_id=self.member_id, member_epoch=self.epoch, instance_id=self.instance,
            rebalance_timeout_ms=30_000 if join or full else -1,
            subscribed_topic_names=tuple(self.names) if join or full else None,
            subscribed_topic_regex=(self.regex or "") if join or full else None,
            server_assignor=self.assignor if join else None,
            owned={t: set(p) for t, p in self.owned.items()}, client_host="/127.0.0.1", principal=self.principal,
        ), topic_view)
        if r.error == ErrorCode.none:
            self.epoch = r.member_epoch
            if r.assignment is not None:
                self.owned = {t: set(p) for t, p in r.assignment.items()}
        return r

    def leave(self, now, topic_view, static=False):
        r = self.group.heartbeat(now, HeartbeatRequest(
            member_id=self.member_id, member_epoch=-2 if static else -1, instance_id=self.instance), topic_view)
        self.owned, self.epoch = {}, 0
        return r

    def count(self):
        return sum(len(p) for p in self.owned.values())


def assert_disjoint(clients):
    seen = set()
    for c in clients:
        for t, ps in c.owned.items():
            for p in ps:
                assert (t, p) not in seen, f"{t}:{p} owned twice"
                seen.add((t, p))
    return seen


def settle(clients, tv, now, rounds=10):
    for _ in range(rounds):
        for c in clients:
            assert c.heartbeat(now, tv).error == ErrorCode.none
            assert_disjoint(clients)
        now += 100
    return now


def test_one_member_gets_everything():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=6)
    c = Client(g, "m1")
    r = c.heartbeat(0, tv)
    assert r.error == ErrorCode.none and r.member_epoch == 1
    assert c.owned == {T1: set(range(6))}
    assert r.heartbeat_interval_ms == 1_000
    assert g.state == "Stable" and g.group_epoch == 1
    # A plain heartbeat with nothing changed carries no assignment.
    assert c.heartbeat(100, tv).assignment is None


def test_revocation_before_reassignment():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=6)
    c1, c2 = Client(g, "m1"), Client(g, "m2")
    c1.heartbeat(0, tv)
    r = c2.heartbeat(10, tv)
    assert r.member_epoch == 2 and c2.owned == {}  # its partitions are still c1's
    assert r.heartbeat_interval_ms == CFG.waiting_heartbeat_interval_ms  # it waits for them: come back soon
    assert g.state == "Reconciling"
    r = c1.heartbeat(20, tv)
    assert r.member_epoch == 1 and c1.count() == 3  # revoke first, at the old epoch
    assert r.heartbeat_interval_ms == CFG.heartbeat_interval_ms
    r = c1.heartbeat(30, tv)  # acknowledges the revocation
    assert r.member_epoch == 2
    r = c2.heartbeat(40, tv)  # the next heartbeat after the acknowledgement gets them
    assert c2.count() == 3 and c2.epoch == 2
    assert r.heartbeat_interval_ms == CFG.heartbeat_interval_ms
    assert_disjoint([c1, c2])
    assert g.state == "Stable"


def test_scale_up_and_down_never_owns_twice():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=6)
    clients = [Client(g, f"m{i}") for i in range(3)]
    now = settle(clients[:1], tv, 0)
    now = settle(clients, tv, now)
    assert sorted(c.count() for c in clients) == [2, 2, 2]
    assert len(assert_disjoint(clients)) == 6
    before = {c.member_id: set(c.owned[T1]) for c in clients}
    clients[2].leave(now, tv)
    now = settle(clients[:2], tv, now)
    assert sorted(c.count() for c in clients[:2]) == [3, 3]
    for c in clients[:2]:
        assert before[c.member_id] <= c.owned[T1]  # sticky
    clients[1].leave(now, tv)
    settle(clients[:1], tv, now)
    assert clients[0].count() == 6


def test_random_membership_changes_keep_ownership_exclusive():
    rnd = random.Random(7)
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=7, b=3)
    pool = [Client(g, f"m{i}", names=("a", "b") if i % 2 else ("a",)) for i in range(6)]
    active: list[Client] = []
    now = 0
    for _ in range(400):
        now += rnd.randint(1, 50)
        action = rnd.random()
        if action < 0.1 and len(active) < len(pool):
            c = rnd.choice([c for c in pool if c not in active])
            active.append(c)
        elif action < 0.15 and active:
            c = rnd.choice(active)
            c.leave(now, tv)
            active.remove(c)
        elif active:
            c = rnd.choice(active)
            assert c.heartbeat(now, tv).error == ErrorCode.none
        assert_disjoint(active)
    now = settle(active, tv, now, rounds=20)
    if active:
        assert len(assert_disjoint(active)) == 10
        assert g.state == "Stable"


def test_epoch_fencing_and_unknown_member():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=2)
    c = Client(g, "m1")
    c.heartbeat(0, tv)
    r = g.heartbeat(1, HeartbeatRequest(member_id="m1", member_epoch=5, owned={}), tv)
    assert r.error == ErrorCode.fenced_member_epoch
    r = g.heartbeat(1, HeartbeatRequest(member_id="nobody", member_epoch=3, owned={}), tv)
    assert r.error == ErrorCode.unknown_member_id
    r = g.heartbeat(1, HeartbeatRequest(member_id="x", member_epoch=0, owned={}), tv)
    assert r.error == ErrorCode.invalid_request  # no rebalance timeout, no subscription
    r = g.heartbeat(1, HeartbeatRequest(member_id="x", member_epoch=0, rebalance_timeout_ms=1000,
                                        subscribed_topic_names=("a",), server_assignor="nope", owned={}), tv)
    assert r.error == ErrorCode.unsupported_assignor
    r = g.heartbeat(1, HeartbeatRequest(member_id="x", member_epoch=0, rebalance_timeout_ms=1000,
                                        subscribed_topic_regex="(", owned={}), tv)
    assert r.error == ErrorCode.invalid_regular_expression
    # As Kafka: a join with no names and an empty regex (librdkafka's "no regex") is a member without a subscription.
    r = g.heartbeat(1, HeartbeatRequest(member_id="y", member_epoch=0, rebalance_timeout_ms=1000,
                                        subscribed_topic_regex="", owned={}), tv)
    assert r.error == ErrorCode.none and r.assignment == {}
    assert g.members["y"].subscribed_names == () and g.members["y"].subscribed_regex is None


def test_previous_epoch_is_accepted_when_the_response_was_lost():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=4)
    c1, c2 = Client(g, "m1"), Client(g, "m2")
    c1.heartbeat(0, tv)
    c2.heartbeat(1, tv)
    c1.heartbeat(2, tv)  # revoke 2 partitions
    c1.heartbeat(3, tv)  # ack: epoch 2
    assert c1.epoch == 2
    # The client never saw epoch 2: it heartbeats with epoch 1 and a subset of its assignment.
    r = g.heartbeat(4, HeartbeatRequest(member_id="m1", member_epoch=1, owned={T1: set(c1.owned[T1])}), tv)
    assert r.error == ErrorCode.none and r.member_epoch == 2


def test_session_timeout_fences_and_frees_partitions():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=4)
    c1, c2 = Client(g, "m1"), Client(g, "m2")
    now = settle([c1, c2], tv, 0)
    assert g.next_deadline() is not None
    g.tick(now + 9_000, tv)
    assert len(g.members) == 2
    c1.heartbeat(now + 9_000, tv)
    g.tick(now + 10_500, tv)
    assert list(g.members) == ["m1"]
    c1.heartbeat(now + 10_600, tv)
    assert c1.count() == 4
    assert c2.heartbeat(now + 10_700, tv).error == ErrorCode.unknown_member_id


def test_static_member_leaves_for_a_while_and_comes_back():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=4)
    c1, c2 = Client(g, "m1", instance="i1"), Client(g, "m2", instance="i2")
    now = settle([c1, c2], tv, 0)
    owned = dict(c2.owned)
    epoch = g.group_epoch
    assert c2.leave(now, tv, static=True).member_epoch == -2
    assert g.group_epoch == epoch  # no rebalance
    c3 = Client(g, "m2-new", instance="i2")
    # Another member with the same instance id while the old one is active is refused.
    c4 = Client(g, "m1-dup", instance="i1")
    assert c4.heartbeat(now, tv).error == ErrorCode.unreleased_instance_id
    r = c3.heartbeat(now + 1, tv)
    assert r.error == ErrorCode.none and c3.owned == owned and g.group_epoch == epoch
    assert "m2" not in g.members


def test_static_member_session_expiry_reassigns():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=4)
    c1, c2 = Client(g, "m1"), Client(g, "m2", instance="i2")
    now = settle([c1, c2], tv, 0)
    c2.leave(now, tv, static=True)
    c1.heartbeat(now + 5_000, tv)
    g.tick(now + 10_100, tv)
    assert list(g.members) == ["m1"]
    settle([c1], tv, now + 10_200)
    assert c1.count() == 4


def test_revocation_timeout_fences_a_stuck_member():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=4)
    c1 = Client(g, "m1")
    c1.heartbeat(0, tv)
    c2 = Client(g, "m2")
    c2.heartbeat(1, tv)
    # c1 learns it must revoke but never acknowledges (sends the old ownership).
    r = g.heartbeat(2, HeartbeatRequest(member_id="m1", member_epoch=1, owned={T1: {0, 1, 2, 3}}), tv)
    assert r.assignment is not None and len(r.assignment[T1]) == 2
    g.heartbeat(5_000, HeartbeatRequest(member_id="m1", member_epoch=1, owned={T1: {0, 1, 2, 3}}), tv)
    c2.heartbeat(5_000, tv)
    assert c2.owned == {}
    g.tick(30_003, tv)
    assert "m1" not in g.members


def test_regex_subscription_picks_up_new_topics():
    g = ConsumerGroup("g", CFG, 0)
    c = Client(g, "m1", names=(), regex="ev-.*")
    tv = topics(**{"ev-1": 2, "other": 3})
    c.heartbeat(0, tv)
    g.tick(g.next_deadline(), tv)  # the new regex is resolved
    c.heartbeat(0, tv)
    assert c.count() == 2
    tv2 = topics(**{"ev-1": 2, "other": 3, "ev-2": 4, "xev-3": 1})
    epoch = g.group_epoch
    c.heartbeat(10, tv2)
    assert c.count() == 6 and g.group_epoch == epoch + 1
    assert g.is_subscribed_to("ev-2") and not g.is_subscribed_to("xev-3")  # full match


def test_a_new_regex_is_resolved_after_the_heartbeat_that_brought_it():
    """As Kafka: the heartbeat that brings a regex new to the group gets the named topics only; the regex is
    resolved right after it (a new group epoch) and its topics come at the next heartbeat."""
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=2, **{"ev-1": 2, "ev-2": 1})
    c = Client(g, "m1", names=("a",), regex="ev-.*")
    r = c.heartbeat(0, tv)
    assert c.owned == {T1: {0, 1}} and r.member_epoch == 1
    assert g.next_deadline() == 0
    g.tick(0, tv)
    assert g.group_epoch == 2 and g.next_deadline() == 10_000  # the session only
    r = c.heartbeat(100, tv)
    assert r.member_epoch == 2 and c.count() == 5
    # A second member with the same regex needs no new resolution.
    c2 = Client(g, "m2", names=(), regex="ev-.*")
    settle([c, c2], tv, 200)
    assert c.count() + c2.count() == 5 and c2.count() > 0
    # The resolved regexes survive a failover.
    g2 = ConsumerGroup.from_record("g", CFG, g.snapshot, 5_000)
    assert g2.resolved_regexes == {"ev-.*"} and g2.regex_resolution_due is None


def test_regex_matches_only_topics_the_members_principal_may_describe():
    """With an authorizer, each member's regex gives it only the topics its principal may describe (as Kafka 4); an
    ACL granted or removed counts at the next heartbeat; the principal survives a failover; a member stored without
    one (state written before) is unfiltered until its next heartbeat says who it is."""
    allowed = {("User:alice", "ev-1")}
    seen_hosts = set()

    def may_describe(principal, host, topic):
        seen_hosts.add(host)
        return principal == "User:admin" or (principal, topic) in allowed

    cfg = ConsumerConfig(session_timeout_ms=10_000, heartbeat_interval_ms=1_000, may_describe=may_describe)
    g = ConsumerGroup("g", cfg, 0)
    tv = topics(**{"ev-1": 2, "ev-2": 1, "ev-3": 1, "other": 1})
    ids = {name: tid for name, (tid, _) in tv.items()}
    alice = Client(g, "alice", names=(), regex="ev-.*", principal="User:alice")
    alice.heartbeat(0, tv)
    g.tick(0, tv)  # the regex is resolved
    now = settle([alice], tv, 100)
    assert alice.owned == {ids["ev-1"]: {0, 1}}
    assert set(g.subscription_metadata) == {"ev-1"} and seen_hosts == {"/127.0.0.1"}

    allowed.add(("User:alice", "ev-2"))  # an ACL granted: a new target at the next heartbeat
    epoch = g.group_epoch
    now = settle([alice], tv, now)
    assert alice.owned == {ids["ev-1"]: {0, 1}, ids["ev-2"]: {0}} and g.group_epoch == epoch + 1

    admin = Client(g, "admin", names=(), regex="ev-.*", principal="User:admin")
    now = settle([alice, admin], tv, now)
    assert set(alice.owned) <= {ids["ev-1"], ids["ev-2"]} and alice.count() > 0
    assert alice.count() + admin.count() == 4 and ids["ev-3"] in admin.owned

    allowed.clear()  # alice may describe none of them any more, though admin still subscribes to all
    now = settle([alice, admin], tv, now)
    assert alice.count() == 0 and admin.count() == 4

    # A new coordinator filters as the old one did: the principal is stored with the member.
    assert {m["id"]: m.get("principal") for m in g.snapshot["members"]} == {"alice": "User:alice",
                                                                              "admin": "User:admin"}
    g2 = ConsumerGroup.from_record("g", cfg, g.snapshot, now)
    assert g2.members["alice"].principal == "User:alice"
    alice.group = admin.group = g2
    now = settle([alice, admin], tv, now)
    assert alice.count() == 0 and admin.count() == 4

    # State written before principals were stored: unfiltered until the member's next heartbeat.
    old = dict(g2.snapshot, members=[{k: v for k, v in m.items() if k != "principal"}
                                     for m in g2.snapshot["members"]])
    g3 = ConsumerGroup.from_record("g", cfg, old, now)
    assert g3.members["alice"].principal is None
    assert g3._member_topics(g3.members["alice"], tv) == {ids["ev-1"], ids["ev-2"], ids["ev-3"]}
    alice.group = admin.group = g3
    settle([alice, admin], tv, now)
    assert g3.members["alice"].principal == "User:alice" and alice.count() == 0 and admin.count() == 4


def test_without_an_authorizer_regexes_are_not_filtered_nor_principals_stored():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(**{"ev-1": 2, "ev-2": 1})
    c = Client(g, "m1", names=(), regex="ev-.*")
    c.heartbeat(0, tv)
    g.tick(0, tv)
    settle([c], tv, 100)
    assert c.count() == 3 and "principal" not in g.snapshot["members"][0]


def test_resubscription_replaces_the_subscription_revoking_first():
    """Regex -> another regex -> names -> regex and names: the old subscription's partitions are revoked (the
    member keeps its epoch) before the new ones come, and none of the old stays."""
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=2, **{"ev-1": 2, "ev-2": 1, "ot-1": 3})
    ids = {name: tid for name, (tid, _) in tv.items()}
    c = Client(g, "m1", names=(), regex="ev-.*")
    now = 0

    def resubscribe(names, regex, expected):
        nonlocal now
        before = {t for t, ps in c.owned.items() if ps}
        c.names, c.regex = names, regex
        epoch = c.epoch
        r = c.heartbeat(now, tv, full=True)
        wanted = {ids[n] for n in expected}
        if before - wanted:
            # The first answer only takes away what the new subscription does not keep.
            assert r.member_epoch == epoch and set(c.owned) <= before & wanted
        for _ in range(4):
            now += 100
            if g.next_deadline() is not None and g.next_deadline() <= now:
                g.tick(now, tv)
            c.heartbeat(now, tv)
        assert set(c.owned) == wanted and c.count() == sum(tv[n][1] for n in expected)
        assert g.members["m1"].subscribed_regex == (regex or None)
        assert g.members["m1"].subscribed_names == tuple(sorted(names))

    resubscribe((), "ev-.*", ["ev-1", "ev-2"])
    resubscribe((), "ot-.*", ["ot-1"])
    resubscribe(("a",), "", ["a"])
    resubscribe(("a",), "ev-1", ["a", "ev-1"])
    resubscribe((), "ev-.*", ["ev-1", "ev-2"])
    assert g.resolved_regexes == {"ev-.*"}  # regexes no member uses are forgotten


def test_empty_regex_means_none_and_names_work():
    g = ConsumerGroup("g", CFG, 0)
    c = Client(g, "m1", names=("a",), regex="")
    c.heartbeat(0, topics(a=3))
    assert c.count() == 3
    assert g.members["m1"].subscribed_regex is None


def test_partitions_added_bump_the_epoch():
    g = ConsumerGroup("g", CFG, 0)
    c = Client(g, "m1")
    c.heartbeat(0, topics(a=2))
    c.heartbeat(1, topics(a=5))
    assert c.count() == 5


def test_persistence_round_trip():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=4)
    c1, c2 = Client(g, "m1"), Client(g, "m2", instance="i2")
    settle([c1, c2], tv, 0)
    seq = g.snapshot_seq
    assert seq > 0 and g.snapshot["type"] == "consumer"
    g2 = ConsumerGroup.from_record("g", CFG, g.snapshot, 1_000)
    assert g2.group_epoch == g.group_epoch and g2.state == "Stable"
    assert {m: x.assigned for m, x in g2.members.items()} == {m: x.assigned for m, x in g.members.items()}
    c1.group = c2.group = g2
    settle([c1, c2], tv, 1_000)
    assert c1.count() + c2.count() == 4
    # A heartbeat that changes nothing does not need a write.
    seq = g2.snapshot_seq
    c1.heartbeat(2_000, tv)
    assert g2.snapshot_seq == seq


def test_offset_commit_and_fetch_validation():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=2)

    def commit(member, epoch, api=9, parts=(("a", 0),)):
        errors = g.validate_offset_commit(0, member, None, epoch, api, list(parts))
        assert len(set(errors)) == 1
        return errors[0]

    assert commit("", -1) == ErrorCode.none  # empty group: admin commits
    c = Client(g, "m1")
    c.heartbeat(0, tv)
    assert commit("", -1) == ErrorCode.unknown_member_id
    assert commit("m1", c.epoch) == ErrorCode.none
    assert commit("m1", c.epoch + 1) == ErrorCode.stale_member_epoch
    assert commit("m1", c.epoch, api=8) == ErrorCode.unsupported_version
    assert g.validate_offset_fetch(None, -1) == ErrorCode.none
    assert g.validate_offset_fetch("m1", c.epoch) == ErrorCode.none
    assert g.validate_offset_fetch("m1", 99) == ErrorCode.stale_member_epoch
    assert g.validate_offset_fetch("zz", 1) == ErrorCode.unknown_member_id


def test_commit_with_an_older_epoch_is_checked_per_partition():
    """KIP-1251: a commit that crossed the heartbeat bumping the epoch counts for partitions the member held at
    that epoch and still holds; a partition given away since (a zombie commit) is refused."""
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=4)
    c1 = Client(g, "m1")
    now = settle([c1], tv, 0)
    first = c1.epoch
    assert c1.owned == {T1: {0, 1, 2, 3}}
    c2 = Client(g, "m2")
    settle([c1, c2], tv, now)
    assert c1.epoch > first and c1.count() == 2 and c2.count() == 2
    kept, moved = sorted(c1.owned[T1]), sorted(c2.owned[T1])
    parts = [("a", p) for p in kept + moved]
    assert g.validate_offset_commit(0, "m1", None, first, 9, parts) \
        == [ErrorCode.none] * 2 + [ErrorCode.stale_member_epoch] * 2
    assert g.validate_offset_commit(0, "m1", None, c1.epoch, 9, parts) == [ErrorCode.none] * 4
    # m2 got its partitions at its current epoch: an epoch before that is stale for all of them.
    assert g.validate_offset_commit(0, "m2", None, c2.epoch - 1, 9, [("a", p) for p in moved]) \
        == [ErrorCode.stale_member_epoch] * 2
    # The epochs survive a coordinator failover.
    g2 = ConsumerGroup.from_record("g", CFG, g.snapshot, 0)
    assert g2.validate_offset_commit(0, "m1", None, first, 9, parts) \
        == [ErrorCode.none] * 2 + [ErrorCode.stale_member_epoch] * 2


def test_assignor_choice_follows_members():
    g = ConsumerGroup("g", CFG, 0)
    tv = topics(a=4, b=4)
    c1 = Client(g, "m1", names=("a", "b"), assignor="range")
    c2 = Client(g, "m2", names=("a", "b"), assignor="range")
    settle([c1, c2], tv, 0)
    assert g.preferred_assignor() == "range"
    assert c1.owned == {T1: {0, 1}, T2: {0, 1}} and c2.owned == {T1: {2, 3}, T2: {2, 3}}
    assert g.describe_consumer().assignor_name == "range"


# --- assignors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", assignors.ASSIGNORS)
def test_assignors_cover_every_partition_once(name):
    subs = {f"m{i}": frozenset({"t1", "t2"}) for i in range(4)}
    out = assignors.assign(name, subs, {"t1": 6, "t2": 5}, {})
    seen = [(t, p) for parts in out.values() for t, ps in parts.items() for p in ps]
    assert sorted(seen) == sorted([("t1", p) for p in range(6)] + [("t2", p) for p in range(5)])


def test_uniform_is_balanced_and_sticky():
    subs = {f"m{i}": frozenset({"t"}) for i in range(3)}
    first = assignors.uniform_assign(subs, {"t": 9}, {})
    assert sorted(len(p["t"]) for p in first.values()) == [3, 3, 3]
    subs["m3"] = frozenset({"t"})
    second = assignors.uniform_assign(subs, {"t": 9}, first)
    assert sorted(len(p.get("t", ())) for p in second.values()) == [2, 2, 2, 3]
    moved = sum(len(first[m]["t"] - second[m].get("t", set())) for m in first)
    assert moved == 2  # only what m3 needs moves


def test_uniform_heterogeneous_subscriptions():
    subs = {"m1": frozenset({"t1"}), "m2": frozenset({"t1", "t2"})}
    out = assignors.uniform_assign(subs, {"t1": 2, "t2": 2}, {})
    assert out["m1"] == {"t1": {0, 1}} or sum(len(p) for p in out["m1"].values()) == 2
    assert "t2" not in out["m1"]
    assert sum(len(p) for p in out["m2"].values()) == 2


def test_range_is_sticky_within_shares():
    subs = {"a": frozenset({"t"}), "b": frozenset({"t"})}
    first = assignors.range_assign(subs, {"t": 4}, {})
    assert first == {"a": {"t": {0, 1}}, "b": {"t": {2, 3}}}
    subs["c"] = frozenset({"t"})
    second = assignors.range_assign(subs, {"t": 4}, first)
    assert second["a"]["t"] <= first["a"]["t"] and second["b"]["t"] <= first["b"]["t"]
    assert sum(len(p.get("t", ())) for p in second.values()) == 4
