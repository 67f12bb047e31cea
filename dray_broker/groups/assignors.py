"""Server-side assignors of KIP-848 consumer groups: `uniform` (the default) and `range`, both sticky.

An assignor maps members to partitions. Input: every member's subscribed topic ids, the partition count of each
subscribed topic, and the previous target assignment (member -> topic id -> partitions). Output: the new target
assignment (member -> topic id -> set of partitions). Pure functions, deterministic (ties break on member id).

- uniform: every partition of the subscribed topics goes to a subscribed member; members' counts differ by at most
  one where subscriptions allow. Members keep what they had (while still subscribed) up to their share; the rest
  is dealt to the least loaded eligible members, then partitions move from the most to the least loaded member
  until no move can narrow the gap.
- range: per topic, the members subscribed to it (by id) get contiguous shares: P // M each, the first P % M one
  more. Sticky: a member keeps previous partitions of a topic within its share; freed ones fill the gaps.
"""

from __future__ import annotations

from typing import Iterable, Mapping

Assignment = dict[str, dict[str, set[int]]]  # member id -> topic id -> partitions

UNIFORM = "uniform"
RANGE = "range"
ASSIGNORS = (UNIFORM, RANGE)
DEFAULT_ASSIGNOR = UNIFORM


def assign(name: str, subscriptions: Mapping[str, frozenset[str]], partitions: Mapping[str, int],
           previous: Mapping[str, Mapping[str, set[int]]]) -> Assignment:
    if name == RANGE:
        return range_assign(subscriptions, partitions, previous)
    return uniform_assign(subscriptions, partitions, previous)


def uniform_assign(subscriptions: Mapping[str, frozenset[str]], partitions: Mapping[str, int],
                   previous: Mapping[str, Mapping[str, set[int]]]) -> Assignment:
    members = sorted(subscriptions)
    out: dict[str, set[tuple[str, int]]] = {m: set() for m in members}
    all_tps = sorted((t, p) for t, n in partitions.items() for p in range(n)
                     if any(t in subscriptions[m] for m in members))
    if not members or not all_tps:
        return {m: {} for m in members}
    eligible = {t: [m for m in members if t in subscriptions[m]] for t in partitions}
    # Fair share if everybody were eligible for everything; sticky retention is capped by it.
    quota = -(-len(all_tps) // len(members))
    owner: dict[tuple[str, int], str] = {}
    for m in members:
        kept = sorted((t, p) for t, ps in previous.get(m, {}).items() for p in ps
                      if t in subscriptions[m] and p < partitions.get(t, 0))
        for tp in kept[:quota]:
            if tp not in owner:
                owner[tp] = m
                out[m].add(tp)
    for tp in all_tps:
        if tp in owner:
            continue
        m = min(eligible[tp[0]], key=lambda x: (len(out[x]), x))
        owner[tp] = m
        out[m].add(tp)
    # Balance: move a partition from a heavier to a lighter eligible member while that narrows the gap.
    for _ in range(len(all_tps) * len(members)):
        moved = False
        for heavy in sorted(members, key=lambda x: (-len(out[x]), x)):
            best = None
            for tp in sorted(out[heavy]):
                for light in eligible[tp[0]]:
                    if len(out[heavy]) - len(out[light]) > 1 and (best is None or len(out[light]) < len(out[best[1]])):
                        best = (tp, light)
            if best is not None:
                tp, light = best
                out[heavy].discard(tp)
                out[light].add(tp)
                moved = True
                break
        if not moved:
            break
    return {m: _by_topic(tps) for m, tps in out.items()}


def range_assign(subscriptions: Mapping[str, frozenset[str]], partitions: Mapping[str, int],
                 previous: Mapping[str, Mapping[str, set[int]]]) -> Assignment:
    members = sorted(subscriptions)
    out: Assignment = {m: {} for m in members}
    for t, n in sorted(partitions.items()):
        subs = [m for m in members if t in subscriptions[m]]
        if not subs or n <= 0:
            continue
        base, extra = divmod(n, len(subs))
        shares = {m: base + (1 if i < extra else 0) for i, m in enumerate(subs)}
        taken: set[int] = set()
        got: dict[str, list[int]] = {m: [] for m in subs}
        for m in subs:
            for p in sorted(previous.get(m, {}).get(t, ())):
                if p < n and p not in taken and len(got[m]) < shares[m]:
                    got[m].append(p)
                    taken.add(p)
        free = iter(p for p in range(n) if p not in taken)
        for m in subs:
            while len(got[m]) < shares[m]:
                got[m].append(next(free))
        for m in subs:
            if got[m]:
                out[m][t] = set(got[m])
    return out


def _by_topic(tps: Iterable[tuple[str, int]]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for t, p in tps:
        out.setdefault(t, set()).add(p)
    return out
