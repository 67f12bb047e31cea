"""Oxia's own keys, hidden from callers.

The server keeps its state in every shard under `__oxia/` (commit offset, term, sessions, notification batches).
Gets, lists and scans never return them, delete_range never touches them, and puts under `__oxia/` are refused.
In key order they fill one block: [__oxia/, __oxia\\0/); some of them (notification batches) are not records, so a
get that lands on one fails on the server, and with it every get of its Read call: `find` never lands there.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from dray_broker.metadata.base import Comparison, Entry, MetadataError
from dray_broker.metadata.keys import hierarchical_sort_key

PREFIX = "__oxia/"
# Every key whose first segment is "__oxia" sorts in [_LO, _HI): the server takes "__oxia\0/" as the first key
# after them. In sort-key space they fill [_LO_SK, _HI_SK): every sort key that starts with the directory segment
# 0x01 "__oxia" 0x00.
_LO = "__oxia/"
_HI = "__oxia\x00/"
_LO_SK = hierarchical_sort_key(_LO)
_HI_SK = b"\x01__oxia\x01"


def is_own(key: str) -> bool:
    return key.startswith(PREFIX)


def user_ranges(start: str, end: str) -> list[tuple[str, str]]:
    """[start, end) without the block of Oxia's own keys: none, one or two ranges."""
    a, b = hierarchical_sort_key(start), hierarchical_sort_key(end)
    if a >= b:
        return []
    out = []
    if a < _LO_SK:
        out.append((start, end if b <= _LO_SK else _LO))
    if b > _HI_SK:
        out.append((start if a >= _HI_SK else _HI, end))
    return out


ShardGet = Callable[[str, Comparison], Awaitable["Entry | None"]]


async def find(get: ShardGet, key: str, comparison: Comparison) -> Entry | None:
    """A get on one shard (`get` sends one as it is) that never returns, nor lands on, Oxia's own keys. User keys
    starting with '/' sort before the block."""
    if comparison is Comparison.EQUAL:
        return await get(key, comparison)
    if key.startswith("/"):
        sk, below, above = b"", True, False
    else:
        sk = hierarchical_sort_key(key)
        below, above = sk < _LO_SK, sk >= _HI_SK
    if comparison in (Comparison.CEILING, Comparison.HIGHER):
        if below:
            entry = await get(key, comparison)
            if entry is None or not is_own(entry.key):
                return entry
        elif above:
            return await get(key, comparison)
        # The smallest key after the block: the block's 2-segment keys are records, so landing there is safe.
        return await get(_HI, Comparison.CEILING)
    if below:
        return await get(key, comparison)
    if above:
        # Only search down from key if a user key lies in [_HI, key]; else skip the block.
        first = await get(_HI, Comparison.CEILING)
        if first is not None:
            first_sk = hierarchical_sort_key(first.key)
            if first_sk < sk or (first_sk == sk and comparison is Comparison.FLOOR):
                try:
                    entry = await get(key, comparison)
                except MetadataError as e:  # raced with a delete of `first`, landed in the block
                    if "deserialize" not in str(e).lower():
                        raise
                    entry = None
                if entry is not None and not is_own(entry.key):
                    return entry
    return await get(_LO, Comparison.LOWER)
