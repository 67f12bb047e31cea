"""The classic group state machine (dray_broker/groups/state.py), driven with a fake clock: no I/O."""

from __future__ import annotations

import itertools
import struct

import pytest
from kio.schema.errors import ErrorCode

from dray_broker.groups.state import (
    COMPLETING_REBALANCE,
    DEAD,
    EMPTY,
    PREPARING_REBALANCE,
    STABLE,
    ClassicGroup,
    GroupConfig,
    JoinRequest,
    JoinResult,
    SyncResult,
    subscribed_topics,
)

SESSION = 10_000
REBALANCE = 30_000
DELAY = 3_000


def subscription(*topics: str, version: int = 1) -> bytes:
    out = struct.pack(">hi", version, len(topics))
    for t in topics:
        out += struct.pack(">h", len(t)) + t.encode()
    return out + struct.pack(">i", -1) + struct.pack(">i", 0)  # user data (null), owned partitions (empty)


class Harness:
    """A group plus a fake clock; requests are identified by the tokens the harness makes."""

    def __init__(self, **config):
        self.now = 1_000_000
        ids = itertools.count(1)
        self.group = ClassicGroup("g", GroupConfig(**{"initial_rebalance_delay_ms": DELAY, **config}), self.now,
                                  make_member_id=lambda prefix: f"{prefix}-{next(ids)}")
        self.replies: dict[object, JoinResult | SyncResult] = {}

    def _collect(self):
        for token, result in self.group.take_outbox():
            assert token not in self.replies, "a request was answered twice"
            self.replies[token] = result

    def join(self, member_id="", *, client="c", instance=None, session=SESSION, rebalance=REBALANCE,
             protocols=(("range", b"meta"),), protocol_type="consumer", v4=True, v9=True) -> object:
        token = object()
        self.group.join(self.now, token, JoinRequest(
            member_id=member_id, group_instance_id=instance, client_id=client, client_host="/127.0.0.1",
            session_timeout_ms=session, rebalance_timeout_ms=rebalance, protocol_type=protocol_type,
            protocols=tuple(protocols), require_known_member_id=v4, supports_skip_assignment=v9,
        ))
        self._collect()
        return token

    def sync(self, member_id, generation, assignments=None, *, instance=None, protocol_type=None,
             protocol_name=None) -> object:
        token = object()
        self.group.sync(self.now, token, member_id, instance, generation, protocol_type, protocol_name,
                        assignments or {})
        self._collect()
        return token

    def heartbeat(self, member_id, generation, instance=None) -> ErrorCode:
        return self.group.heartbeat(self.now, member_id, instance, generation)

    def leave(self, *members):
        result = self.group.leave(self.now, list(members))
        self._collect()
        return result

    def advance(self, ms: int) -> None:
        """Move the clock, firing every timer that falls due on the way (at its deadline)."""
        target = self.now + ms
        for _ in range(10_000):
            deadline = self.group.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.group.tick(self.now)
            self._collect()
        else:
            raise AssertionError("timers do not settle")
        self.now = target

    def result(self, token):
        return self.replies.get(token)

    def await_join(self, tokens) -> list[JoinResult]:
        """Advance in initial-delay steps until every JoinGroup is answered (new members extend the delay)."""
        for _ in range(REBALANCE // DELAY + 2):
            if all(self.result(t) is not None for t in tokens):
                break
            self.advance(DELAY)
        return [self.result(t) for t in tokens]

    def new_member(self, client="c", **kw) -> str:
        """A dynamic member id handed out by JoinGroup v4+ (MEMBER_ID_REQUIRED)."""
        r = self.result(self.join(client=client, **kw))
        assert r.error == ErrorCode.member_id_required
        return r.member_id

    def form(self, n: int, **kw) -> tuple[list[str], int]:
        """n members join a new group and the leader assigns: (member ids, generation)."""
        ids = [self.new_member(client=f"c{i}") for i in range(n)]
        tokens = [self.join(m, **kw) for m in ids]
        assert all(self.result(t) is None for t in tokens), "the initial rebalance waits for its delay"
        results = self.await_join(tokens)
        generation = results[0].generation_id
        leader = results[0].leader
        assert all(r.error == ErrorCode.none and r.generation_id == generation for r in results)
        syncs = [self.sync(m, generation, {m2: m2.encode() for m2 in ids} if m == leader else None) for m in ids]
        assert all(self.result(t).error == ErrorCode.none for t in syncs)
        assert self.group.state == STABLE
        return ids, generation


def test_member_id_required_then_initial_rebalance_then_sync():
    h = Harness()
    r = h.result(h.join())
    assert r.error == ErrorCode.member_id_required and r.member_id.startswith("c-")
    assert h.group.state == EMPTY and r.member_id in h.group.pending_members
    token = h.join(r.member_id)
    assert h.result(token) is None and h.group.state == PREPARING_REBALANCE
    h.advance(DELAY - 1)
    assert h.result(token) is None
    h.advance(1)
    j = h.result(token)
    assert (j.error, j.generation_id, j.leader, j.member_id) == (ErrorCode.none, 1, r.member_id, r.member_id)
    assert j.protocol_type == "consumer" and j.protocol_name == "range"
    assert [(m.member_id, m.metadata) for m in j.members] == [(r.member_id, b"meta")]
    assert h.group.state == COMPLETING_REBALANCE
    seq = h.group.snapshot_seq
    s = h.result(h.sync(r.member_id, 1, {r.member_id: b"assignment"}))
    assert s == SyncResult(ErrorCode.none, "consumer", "range", b"assignment")
    assert h.group.state == STABLE and h.group.snapshot_seq == seq + 1
    assert h.group.snapshot["state"] == STABLE and h.group.snapshot["generation"] == 1
    assert h.heartbeat(r.member_id, 1) == ErrorCode.none


def test_join_v3_adds_the_member_at_once():
    h = Harness()
    token = h.join(v4=False, client="old")
    assert h.result(token) is None and len(h.group.members) == 1
    h.advance(DELAY)
    assert h.result(token).error == ErrorCode.none and h.result(token).member_id.startswith("old-")


def test_three_members_share_one_generation_and_only_the_leader_gets_metadata():
    h = Harness()
    ids = [h.new_member(client=f"c{i}") for i in range(3)]
    tokens = []
    for m in ids:
        tokens.append(h.join(m))
        h.advance(1_000)  # each new member extends the initial delay
    assert all(h.result(t) is None for t in tokens)
    h.advance(DELAY)
    results = [h.result(t) for t in tokens]
    assert {r.generation_id for r in results} == {1}
    leader = [r for r in results if r.member_id == r.leader]
    assert len(leader) == 1 and sorted(m.member_id for m in leader[0].members) == sorted(ids)
    assert all(r.members == () for r in results if r.member_id != r.leader)


def test_follower_sync_waits_for_the_leader_assignment():
    h = Harness()
    ids = [h.new_member(client=f"c{i}") for i in range(2)]
    tokens = [h.join(m) for m in ids]
    h.await_join(tokens)
    leader = h.result(tokens[0]).leader
    follower = next(m for m in ids if m != leader)
    waiting = h.sync(follower, 1)
    assert h.result(waiting) is None
    assert h.heartbeat(follower, 1) == ErrorCode.none  # heartbeats are fine while completing
    h.sync(leader, 1, {leader: b"L", follower: b"F", "stranger": b"x"})
    assert h.result(waiting).assignment == b"F"
    assert h.group.members[leader].assignment == b"L"


def test_new_member_triggers_rebalance_and_barrier_waits_for_known_members():
    h = Harness()
    (a, b), gen = h.form(2)
    c = h.new_member(client="late")
    tc = h.join(c)
    assert h.group.state == PREPARING_REBALANCE and h.result(tc) is None
    assert h.heartbeat(a, gen) == ErrorCode.rebalance_in_progress
    # Offsets of the current generation may still be committed while preparing (onPartitionsRevoked).
    assert h.group.validate_offset_commit(h.now, a, None, gen) == ErrorCode.none
    ta = h.join(a)
    assert h.result(ta) is None
    tb = h.join(b)
    results = [h.result(t) for t in (ta, tb, tc)]
    assert all(r.error == ErrorCode.none and r.generation_id == gen + 1 for r in results)
    assert h.group.state == COMPLETING_REBALANCE
    assert h.group.validate_offset_commit(h.now, a, None, gen + 1) == ErrorCode.rebalance_in_progress
    assert h.group.validate_offset_commit(h.now, a, None, gen) == ErrorCode.illegal_generation


def test_barrier_times_out_and_drops_members_that_did_not_rejoin():
    h = Harness()
    (a, b, c), gen = h.form(3)
    ta = h.join(a, protocols=(("range", b"changed"),))  # changed metadata forces a rebalance
    tb = h.join(b)
    # c keeps heartbeating (REBALANCE_IN_PROGRESS) but never rejoins.
    for _ in range(REBALANCE // 5_000):
        h.advance(5_000)
        if h.result(ta) is None:
            assert h.heartbeat(c, gen) == ErrorCode.rebalance_in_progress
    assert h.result(ta).generation_id == gen + 1 and h.result(tb).generation_id == gen + 1
    assert set(h.group.members) == {a, b}
    assert h.heartbeat(c, gen) == ErrorCode.unknown_member_id


def test_session_timeout_evicts_a_silent_member():
    h = Harness()
    (a, b), gen = h.form(2)
    for _ in range(3):
        h.advance(SESSION // 4)
        assert h.heartbeat(a, gen) == ErrorCode.none
    h.advance(SESSION // 4)
    assert h.group.state == PREPARING_REBALANCE and b not in h.group.members
    assert h.heartbeat(a, gen) == ErrorCode.rebalance_in_progress
    ta = h.join(a)
    assert h.result(ta).generation_id == gen + 1 and h.result(ta).leader == a


def test_leave_rebalances_and_the_last_leave_empties_the_group():
    h = Harness()
    (a, b), gen = h.form(2)
    error, results = h.leave((b, None))
    assert (error, results) == (ErrorCode.none, [ErrorCode.none])
    assert h.group.state == PREPARING_REBALANCE
    ta = h.join(a)
    assert h.result(ta).generation_id == gen + 1
    h.sync(a, gen + 1, {a: b"all"})
    seq = h.group.snapshot_seq
    assert h.leave((a, None), ("nobody", None)) == (ErrorCode.none, [ErrorCode.none, ErrorCode.unknown_member_id])
    # No members left: the join phase completes at once and the empty group is persisted.
    assert h.group.state == EMPTY and h.group.generation == gen + 2
    assert h.group.snapshot_seq == seq + 1 and h.group.snapshot["state"] == EMPTY
    assert h.group.protocol_type == "consumer" and h.group.protocol_name is None


def test_leaving_while_parked_in_join_answers_unknown_member():
    h = Harness()
    (a, b), gen = h.form(2)
    ta = h.join(a, protocols=(("range", b"new"),))
    assert h.result(ta) is None
    h.leave((a, None))
    assert h.result(ta).error == ErrorCode.unknown_member_id


def test_errors_for_unknown_members_stale_generations_and_bad_requests():
    h = Harness()
    (a, b), gen = h.form(2)
    assert h.heartbeat("ghost", gen) == ErrorCode.unknown_member_id
    assert h.heartbeat(a, gen - 1) == ErrorCode.illegal_generation
    assert h.result(h.sync("ghost", gen)).error == ErrorCode.unknown_member_id
    assert h.result(h.sync(a, gen + 5)).error == ErrorCode.illegal_generation
    assert h.result(h.sync(a, gen, protocol_type="other")).error == ErrorCode.inconsistent_group_protocol
    assert h.result(h.join("ghost")).error == ErrorCode.unknown_member_id
    assert h.result(h.join(session=1_000)).error == ErrorCode.invalid_session_timeout
    assert h.result(h.join(protocol_type="connect")).error == ErrorCode.inconsistent_group_protocol
    assert h.result(h.join(protocols=(("other", b""),))).error == ErrorCode.inconsistent_group_protocol
    # Offset commits: unknown member, stale generation, no member id on a live group.
    assert h.group.validate_offset_commit(h.now, "ghost", None, gen) == ErrorCode.unknown_member_id
    assert h.group.validate_offset_commit(h.now, a, None, gen - 1) == ErrorCode.illegal_generation
    assert h.group.validate_offset_commit(h.now, "", None, -1) == ErrorCode.unknown_member_id
    assert h.group.validate_offset_commit(h.now, a, None, gen) == ErrorCode.none
    assert h.group.validate_delete() == ErrorCode.non_empty_group
    assert h.group.state == STABLE and h.group.generation == gen


def test_empty_group_accepts_commits_without_generation():
    h = Harness()
    assert h.group.validate_offset_commit(h.now, "", None, -1) == ErrorCode.none
    assert h.group.validate_offset_commit(h.now, "someone", None, 3) == ErrorCode.unknown_member_id
    assert h.group.offset_expiry_base() == "commit"  # a simple group: each offset from its commit time
    assert h.group.validate_delete() == ErrorCode.none


def test_static_member_restart_keeps_generation_and_fences_the_old_id():
    h = Harness()
    ta = h.join(instance="i-a", client="ca")
    tb = h.join(instance="i-b", client="cb")  # static members need no MEMBER_ID_REQUIRED round
    h.await_join([ta, tb])
    a, b = h.result(ta).member_id, h.result(tb).member_id
    assert a.startswith("i-a-") and b.startswith("i-b-")
    gen = h.result(ta).generation_id
    leader = h.result(ta).leader
    h.sync(leader, gen, {a: b"A", b: b"B"})
    h.sync(b if leader == a else a, gen)
    assert h.group.state == STABLE
    seq = h.group.snapshot_seq
    # b restarts: unknown member id, same instance id.
    tb2 = h.join(instance="i-b", client="cb")
    r = h.result(tb2)
    assert r.error == ErrorCode.none and r.generation_id == gen and r.member_id != b
    assert h.group.state == STABLE and h.group.snapshot_seq == seq + 1
    assert h.result(h.sync(r.member_id, gen, instance="i-b")).assignment == b"B"
    assert h.heartbeat(b, gen, instance="i-b") == ErrorCode.fenced_instance_id
    assert h.heartbeat(r.member_id, gen, instance="i-b") == ErrorCode.none
    assert h.group.validate_offset_commit(h.now, b, "i-b", gen) == ErrorCode.fenced_instance_id


def test_static_leader_restart_skips_assignment_on_v9_and_hides_leadership_before():
    h = Harness()
    ta = h.join(instance="i-a")
    h.advance(DELAY)
    a = h.result(ta).member_id
    h.sync(a, 1, {a: b"A"})
    r = h.result(h.join(instance="i-a"))
    assert r.leader == r.member_id and r.skip_assignment and [m.member_id for m in r.members] == [r.member_id]
    r_old = h.result(h.join(instance="i-a", v9=False))
    assert r_old.leader == r.member_id != r_old.member_id and not r_old.skip_assignment and r_old.members == ()


def test_static_members_stay_through_a_rebalance_they_miss_and_can_be_removed_by_instance_id():
    h = Harness()
    ta = h.join(instance="i-a")
    tb = h.join(instance="i-b")
    h.await_join([ta, tb])
    a, b = h.result(ta).member_id, h.result(tb).member_id
    h.sync(h.result(ta).leader, 1)
    h.sync(a if h.result(ta).leader == b else b, 1)
    token = h.join(a, instance="i-a", protocols=(("range", b"x"),))
    while h.result(token) is None:  # b heartbeats but does not rejoin before the rebalance timeout
        assert h.heartbeat(b, 1, instance="i-b") == ErrorCode.rebalance_in_progress
        h.advance(SESSION // 2)
    assert h.result(token).generation_id == 2 and set(h.group.members) == {a, b}
    assert h.leave(("", "i-b")) == (ErrorCode.none, [ErrorCode.none])
    assert set(h.group.members) == {a}


def test_members_that_never_sync_are_evicted_after_the_rebalance_timeout():
    h = Harness()
    ids = [h.new_member(client=f"c{i}") for i in range(2)]
    tokens = [h.join(m) for m in ids]
    h.await_join(tokens)
    leader = h.result(tokens[0]).leader
    other = next(m for m in ids if m != leader)
    h.sync(leader, 1, {leader: b"L"})
    assert h.group.state == STABLE
    for _ in range(REBALANCE // (SESSION // 2) - 1):
        h.advance(SESSION // 2)
        assert h.heartbeat(leader, 1) == ErrorCode.none and h.heartbeat(other, 1) == ErrorCode.none
    h.advance(SESSION // 2)  # heartbeats alone do not make up for the missing SyncGroup
    assert other not in h.group.members and h.group.state == PREPARING_REBALANCE


def test_pending_member_that_never_rejoins_expires():
    h = Harness()
    (a,), gen = h.form(1)
    pending = h.new_member(client="flaky")
    assert pending in h.group.pending_members
    for _ in range(3):
        h.advance(SESSION // 2)
        assert h.heartbeat(a, gen) == ErrorCode.none
    assert pending not in h.group.pending_members
    assert h.result(h.join(pending)).error == ErrorCode.unknown_member_id


def test_leader_rejoining_a_stable_group_starts_a_rebalance_and_followers_without_change_do_not():
    h = Harness()
    (a, b), gen = h.form(2)
    leader = h.group.leader_id
    follower = b if leader == a else a
    r = h.result(h.join(follower))
    assert r.error == ErrorCode.none and r.generation_id == gen and h.group.state == STABLE
    h.join(leader)
    assert h.group.state == PREPARING_REBALANCE


def test_protocol_selection_takes_one_every_member_supports():
    h = Harness()
    ids = [h.new_member(client=f"c{i}") for i in range(3)]
    prefs = [(("range", b"r"), ("roundrobin", b"rr")), (("roundrobin", b"rr"), ("range", b"r")),
             (("roundrobin", b"rr"), ("sticky", b"s"))]
    tokens = [h.join(m, protocols=p) for m, p in zip(ids, prefs)]
    h.await_join(tokens)
    assert {h.result(t).protocol_name for t in tokens} == {"roundrobin"}
    leader = next(h.result(t) for t in tokens if h.result(t).members)
    assert {m.metadata for m in leader.members} == {b"rr"}
    # A newcomer that supports nothing in common is refused.
    assert h.result(h.join(protocols=(("sticky", b"s"),))).error == ErrorCode.inconsistent_group_protocol


def test_completing_rebalance_answers_a_repeated_join_with_the_same_generation():
    h = Harness()
    ids = [h.new_member(client=f"c{i}") for i in range(2)]
    tokens = [h.join(m) for m in ids]
    h.await_join(tokens)
    again = h.result(h.join(ids[1]))
    assert again.generation_id == 1 and h.group.state == COMPLETING_REBALANCE


def test_a_new_member_during_completing_rebalance_answers_waiting_syncs_with_rebalance_in_progress():
    h = Harness()
    ids = [h.new_member(client=f"c{i}") for i in range(2)]
    tokens = [h.join(m) for m in ids]
    h.await_join(tokens)
    follower = next(m for m in ids if m != h.group.leader_id)
    waiting = h.sync(follower, 1)
    h.join(h.new_member(client="late"))
    assert h.result(waiting).error == ErrorCode.rebalance_in_progress
    assert h.group.state == PREPARING_REBALANCE


def test_record_round_trip_keeps_the_generation_and_gives_fresh_sessions():
    h = Harness()
    (a, b), gen = h.form(2, protocols=(("range", subscription("t1", "t2")),))
    record = h.group.snapshot
    loaded = ClassicGroup.from_record("g", h.group.config, record, h.now + 60_000)
    assert loaded.state == STABLE and loaded.generation == gen and set(loaded.members) == {a, b}
    assert loaded.leader_id == h.group.leader_id
    assert loaded.members[a].assignment == a.encode()
    assert loaded.heartbeat(h.now + 60_000, a, None, gen) == ErrorCode.none
    assert loaded.next_deadline() == h.now + 60_000 + SESSION
    assert loaded.subscribed == {"t1", "t2"} and loaded.is_subscribed_to("t1") and not loaded.is_subscribed_to("x")
    assert loaded.offset_expiry_base() == "commit"
    empty = ClassicGroup.from_record("g", h.group.config, {**record, "members": []}, h.now)
    assert empty.state == EMPTY and empty.offset_expiry_base() == "state"


def test_delete_and_offset_delete_checks():
    h = Harness()
    (a,), gen = h.form(1, protocols=(("range", subscription("t1")),))
    assert h.group.validate_offset_delete() == ErrorCode.none  # a consumer group: per-topic check
    assert h.group.is_subscribed_to("t1") and not h.group.is_subscribed_to("t2")
    h.leave((a, None))
    h.advance(0)
    assert h.group.validate_delete() == ErrorCode.none
    h.group.delete(h.now)
    assert h.group.state == DEAD
    assert h.group.validate_delete() == ErrorCode.group_id_not_found
    assert h.heartbeat(a, gen) == ErrorCode.coordinator_not_available


def test_describe_shows_metadata_only_when_stable():
    h = Harness()
    (a, b), gen = h.form(2)
    d = h.group.describe()
    assert d.state == STABLE and d.protocol_data == "range" and {m.metadata for m in d.members} == {b"meta"}
    h.join(h.new_member(client="x"))
    d = h.group.describe()
    assert d.state == PREPARING_REBALANCE and d.protocol_data == "" and {m.metadata for m in d.members} == {b""}


def test_fail_all_answers_every_parked_request():
    h = Harness()
    ids = [h.new_member(client=f"c{i}") for i in range(2)]
    tokens = [h.join(m) for m in ids]
    h.group.fail_all(ErrorCode.not_coordinator)
    h._collect()
    assert [h.result(t).error for t in tokens] == [ErrorCode.not_coordinator] * 2


def test_subscribed_topics_parser():
    assert subscribed_topics(subscription("a", "bb", version=3)) == ["a", "bb"]
    with pytest.raises(ValueError):
        subscribed_topics(b"\x00")
