"""Sequence keys: the keys put_sequential writes, and the checks of its arguments, the same for both backends.

Oxia's server (server/kv/db_sequences.go at v0.14.4) appends under a prefix by finding the newest key, the
greatest below 'prefix-<max uint64>', adding the deltas to the sums in it and writing 'prefix-%020d-%020d...'.
Sums are uint64, so every sum is written with exactly 20 digits: that is the one rule both backends use to tell
a sequence key. The SQLite backend does the same search itself; the Oxia backend searches first to refuse, before
sending, a put the server would fail together with every operation of its write request (fewer deltas than the
newest key has sums, or a newest key that is not a sequence key).
"""

from __future__ import annotations

import re
from typing import Sequence

from dray_broker.metadata.base import MetadataError

SUM_DIGITS = 20
MAX_SUM = 2**64 - 1
# The sums part of a sequence key: one or more sums of exactly SUM_DIGITS ASCII digits, separated by '-'.
_SUMS = re.compile(rf"[0-9]{{{SUM_DIGITS}}}(?:-[0-9]{{{SUM_DIGITS}}})*")


def sequence_key(prefix: str, sums: Sequence[int]) -> str:
    return prefix + "".join(f"-{s:020d}" for s in sums)


def parse_sequence_key(prefix: str, key: str) -> list[int] | None:
    """The sums in a key written by put_sequential under prefix, or None if key is not one."""
    if not key.startswith(prefix + "-"):
        return None
    rest = key[len(prefix) + 1 :]
    if _SUMS.fullmatch(rest) is None:
        return None
    return [int(p) for p in rest.split("-")]


def newest_key_bound(prefix: str) -> str:
    """The newest key of the sequence under prefix is the greatest key below this one."""
    return sequence_key(prefix, [MAX_SUM])


def sums_of_newest(prefix: str, newest: str | None) -> list[int]:
    """The sums to add the deltas to, given the greatest key below newest_key_bound(prefix) (None: there is
    none). MetadataError if that key is under 'prefix-' and is not a sequence key."""
    if newest is None or not newest.startswith(prefix + "-"):
        return []
    sums = parse_sequence_key(prefix, newest)
    if sums is None:
        raise MetadataError(f"put_sequential {prefix}: the newest key {newest!r} is not a sequence key")
    return sums


def check_sequential(prefix: str, deltas: Sequence[int], partition_key: str | None) -> list[int]:
    """The deltas of a put_sequential as ints; ValueError for arguments no store accepts."""
    if partition_key is None:
        raise ValueError("put_sequential needs a partition_key")
    checked = list(map(int, deltas))
    if not checked or checked[0] <= 0 or min(checked) < 0 or max(checked) > MAX_SUM:
        raise ValueError(f"put_sequential deltas must be non-negative (uint64), the first > 0: {checked}")
    return checked


def check_sums_covered(prefix: str, sums: int, deltas: Sequence[int]) -> None:
    """A put_sequential needs a delta for every sum of the newest key (MetadataError)."""
    if len(deltas) < sums:
        raise MetadataError(f"put_sequential {prefix}: the newest key has {sums} sums, got {len(deltas)} deltas")
