"""The Fetch response, encoded by hand around the record bytes: the batches go out as the views of cached ranges
the reader returns (transport.writelines sends them as they are), never joined or copied into the response.
kio's generic writer would copy every byte and costs tens of microseconds per response besides.
tests/unit/test_fetch_response.py checks every version (4-18) byte for byte against kio.

What this broker answers (as handler.py did with kio): throttle time 0, no top-level error, session id 0 (no fetch
sessions); per partition last_stable_offset = high watermark (no transactions), no aborted transactions (an empty
list, null for a partition with an error), preferred_read_replica -1, records never null (empty when there are
none) and no tagged fields (diverging epoch, current leader and snapshot id stay at their defaults; there are no
node endpoints to report)."""

from __future__ import annotations

import struct
import uuid
from typing import Sequence

from dray_broker.protocol.codec import EncodedBody
from dray_broker.protocol.primitives import encode_uvarint

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_PARTITION = struct.Struct(">ihqq")  # index, error code, high watermark, last stable offset
_TOP_V7 = struct.Struct(">ihi")  # throttle time, error code, session id
_NO_TAGS = b"\x00"

# (partition index, error code, high watermark, log start offset, record buffers: views of whole batches)
PartitionResult = tuple[int, int, int, int, Sequence]
# (topic name, topic id, partitions): v13+ answers with the id, earlier versions with the name
TopicResult = tuple[str | None, uuid.UUID | None, Sequence[PartitionResult]]


def _count(n: int, flexible: bool) -> bytes:
    return encode_uvarint(n + 1) if flexible else _I32.pack(n)


def encode_fetch_response(version: int, topics: Sequence[TopicResult]) -> EncodedBody:
    """The response body as chunks: packed fields (bytes) between the record buffers, which are passed through."""
    flexible = version >= 12
    chunks: list = []
    out = bytearray(_TOP_V7.pack(0, 0, 0) if version >= 7 else _I32.pack(0))
    out += _count(len(topics), flexible)
    for name, topic_id, partitions in topics:
        if version >= 13:
            out += (topic_id or uuid.UUID(int=0)).bytes
        else:
            data = (name or "").encode()
            out += (encode_uvarint(len(data) + 1) if flexible else _I16.pack(len(data))) + data
        out += _count(len(partitions), flexible)
        for index, error, high_watermark, log_start, records in partitions:
            out += _PARTITION.pack(index, error, high_watermark, high_watermark)
            if version >= 5:
                out += _I64.pack(log_start)
            # aborted transactions: none (null with an error, as Kafka answers)
            if error:
                out += _NO_TAGS if flexible else b"\xff\xff\xff\xff"
            else:
                out += _count(0, flexible)
            if version >= 11:
                out += b"\xff\xff\xff\xff"  # preferred read replica: -1
            size = sum(map(len, records))
            out += encode_uvarint(size + 1) if flexible else _I32.pack(size)
            if size:
                chunks.append(bytes(out))
                chunks.extend(records)
                out = bytearray()
            if flexible:
                out += _NO_TAGS
        if flexible:
            out += _NO_TAGS
    if flexible:
        out += _NO_TAGS
    chunks.append(bytes(out))
    return EncodedBody(chunks, flexible_header=flexible)
