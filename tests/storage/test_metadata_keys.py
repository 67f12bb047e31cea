"""The pieces both metadata backends share (dray_broker.metadata.keys, .sequence, .watch), without a server.

The order is also checked against a real Oxia server in test_metadata_contract.py (lists) and
test_metadata_oxia.py (multi-shard merges); here against a transliteration of the server's comparison.
"""

from __future__ import annotations

import random

from dray_broker.metadata import hierarchical_sort_key
from dray_broker.metadata.keys import KeyPrefix


def compare_with_slash(a: str, b: str) -> int:
    """Oxia's key order, transliterated from the server (common/compare.CompareWithSlash at v0.14.4): -1, 0, 1."""
    x = a.encode()
    y = b.encode()
    while x and y:
        ia = x.find(b"/")
        ib = y.find(b"/")
        if ia < 0 and ib < 0:
            return (x > y) - (x < y)
        if ia < 0:
            return -1
        if ib < 0:
            return 1
        sa, sb = x[:ia], y[:ib]
        if sa != sb:
            return (sa > sb) - (sa < sb)
        x, y = x[ia + 1 :], y[ib + 1 :]
    return (len(x) > len(y)) - (len(x) < len(y))


def random_key(rng: random.Random) -> str:
    segs = ["".join(rng.choice("ab-_~z0") for _ in range(rng.randint(0, 3))) for _ in range(rng.randint(1, 4))]
    return "/".join(segs)


def test_hierarchical_sort_key_follows_the_servers_order():
    rng = random.Random(7)
    keys = sorted({random_key(rng) for _ in range(400)})
    for a in keys[:150]:
        for b in keys[:150]:
            ha, hb = hierarchical_sort_key(a), hierarchical_sort_key(b)
            assert compare_with_slash(a, b) == (ha > hb) - (ha < hb), (a, b)


def test_key_prefix_range_test_is_exact():
    """touches_range is true iff some key in [start, end) starts with the prefix (on these keys, every key that
    can lie in such a range is among them)."""
    rng = random.Random(11)
    keys = sorted({random_key(rng) for _ in range(400)})
    seen = {True: 0, False: 0}
    for _ in range(3000):
        start, end, prefix = random_key(rng), random_key(rng), random_key(rng)[: rng.randint(0, 4)]
        hs, he = hierarchical_sort_key(start), hierarchical_sort_key(end)
        inside = [k for k in keys if hs <= hierarchical_sort_key(k) < he and k.startswith(prefix)]
        touches = KeyPrefix(prefix).touches_range(start, end)
        if inside:
            assert touches, (start, end, prefix, inside)
        seen[touches] += 1
    assert seen[True] and seen[False]
    assert not KeyPrefix("a/").touches_range("a/b", "a/b")  # an empty range holds nothing
    assert KeyPrefix("a/b").matches("a/bc/d") and not KeyPrefix("a/b").matches("a/c")
