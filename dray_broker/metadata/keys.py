"""Hierarchical key order, the one both backends follow (Oxia's common/compare.CompareWithSlash).

Oxia compares keys segment by segment ('/' separates segments); at the first segment that differs, a key whose
segment is its last sorts before a key that goes on into a deeper directory. `hierarchical_sort_key` maps a key to
a byte string that sorts in exactly that order: SQLite stores it as its indexed sort column, the Oxia client uses it
to merge what several shards return and to compare keys with the bounds of Oxia's own keys.

`KeyPrefix` answers "which keys start with this prefix" in sort-key space too, for watches: a range deletion
[start, end) concerns a watch when the range may hold a key that starts with the watch's prefix.
"""

from __future__ import annotations


def hierarchical_sort_key(key: str) -> bytes:
    """A byte string that sorts like Oxia's hierarchical key order.

    Per segment: a segment followed by '/' (marked 0x01) sorts after a final segment (marked 0x00) at the same
    position."""
    parts = key.encode().split(b"/")
    out = bytearray()
    for part in parts[:-1]:
        out += b"\x01" + part + b"\x00"
    out += b"\x00" + parts[-1]
    return bytes(out)


def _successor(b: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with b (None: no bound)."""
    b = b.rstrip(b"\xff")
    if not b:
        return None
    return b[:-1] + bytes([b[-1] + 1])


class KeyPrefix:
    """The keys that start with a prefix, as a string test and as intervals of sort keys.

    A key starting with 'd1/d2/s' continues the segment s either as its final segment or as a directory: the keys
    that start with the prefix fill two contiguous intervals [lo, hi) of sort keys."""

    __slots__ = ("prefix", "intervals")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        parts = prefix.encode().split(b"/")
        dirs = b"".join(b"\x01" + p + b"\x00" for p in parts[:-1])
        self.intervals: list[tuple[bytes, bytes | None]] = []
        for marker in (b"\x00", b"\x01"):
            lo = dirs + marker + parts[-1]
            self.intervals.append((lo, _successor(lo)))

    def matches(self, key: str) -> bool:
        return key.startswith(self.prefix)

    def touches_range(self, start: str, end: str) -> bool:
        """Whether [start, end) (hierarchical order) may hold a key that starts with the prefix."""
        a, b = hierarchical_sort_key(start), hierarchical_sort_key(end)
        return a < b and any((hi is None or a < hi) and lo < b for lo, hi in self.intervals)
