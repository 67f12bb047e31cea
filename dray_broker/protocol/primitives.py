"""Kafka wire primitives written by hand where kio's writer is not used (the frame guard, hot-path responses)."""

from __future__ import annotations


def encode_uvarint(n: int) -> bytes:
    """An unsigned varint: compact lengths and counts (n + 1) and tagged-field headers of flexible versions."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
