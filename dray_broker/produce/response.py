"""The Produce response, encoded by hand: the hot path answers hundreds of these per second per connection, and
kio's generic writer costs ~40 us each (this: a few). tests/unit/test_produce_response.py checks every version
byte for byte against kio.

Versions 0-13 (kio has no schema for v0-v2, which Kafka 4 dropped; their layout: v0 has no throttle time and v0-v1
no log_append_time). log_append_time and log_start_offset are always -1 (CreateTime; the start is not reported),
no record errors, no tagged fields (current_leader and node_endpoints are only for NOT_LEADER answers with
leader hints, which this broker does not give)."""

from __future__ import annotations

import struct
import uuid
from typing import Sequence

from dray_broker.protocol.codec import EncodedBody
from dray_broker.protocol.primitives import encode_uvarint

_I32 = struct.Struct(">i")
_PARTITION_V0 = struct.Struct(">ihq")  # index, error code, base offset
_PARTITION_V2 = struct.Struct(">ihqq")  # ... and log append time
_PARTITION_V5 = struct.Struct(">ihqqq")  # ... and log start offset
_NO_TAGS = b"\x00"

# (partition index, error code, base offset, error message)
PartitionResult = tuple[int, int, int, str | None]
# (topic name, topic id, partitions): v13 answers with the id, earlier versions with the name
TopicResult = tuple[str | None, uuid.UUID | None, Sequence[PartitionResult]]


def _count(n: int, flexible: bool) -> bytes:
    return encode_uvarint(n + 1) if flexible else _I32.pack(n)


def _string(s: str | None, flexible: bool) -> bytes:
    if s is None:
        return b"\x00" if flexible else b"\xff\xff"
    data = s.encode()
    return (encode_uvarint(len(data) + 1) if flexible else struct.pack(">h", len(data))) + data


def encode_produce_response(version: int, topics: Sequence[TopicResult]) -> EncodedBody:
    flexible = version >= 9
    out = bytearray(_count(len(topics), flexible))
    for name, topic_id, partitions in topics:
        if version >= 13:
            assert topic_id is not None  # v13 requests name topics by id
            out += topic_id.bytes
        else:
            out += _string(name or "", flexible)
        out += _count(len(partitions), flexible)
        for index, error, base_offset, message in partitions:
            if version >= 5:
                out += _PARTITION_V5.pack(index, error, base_offset, -1, -1)
            elif version >= 2:
                out += _PARTITION_V2.pack(index, error, base_offset, -1)
            else:
                out += _PARTITION_V0.pack(index, error, base_offset)
            if version >= 8:
                out += _count(0, flexible)  # record errors
                out += _string(message, flexible)
            if flexible:
                out += _NO_TAGS
        if flexible:
            out += _NO_TAGS
    if version >= 1:
        out += _I32.pack(0)  # throttle time
    if flexible:
        out += _NO_TAGS
    return EncodedBody(bytes(out), flexible_header=flexible)
