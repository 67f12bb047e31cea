"""Produce requests v0-v2, decoded by hand: kio 0.6.5 has no schema for them (Kafka 4 dropped them, KIP-896), and
old clients still send them, with legacy message sets that the handler up-converts (records/legacy.py).
v3-v13 are decoded by kio like every other request. tests/unit/test_produce_request.py checks this against
kafka-python's encoder for those versions.

Layout (big-endian, no flexible versions): header v1 = api_key i16, api_version i16, correlation_id i32,
client_id (i16-length string, -1 null); body = acks i16, timeout_ms i32,
topic_data [i32 count] of (name (i16-length string), partition_data [i32 count] of (index i32, records
(i32-length bytes, -1 null))). The attribute names are kio's, so the handler reads both alike.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dray_broker.protocol.codec import MalformedRequestError, Request

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_HEADER = struct.Struct(">hhih")  # api key, version, correlation id, client id length
_ACKS_TIMEOUT = struct.Struct(">hi")


@dataclass(slots=True)
class PartitionData:
    index: int
    records: memoryview | None


@dataclass(slots=True)
class TopicData:
    name: str
    partition_data: list[PartitionData]


@dataclass(slots=True)
class LegacyProduceRequest:
    acks: int
    timeout_ms: int
    topic_data: list[TopicData]
    transactional_id: None = None  # v3+


def decode_legacy_produce_request(frame: bytes) -> Request:
    try:
        return _decode(frame)
    except (IndexError, struct.error):
        raise MalformedRequestError("Produce request: a field runs past the end of the frame") from None
    except UnicodeDecodeError:
        raise MalformedRequestError("Produce request: a string is not UTF-8") from None


def _decode(frame: bytes) -> Request:
    api_key, version, correlation_id, n = _HEADER.unpack_from(frame)
    pos = _HEADER.size
    client_id = None
    if n >= 0:
        client_id = frame[pos:pos + _fits(frame, pos, n)].decode(errors="replace")
        pos += n
    acks, timeout_ms = _ACKS_TIMEOUT.unpack_from(frame, pos)
    pos += _ACKS_TIMEOUT.size
    view = memoryview(frame)
    topics = []
    count, pos = _length(frame, pos, _I32)
    for _ in range(count):
        n, pos = _length(frame, pos, _I16)
        if n < 0:
            raise MalformedRequestError("Produce request: null topic name")
        name, pos = frame[pos:pos + n].decode(), pos + n
        partitions = []
        count, pos = _length(frame, pos, _I32)
        for _ in range(count):
            index = _I32.unpack_from(frame, pos)[0]
            n, pos = _length(frame, pos + 4, _I32)
            partitions.append(PartitionData(index, view[pos:pos + n] if n >= 0 else None))
            pos += max(n, 0)
        topics.append(TopicData(name, partitions))
    return Request(api_key, version, correlation_id, client_id, LegacyProduceRequest(acks, timeout_ms, topics))


def _length(frame: bytes, pos: int, size: struct.Struct) -> tuple[int, int]:
    """A length or count (-1: null) and the position after it. It must fit in the rest of the frame, so an
    impossible count fails before any loop."""
    n = size.unpack_from(frame, pos)[0]
    pos += size.size
    if n < -1:
        raise MalformedRequestError(f"Produce request: negative length {n}")
    return _fits(frame, pos, n), pos


def _fits(frame: bytes, pos: int, n: int) -> int:
    if n > len(frame) - pos:
        raise MalformedRequestError(f"Produce request: a length of {n} is more than the frame holds")
    return n
