"""The pieces both metadata backends share (dray_broker.metadata.keys, .sequence, .watch), without a server.

The order is also checked against a real Oxia server in test_metadata_contract.py (lists) and
test_metadata_oxia.py (multi-shard merges); here against a transliteration of the server's comparison.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from dray_broker.metadata import MetadataError, Notification, NotificationType, hierarchical_sort_key
from dray_broker.metadata.keys import KeyPrefix
from dray_broker.metadata.sequence import (
    MAX_SUM,
    check_sequential,
    check_sums_covered,
    newest_key_bound,
    parse_sequence_key,
    sequence_key,
    sums_of_newest,
)
from dray_broker.metadata.watch import WatchQueue


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


# ---------------------------------------------------------------------------------------------------- sequence keys


def test_sequence_keys_have_twenty_digits_per_sum():
    assert sequence_key("/p/idx", [5, MAX_SUM]) == "/p/idx-00000000000000000005-18446744073709551615"
    assert parse_sequence_key("/p/idx", "/p/idx-00000000000000000005-18446744073709551615") == [5, MAX_SUM]
    for not_one in ["/p/idx", "/p/idx-", "/p/idx-5", "/p/idx-0000000000000000005", "/p/idx-000000000000000000005",
                    "/p/idx-0000000000000000000x", "/p/idx-" + "٣" * 20, "/p/idxx-00000000000000000005"]:
        assert parse_sequence_key("/p/idx", not_one) is None, not_one
    assert sums_of_newest("/p/idx", None) == [] and sums_of_newest("/p/idx", "/p/id") == []
    assert sums_of_newest("/p/idx", "/p/idx-00000000000000000007") == [7]
    with pytest.raises(MetadataError, match="not a sequence key"):
        sums_of_newest("/p/idx", "/p/idx-7")
    assert newest_key_bound("/p/idx") == sequence_key("/p/idx", [MAX_SUM])


def test_put_sequential_arguments():
    assert check_sequential("/p", (1, 0, MAX_SUM), "pk") == [1, 0, MAX_SUM]
    for deltas in [[], [0], [1, -1], [MAX_SUM + 1]]:
        with pytest.raises(ValueError):
            check_sequential("/p", deltas, "pk")
    with pytest.raises(ValueError, match="partition_key"):
        check_sequential("/p", [1], None)
    check_sums_covered("/p", 2, [1, 1, 1])
    with pytest.raises(MetadataError, match="2 sums, got 1 deltas"):
        check_sums_covered("/p", 2, [1])


# ---------------------------------------------------------------------------------------------------- watch queue


def _note(key: str) -> Notification:
    return Notification(key, NotificationType.CREATED, 1)


async def _drain(w: WatchQueue) -> list[str]:
    return [n.key async for n in w]


async def test_watch_queue_ends_after_what_is_queued():
    w = WatchQueue("/a/")
    w.push(_note("/a/1"))
    w.push_many([_note("/a/2"), _note("/a/3")])
    waiter = asyncio.ensure_future(_drain(w))
    await asyncio.sleep(0)
    w.push(_note("/a/4"))
    w.end()
    w.push(_note("/a/5"))  # after the end: dropped
    assert await asyncio.wait_for(waiter, 5) == ["/a/1", "/a/2", "/a/3", "/a/4"]
    assert w.stopped


async def test_watch_queue_fails_once_after_what_is_queued():
    w = WatchQueue("/a/")
    w.push(_note("/a/1"))
    w.fail(MetadataError("feed broke"))
    assert (await w.__anext__()).key == "/a/1"
    with pytest.raises(MetadataError, match="feed broke"):
        await w.__anext__()
    assert await _drain(w) == []


async def test_watch_queue_aclose_stops_at_once_and_tells_the_backend():
    closed: list[WatchQueue] = []

    async def on_close(w: WatchQueue) -> None:
        closed.append(w)

    w = WatchQueue("/a/", on_close)
    w.push(_note("/a/1"))
    waiter = asyncio.ensure_future(w.__anext__())
    assert (await waiter).key == "/a/1"
    waiter = asyncio.ensure_future(w.__anext__())
    await asyncio.sleep(0)
    await w.aclose()
    await w.aclose()  # once only
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, 5)
    w.push(_note("/a/2"))
    assert await _drain(w) == [] and closed == [w]
    synchronous: list[WatchQueue] = []
    w2 = WatchQueue("/b/", synchronous.append)
    w2.push(_note("/b/1"))
    await w2.aclose()
    assert await _drain(w2) == [] and synchronous == [w2]
