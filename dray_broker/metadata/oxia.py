"""The Oxia metadata store: an asyncio adapter over grpc.aio (DESIGN.md section 4).

The PyPI `oxia` client is blocking and routes keys with the wrong hash; this module only borrows its generated
message classes (`io.streamnative.oxia.proto`, betterproto2) for the rarely used messages and speaks the
protocol itself:

- Shards: a GetShardAssignments stream (kept open, reconnected on failure) gives each shard's hash range and
  leader; a key goes to the shard whose [min, max] range holds xxh3_64(partition_key or key) & 0xffffffff, as
  the server does (common/hash.Xxh332 at v0.14.4).
- Writes: per shard, concurrent puts/deletes/delete_ranges are coalesced into one WriteRequest on a WriteStream
  (the server applies it as one unit, conditions per operation; responses come back in request order). A few
  requests may be in flight on the stream. Reads (gets) are coalesced the same way into one Read call.
- Hot messages (write/read requests and responses, notification batches) use a small hand-written protobuf codec:
  betterproto2's pure-Python codec costs about 0.1 ms per message, which would cap put_sequential at a few
  thousand per second. The codec is checked against the betterproto2 classes in the tests.
- Sessions are per shard in Oxia: one is created on the first ephemeral put to a shard and kept alive at
  timeout/3; ephemeral keys die with it. To callers the shards' sessions are one (SessionLife): when the server
  reports one gone, or no keepalive of one got through within the session timeout, the generation ends, the
  other shards' sessions of it are closed too (their keys go now), and the next generation begins at once: its
  sessions are created on the next ephemeral puts.
- Watches: one GetNotifications stream per shard, shared by all watches of this store. A stream opened without a
  start offset first sends a batch positioned at the shard's commit offset; `watch()` returns once every shard's
  stream has sent it, so every later change is seen. Streams resume from the last offset after a failure.
- Retries: reads and idempotent writes (unconditional put, unconditional delete, delete_range) are retried with
  backoff on transient errors (UNAVAILABLE, leader changes) until the operation deadline. A conditional write or
  a put_sequential whose stream broke after it was sent may or may not have been applied: it fails with
  MetadataError rather than risk applying it twice (an exception: a stream refused with "node is not leader"
  before answering anything processed nothing, so its writes are retried).
- Oxia keeps its own keys under `__oxia/` in every shard; they are hidden from gets, lists and scans, and
  delete_range never touches them.

Caveat of the server: a put_sequential with fewer deltas than the keys already under the prefix fails the whole
write request (every operation coalesced with it). Always use the same number of deltas under one prefix.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import random
import socket
import uuid
from collections import deque
from typing import Any, Callable, Sequence

import grpc
import grpc.aio
import xxhash

from dray_broker.metadata.base import (
    Comparison,
    Entry,
    KeyNotFoundError,
    MetadataError,
    MetadataStore,
    Notification,
    NotificationType,
    SequentialPut,
    SessionExpiredError,
    SessionLife,
    VersionMismatchError,
    Watch,
    hierarchical_sort_key,
)

log = logging.getLogger("dray.metadata.oxia")

_SERVICE = "/io.streamnative.oxia.proto.OxiaClient/"
_M_ASSIGNMENTS = _SERVICE + "GetShardAssignments"
_M_WRITE_STREAM = _SERVICE + "WriteStream"
_M_READ = _SERVICE + "Read"
_M_LIST = _SERVICE + "List"
_M_RANGE_SCAN = _SERVICE + "RangeScan"
_M_NOTIFICATIONS = _SERVICE + "GetNotifications"
_M_CREATE_SESSION = _SERVICE + "CreateSession"
_M_KEEP_ALIVE = _SERVICE + "KeepAlive"
_M_CLOSE_SESSION = _SERVICE + "CloseSession"

# Status enum (client.proto)
_OK = 0
_KEY_NOT_FOUND = 1
_UNEXPECTED_VERSION_ID = 2
_SESSION_DOES_NOT_EXIST = 3

# The server's gRPC status codes (common/constant/grpc_errors.go). grpc-python maps codes above 16 to UNKNOWN,
# so the messages are matched as well.
_RETRIABLE_DETAILS = (
    "not leader",  # 106 CodeNodeIsNotLeader
    "invalid status",  # 102 CodeInvalidStatus (leader fenced)
    "already closed",  # 104 CodeAlreadyClosed (leader closing)
    "not initialized",  # 100 CodeNotInitialized
    "operation was cancelled",  # 103 CodeCancelled (assignment dispatcher restarting)
)
_SESSION_NOT_FOUND = "session not found"  # 108

_INTERNAL_PREFIX = "__oxia/"
# Every key whose first segment is "__oxia" (Oxia's own) sorts in [_INTERNAL_LO, _INTERNAL_HI).
_INTERNAL_LO = "__oxia/"
_INTERNAL_HI = "__oxia\x00/"

_COMPARISON_CODE = {
    Comparison.EQUAL: 0,
    Comparison.FLOOR: 1,
    Comparison.CEILING: 2,
    Comparison.LOWER: 3,
    Comparison.HIGHER: 4,
}
_NOTIFICATION_TYPES = {
    0: NotificationType.CREATED,
    1: NotificationType.MODIFIED,
    2: NotificationType.DELETED,
    3: NotificationType.RANGE_DELETED,
}

_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


# ---------------------------------------------------------------------------------------------------------------
# A minimal protobuf wire codec for the hot messages of client.proto.


def _put_varint(out: bytearray, n: int) -> None:
    if n < 0:
        n += 1 << 64
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _put_bytes(out: bytearray, tag: int, data: bytes) -> None:
    out.append(tag)
    n = len(data)
    if n < 0x80:
        out.append(n)
    else:
        _put_varint(out, n)
    out += data


def _get_varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    result = b & 0x7F
    shift = 7
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _signed(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def _fields(buf: bytes, pos: int, end: int):
    """(field number, wire type, value): an int for varint/fixed fields, (start, end) for length-delimited."""
    while pos < end:
        tag, pos = _get_varint(buf, pos)
        wt = tag & 7
        if wt == 0:
            v, pos = _get_varint(buf, pos)
        elif wt == 2:
            n, pos = _get_varint(buf, pos)
            v = (pos, pos + n)
            pos += n
        elif wt == 1:
            v = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wt == 5:
            v = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise MetadataError(f"oxia: unsupported protobuf wire type {wt}")
        yield tag >> 3, wt, v


def _enc_put(
    key: str,
    value: bytes,
    expected_version: int | None,
    session_id: int | None,
    client_identity: str | None,
    partition_key: str | None,
    deltas: Sequence[int] | None,
) -> bytes:
    out = bytearray()
    _put_bytes(out, 0x0A, key.encode())
    if value:
        _put_bytes(out, 0x12, value)
    if expected_version is not None:
        out.append(0x18)
        _put_varint(out, expected_version)
    if session_id is not None:
        out.append(0x20)
        _put_varint(out, session_id)
    if client_identity is not None:
        _put_bytes(out, 0x2A, client_identity.encode())
    if partition_key is not None:
        _put_bytes(out, 0x32, partition_key.encode())
    if deltas:
        packed = bytearray()
        for d in deltas:
            _put_varint(packed, d)
        _put_bytes(out, 0x3A, packed)
    return bytes(out)


def _enc_delete(key: str, expected_version: int | None) -> bytes:
    out = bytearray()
    _put_bytes(out, 0x0A, key.encode())
    if expected_version is not None:
        out.append(0x10)
        _put_varint(out, expected_version)
    return bytes(out)


def _enc_delete_range(start: str, end: str) -> bytes:
    out = bytearray()
    _put_bytes(out, 0x0A, start.encode())
    _put_bytes(out, 0x12, end.encode())
    return bytes(out)


def _enc_get(key: str, include_value: bool, comparison: int) -> bytes:
    out = bytearray()
    _put_bytes(out, 0x0A, key.encode())
    if include_value:
        out += b"\x10\x01"
    if comparison:
        out.append(0x18)
        out.append(comparison)
    return bytes(out)


def _enc_write_request(shard: int, puts: list[bytes], deletes: list[bytes], ranges: list[bytes]) -> bytes:
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    for p in puts:
        _put_bytes(out, 0x12, p)
    for d in deletes:
        _put_bytes(out, 0x1A, d)
    for r in ranges:
        _put_bytes(out, 0x22, r)
    return bytes(out)


def _enc_read_request(shard: int, gets: list[bytes]) -> bytes:
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    for g in gets:
        _put_bytes(out, 0x12, g)
    return bytes(out)


def _enc_range_request(shard: int, start: str, end: str) -> bytes:
    """ListRequest and RangeScanRequest share their first three fields."""
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    _put_bytes(out, 0x12, start.encode())
    _put_bytes(out, 0x1A, end.encode())
    return bytes(out)


def _enc_shard_session(shard: int, session_id: int) -> bytes:
    """SessionHeartbeat and CloseSessionRequest: shard = 1, session_id = 2."""
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    out.append(0x10)
    _put_varint(out, session_id)
    return bytes(out)


def _enc_create_session(shard: int, timeout_ms: int, client_identity: str) -> bytes:
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    out.append(0x10)
    _put_varint(out, timeout_ms)
    _put_bytes(out, 0x1A, client_identity.encode())
    return bytes(out)


def _enc_notifications_request(shard: int, start_offset_exclusive: int | None) -> bytes:
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    if start_offset_exclusive is not None:
        out.append(0x10)
        _put_varint(out, start_offset_exclusive)
    return bytes(out)


def _skip(buf: bytes, pos: int, wt: int) -> int:
    """The position after a field's value of wire type wt that starts at pos."""
    if wt == 0:
        while buf[pos] & 0x80:
            pos += 1
        return pos + 1
    if wt == 2:
        n, pos = _get_varint(buf, pos)
        return pos + n
    if wt == 1:
        return pos + 8
    if wt == 5:
        return pos + 4
    raise MetadataError(f"oxia: unsupported protobuf wire type {wt}")


# The decoders below match one-byte tags of the fields they want (all field numbers < 16) and skip the rest.


def _dec_version(buf: bytes, pos: int, end: int) -> tuple[int, int | None]:
    """(version_id, session_id)"""
    version_id = 0
    session_id = None
    while pos < end:
        tag = buf[pos]
        if tag == 0x08:
            version_id, pos = _get_varint(buf, pos + 1)
            if version_id >= 1 << 63:
                version_id -= 1 << 64
        elif tag == 0x28:
            session_id, pos = _get_varint(buf, pos + 1)
            if session_id >= 1 << 63:
                session_id -= 1 << 64
        else:
            tag, pos = _get_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    return version_id, session_id


def _dec_put_response(buf: bytes, pos: int, end: int) -> tuple[int, int, int | None, str | None]:
    """(status, version_id, session_id, key)"""
    status = _OK
    version_id = 0
    session_id = None
    key = None
    while pos < end:
        tag = buf[pos]
        if tag == 0x12:
            n, pos = _get_varint(buf, pos + 1)
            version_id, session_id = _dec_version(buf, pos, pos + n)
            pos += n
        elif tag == 0x1A:
            n, pos = _get_varint(buf, pos + 1)
            key = buf[pos : pos + n].decode()
            pos += n
        elif tag == 0x08:
            status, pos = _get_varint(buf, pos + 1)
        else:
            tag, pos = _get_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    return status, version_id, session_id, key


def _dec_status_only(buf: bytes, pos: int, end: int) -> int:
    status = _OK
    while pos < end:
        tag = buf[pos]
        if tag == 0x08:
            status, pos = _get_varint(buf, pos + 1)
        else:
            tag, pos = _get_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    return status


def _dec_write_response(buf: bytes) -> tuple[list, list, list]:
    puts: list = []
    deletes: list = []
    ranges: list = []
    pos = 0
    end = len(buf)
    while pos < end:
        tag = buf[pos]
        if tag == 0x0A or tag == 0x12 or tag == 0x1A:
            n, pos = _get_varint(buf, pos + 1)
            if tag == 0x0A:
                puts.append(_dec_put_response(buf, pos, pos + n))
            elif tag == 0x12:
                deletes.append(_dec_status_only(buf, pos, pos + n))
            else:
                ranges.append(_dec_status_only(buf, pos, pos + n))
            pos += n
        else:
            tag, pos = _get_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    return puts, deletes, ranges


def _dec_get_response(buf: bytes, pos: int, end: int) -> tuple[int, int, int | None, bytes, str | None]:
    """(status, version_id, session_id, value, key)"""
    status = _OK
    version_id = 0
    session_id = None
    value = b""
    key = None
    while pos < end:
        tag = buf[pos]
        if tag == 0x12:
            n, pos = _get_varint(buf, pos + 1)
            version_id, session_id = _dec_version(buf, pos, pos + n)
            pos += n
        elif tag == 0x1A:
            n, pos = _get_varint(buf, pos + 1)
            value = buf[pos : pos + n]
            pos += n
        elif tag == 0x22:
            n, pos = _get_varint(buf, pos + 1)
            key = buf[pos : pos + n].decode()
            pos += n
        elif tag == 0x08:
            status, pos = _get_varint(buf, pos + 1)
        else:
            tag, pos = _get_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    return status, version_id, session_id, value, key


def _dec_get_responses(buf: bytes) -> list:
    """ReadResponse.gets and RangeScanResponse.records (both field 1)."""
    out = []
    pos = 0
    end = len(buf)
    while pos < end:
        tag = buf[pos]
        if tag == 0x0A:
            n, pos = _get_varint(buf, pos + 1)
            out.append(_dec_get_response(buf, pos, pos + n))
            pos += n
        else:
            tag, pos = _get_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    return out


def _dec_list_response(buf: bytes) -> list[str]:
    return [buf[v[0] : v[1]].decode() for f, _wt, v in _fields(buf, 0, len(buf)) if f == 1]


def _dec_notification_batch(buf: bytes) -> tuple[int, int, list[tuple[str, int, int | None, str | None]]]:
    """(shard, offset, [(key, type, version_id, key_range_last)])"""
    shard = 0
    offset = 0
    items = []
    for f, _wt, v in _fields(buf, 0, len(buf)):
        if f == 1:
            shard = _signed(v)
        elif f == 2:
            offset = _signed(v)
        elif f == 4:
            key = ""
            ntype = 0
            version_id = None
            range_last = None
            for ef, _ewt, ev in _fields(buf, v[0], v[1]):
                if ef == 1:
                    key = buf[ev[0] : ev[1]].decode()
                elif ef == 2:
                    for nf, _nwt, nv in _fields(buf, ev[0], ev[1]):
                        if nf == 1:
                            ntype = nv
                        elif nf == 2:
                            version_id = _signed(nv)
                        elif nf == 3:
                            range_last = buf[nv[0] : nv[1]].decode()
            items.append((key, ntype, version_id, range_last))
    return shard, offset, items


def _dec_create_session_response(buf: bytes) -> int:
    for f, _wt, v in _fields(buf, 0, len(buf)):
        if f == 1:
            return _signed(v)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Key order helpers


def compare_keys(a: str, b: str) -> int:
    """Oxia's key order (common/compare.CompareWithSlash), exactly: -1, 0 or 1."""
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


def _user_ranges(start: str, end: str) -> list[tuple[str, str]]:
    """[start, end) without Oxia's internal block [__oxia/, __oxia\\0/)."""
    if compare_keys(start, end) >= 0:
        return []
    out = []
    if compare_keys(start, _INTERNAL_LO) < 0:
        out.append((start, end if compare_keys(end, _INTERNAL_LO) <= 0 else _INTERNAL_LO))
    if compare_keys(end, _INTERNAL_HI) > 0:
        out.append((start if compare_keys(start, _INTERNAL_HI) >= 0 else _INTERNAL_HI, end))
    return out


def _prefix_blocks(prefix: str) -> tuple[bytes, bytes]:
    """The two byte prefixes, in hierarchical_sort_key space, of the keys that start with prefix: same depth
    (the last segment starts with the prefix's last part) and deeper (a directory segment starts with it)."""
    head, sep, last = prefix.rpartition("/")
    base = hierarchical_sort_key(head + sep + "x")[:-2] if sep else b""
    r = last.encode()
    return base + b"\x00" + r, base + b"\x01" + r


def range_touches_prefix(start: str, end: str, prefix: str) -> bool:
    """Whether [start, end) (hierarchical order) may contain a key that starts with prefix."""
    a = hierarchical_sort_key(start)
    b = hierarchical_sort_key(end)
    for q in _prefix_blocks(prefix):
        lo = a if a > q else q
        if lo.startswith(q) and lo < b:
            return True
    return False


def shard_hash(key: str) -> int:
    """The server's key hash (common/hash.Xxh332): the low 32 bits of XXH3-64."""
    return xxhash.xxh3_64_intdigest(key.encode()) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------------------
# Errors and retries


def _details(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (_StreamBroken, asyncio.TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return True
        details = (exc.details() or "").lower()
        return any(d in details for d in _RETRIABLE_DETAILS)
    return False


def _is_not_leader(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and "not leader" in (exc.details() or "").lower()


def _is_session_not_found(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and _SESSION_NOT_FOUND in (exc.details() or "").lower()


class _StreamBroken(Exception):
    pass


class _Closed(MetadataError):
    pass


class _Backoff:
    def __init__(self, initial: float = 0.05, maximum: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.current = initial

    def reset(self) -> None:
        self.current = self.initial

    def next(self) -> float:
        delay = self.current * (0.5 + random.random() / 2)
        self.current = min(self.current * 2, self.maximum)
        return delay


# ---------------------------------------------------------------------------------------------------------------
# Connections


class _Conn:
    """A channel to one server, with its multi-callables (requests and responses stay raw bytes)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=_GRPC_OPTIONS)
        ch = self.channel
        self.assignments = ch.unary_stream(_M_ASSIGNMENTS)
        self.write_stream = ch.stream_stream(_M_WRITE_STREAM)
        self.read = ch.unary_stream(_M_READ)
        self.list = ch.unary_stream(_M_LIST)
        self.range_scan = ch.unary_stream(_M_RANGE_SCAN)
        self.notifications = ch.unary_stream(_M_NOTIFICATIONS)
        self.create_session = ch.unary_unary(_M_CREATE_SESSION)
        self.keep_alive = ch.unary_unary(_M_KEEP_ALIVE)
        self.close_session = ch.unary_unary(_M_CLOSE_SESSION)


# ---------------------------------------------------------------------------------------------------------------
# Write batching

_PUT, _DELETE, _DELETE_RANGE = 0, 1, 2


class _WriteOp:
    __slots__ = ("kind", "payload", "future", "idempotent", "deadline")

    def __init__(self, kind: int, payload: bytes, future: asyncio.Future, idempotent: bool, deadline: float):
        self.kind = kind
        self.payload = payload
        self.future = future
        self.idempotent = idempotent
        self.deadline = deadline


class _WriteBatch:
    __slots__ = ("ops", "request", "timer")

    def __init__(self, ops: list[_WriteOp], request: bytes) -> None:
        self.ops = ops  # puts, then deletes, then delete ranges: the order of the request and its response
        self.request = request
        self.timer: asyncio.TimerHandle | None = None


class _WriteStream:
    """One WriteStream call to a shard leader; responses match requests in order."""

    def __init__(self, writer: "_ShardWriter", call: Any) -> None:
        self.writer = writer
        self.call = call
        self.pending: deque[_WriteBatch] = deque()
        self.failed = False
        self.answered = 0
        self.reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def send(self, batch: _WriteBatch) -> None:
        self.pending.append(batch)
        batch.timer = asyncio.get_running_loop().call_later(
            self.writer.store._rpc_timeout, self._timed_out, batch
        )
        try:
            await self.call.write(batch.request)
        except asyncio.CancelledError:
            self.fail(_Closed("oxia: store closed"))
            raise
        except Exception as e:  # noqa: BLE001
            # A write that fails was not handed to the transport: the server cannot have this batch.
            if self.pending and self.pending[-1] is batch:
                self.pending.pop()
                if batch.timer is not None:
                    batch.timer.cancel()
                self.writer.unsent(batch)
            # The reader sees the call's real status (e.g. "not leader"): let it report first.
            try:
                await asyncio.wait_for(asyncio.shield(self.reader), 1.0)
            except BaseException:  # noqa: BLE001
                pass
            self.fail(e)

    def _timed_out(self, batch: _WriteBatch) -> None:
        if batch in self.pending:
            self.fail(asyncio.TimeoutError(f"oxia: no write response in {self.writer.store._rpc_timeout} s"))

    async def _read_loop(self) -> None:
        try:
            while True:
                raw = await self.call.read()
                if raw is grpc.aio.EOF:
                    raise _StreamBroken("oxia: write stream ended")
                if not self.pending:
                    raise _StreamBroken("oxia: write response without a request")
                batch = self.pending.popleft()
                self.answered += 1
                if batch.timer is not None:
                    batch.timer.cancel()
                self.writer.complete(batch, raw)
        except asyncio.CancelledError:
            self.fail(_Closed("oxia: store closed"))
        except Exception as e:  # noqa: BLE001
            self.fail(e)

    def fail(self, exc: BaseException) -> None:
        if self.failed:
            return
        self.failed = True
        self.call.cancel()
        pending = list(self.pending)
        self.pending.clear()
        for b in pending:
            if b.timer is not None:
                b.timer.cancel()
        # A leader that refuses the stream does so before reading any request.
        never_applied = self.answered == 0 and _is_not_leader(exc)
        self.writer.stream_failed(self, pending, exc, never_applied)


class _ShardWriter:
    """Coalesces the writes of one shard into WriteRequests on a WriteStream."""

    def __init__(self, store: "OxiaMetadataStore", shard: int) -> None:
        self.store = store
        self.shard = shard
        self.queue: deque[_WriteOp] = deque()
        self.wakeup = asyncio.Event()
        self.slot_free = asyncio.Event()
        self.inflight = 0
        self.stream: _WriteStream | None = None
        self.backoff = _Backoff()
        self.requests_sent = 0  # statistics: WriteRequests and the operations they carried
        self.ops_sent = 0
        self.last_error: BaseException | None = None
        self.retry_at = 0.0  # no new stream before this loop time (backoff after a failure)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, op: _WriteOp) -> None:
        self.queue.append(op)
        self.wakeup.set()

    async def _open(self) -> _WriteStream:
        conn = self.store._leader_conn(self.shard)
        call = conn.write_stream(
            metadata=(("namespace", self.store.namespace), ("shard-id", str(self.shard))),
        )
        try:
            await asyncio.wait_for(call.wait_for_connection(), self.store._rpc_timeout)
        except BaseException:
            call.cancel()
            raise
        return _WriteStream(self, call)

    def _expire(self, exc: BaseException | None) -> None:
        now = asyncio.get_running_loop().time()
        keep: deque[_WriteOp] = deque()
        for op in self.queue:
            if op.future.done():
                continue
            if now >= op.deadline:
                op.future.set_exception(
                    MetadataError(f"oxia: shard {self.shard} unavailable: {_details(exc) if exc else 'timeout'}")
                )
            else:
                keep.append(op)
        self.queue = keep

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a bug: fail what waits rather than hang it
                log.exception("oxia: the writer of shard %d failed", self.shard)
                self._fail_queue(MetadataError(f"oxia: internal error in the writer: {e!r}"))
                await asyncio.sleep(0.1)

    async def _step(self) -> None:
        await self.wakeup.wait()
        self._expire(self.last_error)
        if not self.queue:
            self.wakeup.clear()
            return
        stream = self.stream
        if stream is None or stream.failed:
            self.stream = None
            delay = self.retry_at - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                stream = self.stream = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self.last_error = e
                if not _is_transient(e) and not isinstance(e, MetadataError):
                    self._fail_queue(MetadataError(f"oxia: write to shard {self.shard} failed: {_details(e)}"))
                log.debug("oxia: opening the write stream of shard %d failed: %s", self.shard, _details(e))
                self.retry_at = asyncio.get_running_loop().time() + self.backoff.next()
                return
        while self.inflight >= self.store._max_inflight_writes and not stream.failed:
            self.slot_free.clear()
            await self.slot_free.wait()
        if stream.failed:
            return
        batch = self._take()
        if batch is None:
            return
        self.inflight += 1
        self.requests_sent += 1
        self.ops_sent += len(batch.ops)
        await stream.send(batch)

    def _take(self) -> _WriteBatch | None:
        puts: list[_WriteOp] = []
        deletes: list[_WriteOp] = []
        ranges: list[_WriteOp] = []
        size = 0
        n = 0
        q = self.queue
        max_ops = self.store._max_batch_ops
        max_bytes = self.store._max_batch_bytes
        while q and n < max_ops and size < max_bytes:
            op = q.popleft()
            if op.future.done():  # cancelled by its caller before it was sent
                continue
            (puts, deletes, ranges)[op.kind].append(op)
            size += len(op.payload) + 4
            n += 1
        if not n:
            return None
        request = _enc_write_request(
            self.shard, [o.payload for o in puts], [o.payload for o in deletes], [o.payload for o in ranges]
        )
        return _WriteBatch(puts + deletes + ranges, request)

    def _release(self) -> None:
        self.inflight -= 1
        self.slot_free.set()

    def complete(self, batch: _WriteBatch, raw: bytes) -> None:
        self._release()
        self.backoff.reset()
        try:
            puts, deletes, ranges = _dec_write_response(raw)
            results = puts + deletes + ranges
            if len(results) != len(batch.ops):
                raise MetadataError(f"oxia: write response has {len(results)} results for {len(batch.ops)} ops")
        except Exception as e:  # noqa: BLE001
            for op in batch.ops:
                if not op.future.done():
                    op.future.set_exception(MetadataError(f"oxia: bad write response: {e}"))
            return
        for op, res in zip(batch.ops, results):
            if not op.future.done():
                op.future.set_result(res)

    def unsent(self, batch: _WriteBatch) -> None:
        self._release()
        self.queue.extendleft(reversed([op for op in batch.ops if not op.future.done()]))
        self.wakeup.set()

    def stream_failed(
        self, stream: _WriteStream, pending: list[_WriteBatch], exc: BaseException, never_applied: bool
    ) -> None:
        if self.stream is stream:
            self.stream = None
        self.inflight -= len(pending)
        self.slot_free.set()
        if isinstance(exc, _Closed):
            for b in pending:
                for op in b.ops:
                    if not op.future.done():
                        op.future.set_exception(exc)
            return
        log.info("oxia: write stream of shard %d failed: %s", self.shard, _details(exc))
        self.last_error = exc
        self.retry_at = asyncio.get_running_loop().time() + self.backoff.next()
        transient = _is_transient(exc)
        retry: list[_WriteOp] = []
        for b in pending:
            for op in b.ops:
                if op.future.done():
                    continue
                if transient and (never_applied or op.idempotent):
                    retry.append(op)
                elif never_applied and not transient:
                    op.future.set_exception(MetadataError(f"oxia: write failed: {_details(exc)}"))
                else:
                    op.future.set_exception(
                        MetadataError(f"oxia: the write may or may not have been applied: {_details(exc)}")
                    )
        if retry:
            self.queue.extendleft(reversed(retry))
        self.wakeup.set()

    def _fail_queue(self, exc: BaseException) -> None:
        while self.queue:
            op = self.queue.popleft()
            if not op.future.done():
                op.future.set_exception(exc)

    async def close(self) -> None:
        self.task.cancel()
        stream = self.stream
        if stream is not None:
            stream.reader.cancel()
            stream.fail(_Closed("oxia: store closed"))
        self._fail_queue(_Closed("oxia: store closed"))
        await asyncio.gather(self.task, *( [stream.reader] if stream else []), return_exceptions=True)


# ---------------------------------------------------------------------------------------------------------------
# Read batching


class _ReadOp:
    __slots__ = ("payload", "future", "deadline", "alone")

    def __init__(self, payload: bytes, future: asyncio.Future, deadline: float) -> None:
        self.payload = payload
        self.future = future
        self.deadline = deadline
        self.alone = False  # its batch failed: send it by itself, so that one bad get fails only itself


class _ShardReader:
    """Coalesces the gets of one shard into Read calls."""

    def __init__(self, store: "OxiaMetadataStore", shard: int) -> None:
        self.store = store
        self.shard = shard
        self.queue: deque[_ReadOp] = deque()
        self.wakeup = asyncio.Event()
        self.slot_free = asyncio.Event()
        self.inflight = 0
        self.calls: set[asyncio.Task] = set()
        self.backoff = _Backoff()
        self.requests_sent = 0  # statistics: Read calls and the gets they carried
        self.ops_sent = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, op: _ReadOp) -> None:
        self.queue.append(op)
        self.wakeup.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a bug: fail what waits rather than hang it
                log.exception("oxia: the reader of shard %d failed", self.shard)
                while self.queue:
                    op = self.queue.popleft()
                    if not op.future.done():
                        op.future.set_exception(MetadataError(f"oxia: internal error in the reader: {e!r}"))
                await asyncio.sleep(0.1)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            if not self.queue:
                self.wakeup.clear()
                continue
            while self.inflight >= self.store._max_inflight_reads:
                self.slot_free.clear()
                await self.slot_free.wait()
            ops: list[_ReadOp] = []
            max_ops = self.store._max_batch_ops
            while self.queue and len(ops) < max_ops:
                if self.queue[0].alone and ops:
                    break
                op = self.queue.popleft()
                if not op.future.done():
                    ops.append(op)
                    if op.alone:
                        break
            if not ops:
                continue
            self.inflight += 1
            self.requests_sent += 1
            self.ops_sent += len(ops)
            t = loop.create_task(self._call(ops))
            self.calls.add(t)
            t.add_done_callback(self.calls.discard)

    async def _call(self, ops: list[_ReadOp]) -> None:
        done = 0
        try:
            try:
                conn = self.store._leader_conn(self.shard)
                request = _enc_read_request(self.shard, [o.payload for o in ops])
                call = conn.read(request, timeout=self.store._rpc_timeout)
                async for raw in call:
                    for res in _dec_get_responses(raw):
                        op = ops[done]
                        done += 1
                        if not op.future.done():
                            op.future.set_result(res)
                if done < len(ops):
                    raise _StreamBroken(f"oxia: read returned {done} of {len(ops)} results")
                self.backoff.reset()
            finally:
                self.inflight -= 1
                self.slot_free.set()
        except asyncio.CancelledError:
            for op in ops[done:]:
                if not op.future.done():
                    op.future.set_exception(_Closed("oxia: store closed"))
            raise
        except Exception as e:  # noqa: BLE001
            rest = ops[done:]
            if not _is_transient(e):
                if len(rest) > 1 or (rest and not rest[0].alone):
                    # The server stops a Read call at the first get it cannot serve: find which one it was.
                    for op in rest:
                        op.alone = True
                    self.queue.extendleft(reversed(rest))
                    self.wakeup.set()
                    return
                for op in rest:
                    if not op.future.done():
                        op.future.set_exception(MetadataError(f"oxia: read failed: {_details(e)}"))
                return
            log.debug("oxia: read on shard %d failed, retrying: %s", self.shard, _details(e))
            await asyncio.sleep(self.backoff.next())
            now = asyncio.get_running_loop().time()
            for op in rest:
                if op.future.done():
                    continue
                if now >= op.deadline:
                    op.future.set_exception(MetadataError(f"oxia: read failed: {_details(e)}"))
                else:
                    self.queue.append(op)
            self.wakeup.set()

    async def close(self) -> None:
        self.task.cancel()
        for t in list(self.calls):
            t.cancel()
        while self.queue:
            op = self.queue.popleft()
            if not op.future.done():
                op.future.set_exception(_Closed("oxia: store closed"))
        await asyncio.gather(self.task, *self.calls, return_exceptions=True)


# ---------------------------------------------------------------------------------------------------------------
# Sessions


class _Session:
    def __init__(self, shard: int, session_id: int, generation: int) -> None:
        self.shard = shard
        self.id = session_id
        self.generation = generation
        self.expired = False  # the server dropped it
        self.task: asyncio.Task | None = None


# ---------------------------------------------------------------------------------------------------------------
# Notifications


_END = object()


class _NotificationFeed:
    """The GetNotifications stream of one shard, fanned out to this store's watches."""

    def __init__(self, store: "OxiaMetadataStore", shard: int) -> None:
        self.store = store
        self.shard = shard
        self.watches: set[OxiaWatch] = set()
        self.offset: int | None = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        backoff = _Backoff()
        while True:
            try:
                conn = self.store._leader_conn(self.shard)
                call = conn.notifications(_enc_notifications_request(self.shard, self.offset))
                async for raw in call:
                    backoff.reset()
                    _shard, offset, items = _dec_notification_batch(raw)
                    if self.offset is None:
                        # The first batch of a stream opened without an offset: positioned at the commit offset.
                        self.offset = offset
                        if not self.ready.done():
                            self.ready.set_result(None)
                        if not items:
                            continue
                    elif offset <= self.offset:
                        continue
                    self.offset = offset
                    if items:
                        self._dispatch(items)
                raise _StreamBroken("oxia: notification stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                if not _is_transient(e):
                    err = MetadataError(f"oxia: notifications of shard {self.shard} failed: {_details(e)}")
                    if not self.ready.done():
                        self.ready.set_exception(err)
                    for w in list(self.watches):
                        w._push(err)
                    return
                log.debug("oxia: notification stream of shard %d failed: %s", self.shard, _details(e))
                await asyncio.sleep(backoff.next())

    def _dispatch(self, items: list[tuple[str, int, int | None, str | None]]) -> None:
        items.sort(key=lambda it: hierarchical_sort_key(it[0]))
        for w in list(self.watches):
            for key, ntype, version_id, range_last in items:
                t = _NOTIFICATION_TYPES.get(ntype)
                if t is None:
                    continue
                if t is NotificationType.RANGE_DELETED:
                    if range_last is None or not range_touches_prefix(key, range_last, w.prefix):
                        continue
                    w._push(Notification(key, t, None, range_last))
                elif key.startswith(w.prefix):
                    w._push(Notification(key, t, None if t is NotificationType.DELETED else version_id))

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        if not self.ready.done():
            self.ready.cancel()


class OxiaWatch(Watch):
    def __init__(self, store: "OxiaMetadataStore", prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def _push(self, item: Any) -> None:
        if not self.closed:
            self.queue.put_nowait(item)

    async def __anext__(self) -> Notification:
        if self.closed and self.queue.empty():
            raise StopAsyncIteration
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.closed = True
            self.queue.put_nowait(_END)
            raise item
        return item

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.queue.put_nowait(_END)
        await self.store._unsubscribe(self)


# ---------------------------------------------------------------------------------------------------------------
# The store


class OxiaMetadataStore(MetadataStore):
    def __init__(
        self,
        address: str,
        *,
        namespace: str,
        session_timeout_ms: int,
        client_identity: str | None,
        rpc_timeout: float,
        op_timeout: float,
        max_batch_ops: int,
        max_batch_bytes: int,
        max_inflight_writes: int,
        max_inflight_reads: int,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.session_timeout_ms = max(2_000, min(300_000, int(session_timeout_ms)))
        self.client_identity = client_identity or f"dray-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._rpc_timeout = rpc_timeout
        self._op_timeout = op_timeout
        self._max_batch_ops = max_batch_ops
        self._max_batch_bytes = max_batch_bytes
        self._max_inflight_writes = max_inflight_writes
        self._max_inflight_reads = max_inflight_reads
        self._loop = asyncio.get_running_loop()
        self._conns: dict[str, _Conn] = {}
        # Sorted by min hash: (min, max, shard)
        self._ranges: list[tuple[int, int, int]] = []
        self._range_mins: list[int] = []
        self._leaders: dict[int, str] = {}
        self._router_ok = True
        self._writers: dict[int, _ShardWriter] = {}
        self._readers: dict[int, _ShardReader] = {}
        self.session = SessionLife()
        self._sessions: dict[int, _Session] = {}  # of the live generation, by shard
        self._session_locks: dict[int, asyncio.Lock] = {}
        self._closing_sessions: set[asyncio.Task] = set()
        self._feeds: dict[int, _NotificationFeed] = {}
        self._feed_lock = asyncio.Lock()
        # prefix -> number of sums of its newest sequence key (see put_sequential)
        self._sequence_sums: dict[str, int] = {}
        self._closed = False
        self._assigned: asyncio.Future = self._loop.create_future()
        self._assignments_task: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        namespace: str = "default",
        session_timeout_ms: int = 10_000,
        client_identity: str | None = None,
        rpc_timeout: float = 10.0,
        op_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        max_batch_ops: int = 1000,
        max_batch_bytes: int = 1 << 20,
        max_inflight_writes: int = 2,
        max_inflight_reads: int = 4,
    ) -> "OxiaMetadataStore":
        """Connect to the Oxia service at host:port and wait for the namespace's shard assignments."""
        store = cls(
            address,
            namespace=namespace,
            session_timeout_ms=session_timeout_ms,
            client_identity=client_identity,
            rpc_timeout=rpc_timeout,
            op_timeout=op_timeout,
            max_batch_ops=max_batch_ops,
            max_batch_bytes=max_batch_bytes,
            max_inflight_writes=max_inflight_writes,
            max_inflight_reads=max_inflight_reads,
        )
        store._assignments_task = store._loop.create_task(store._assignments_loop())
        store.session.begin()
        try:
            await asyncio.wait_for(asyncio.shield(store._assigned), connect_timeout)
        except BaseException as e:
            await store.close()
            if isinstance(e, asyncio.TimeoutError):
                raise MetadataError(
                    f"oxia: no shard assignments from {address} (namespace {namespace!r}) in {connect_timeout} s"
                ) from None
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.session.close()
        # Sessions first, so that their ephemeral keys go now rather than at expiry.
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for s in sessions:
            if s.task is not None:
                s.task.cancel()
        await asyncio.gather(*(self._close_session(s) for s in sessions), *self._closing_sessions,
                             return_exceptions=True)
        for feed in list(self._feeds.values()):
            for w in list(feed.watches):
                w.closed = True
                w.queue.put_nowait(_END)
            await feed.close()
        self._feeds.clear()
        for w in list(self._writers.values()):
            await w.close()
        for r in list(self._readers.values()):
            await r.close()
        self._writers.clear()
        self._readers.clear()
        if self._assignments_task is not None:
            self._assignments_task.cancel()
            await asyncio.gather(self._assignments_task, return_exceptions=True)
        if not self._assigned.done():
            self._assigned.cancel()
        for conn in list(self._conns.values()):
            await conn.channel.close()
        self._conns.clear()

    async def __aenter__(self) -> "OxiaMetadataStore":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- assignments and routing ------------------------------------------------------------------------------

    def _conn(self, address: str) -> _Conn:
        if self._closed:
            raise _Closed("oxia: store closed")
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = _Conn(address)
        return conn

    def _leader_conn(self, shard: int) -> _Conn:
        leader = self._leaders.get(shard)
        if not leader:
            raise _StreamBroken(f"oxia: shard {shard} has no leader")
        return self._conn(leader)

    async def _assignments_loop(self) -> None:
        # Imported here: the PyPI package's message classes are only needed for this rarely used message.
        from oxia.internal.proto.io.streamnative.oxia import proto as pb

        backoff = _Backoff(0.1, 2.0)
        request = bytes(pb.ShardAssignmentsRequest(namespace=self.namespace))
        attempt = 0
        while not self._closed:
            # The service address first; when it fails, the known leaders too (any server streams them all).
            candidates = [self.address] + sorted(set(self._leaders.values()) - {self.address, ""})
            address = candidates[attempt % len(candidates)]
            attempt += 1
            try:
                call = self._conn(address).assignments(request)
                async for raw in call:
                    assignments = pb.ShardAssignments.parse(raw)
                    nsa = assignments.namespaces.get(self.namespace)
                    if nsa is None:
                        continue
                    self._apply_assignments(nsa, pb)
                    backoff.reset()
                    attempt = 0
                raise _StreamBroken("oxia: shard assignment stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                if not self._assigned.done() and "namespace not found" in _details(e).lower():
                    self._assigned.set_exception(MetadataError(f"oxia: namespace {self.namespace!r} not found"))
                    return
                log.info("oxia: shard assignment stream from %s failed, reconnecting: %s", address, _details(e))
            await asyncio.sleep(backoff.next())

    def _apply_assignments(self, nsa: Any, pb: Any) -> None:
        ranges = []
        leaders = {}
        for a in nsa.assignments:
            r = a.int32_hash_range
            lo, hi = (r.min_hash_inclusive, r.max_hash_inclusive) if r is not None else (0, 0xFFFFFFFF)
            ranges.append((lo, hi, a.shard))
            leaders[a.shard] = a.leader
        ranges.sort()
        if not ranges:
            return
        self._router_ok = len(ranges) == 1 or nsa.shard_key_router == pb.ShardKeyRouter.XXHASH3
        changed = {s for s, leader in leaders.items() if self._leaders.get(s) != leader}
        self._ranges = ranges
        self._range_mins = [r[0] for r in ranges]
        self._leaders = leaders
        if changed and self._assigned.done():
            log.info("oxia: new leaders for shards %s", sorted(changed))
        if not self._assigned.done():
            self._assigned.set_result(None)

    def _shard_for(self, key: str) -> int:
        ranges = self._ranges
        if len(ranges) == 1:
            return ranges[0][2]
        if not self._router_ok:
            raise MetadataError("oxia: the namespace uses a shard key router this client does not know")
        h = shard_hash(key)
        i = bisect.bisect_right(self._range_mins, h) - 1
        if i >= 0:
            lo, hi, shard = ranges[i]
            if lo <= h <= hi:
                return shard
        raise MetadataError(f"oxia: no shard for hash {h}")

    def _all_shards(self) -> list[int]:
        return [r[2] for r in self._ranges]

    @property
    def shards(self) -> list[int]:
        return self._all_shards()

    def shard_of(self, key: str, partition_key: str | None = None) -> int:
        return self._shard_for(partition_key if partition_key is not None else key)

    # -- low-level operations --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MetadataError("oxia: store closed")

    async def _write(self, shard: int, kind: int, payload: bytes, idempotent: bool) -> Any:
        return await self._submit_write(shard, kind, payload, idempotent)

    def _submit_write(self, shard: int, kind: int, payload: bytes, idempotent: bool) -> asyncio.Future:
        """Queue a write on its shard's writer now (writes queued in order are applied in order)."""
        self._check_open()
        writer = self._writers.get(shard)
        if writer is None:
            writer = self._writers[shard] = _ShardWriter(self, shard)
        fut = self._loop.create_future()
        writer.submit(_WriteOp(kind, payload, fut, idempotent, self._loop.time() + self._op_timeout))
        return fut

    async def _read(self, shard: int, key: str, comparison: int, include_value: bool = True) -> Any:
        self._check_open()
        reader = self._readers.get(shard)
        if reader is None:
            reader = self._readers[shard] = _ShardReader(self, shard)
        fut = self._loop.create_future()
        reader.submit(_ReadOp(_enc_get(key, include_value, comparison), fut, self._loop.time() + self._op_timeout))
        return await fut

    async def _retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run an idempotent call, retrying transient failures with backoff until the operation deadline."""
        deadline = self._loop.time() + self._op_timeout
        backoff = _Backoff()
        while True:
            self._check_open()
            try:
                return await fn()
            except asyncio.CancelledError:
                raise
            except MetadataError:
                raise
            except Exception as e:  # noqa: BLE001
                if not _is_transient(e) or self._loop.time() + backoff.current > deadline:
                    raise MetadataError(f"oxia: {what} failed: {_details(e)}") from e
                log.debug("oxia: %s failed, retrying: %s", what, _details(e))
                await asyncio.sleep(backoff.next())

    # -- get ---------------------------------------------------------------------------------------------------

    def _entry(self, res: tuple, key: str) -> Entry | None:
        status, version_id, session_id, value, rkey = res
        if status == _KEY_NOT_FOUND:
            return None
        if status != _OK:
            raise MetadataError(f"oxia: get {key!r} failed with status {status}")
        return Entry(rkey if rkey is not None else key, bytes(value), version_id, session_id is not None)

    async def _get_simple(self, shard: int, key: str, comparison: Comparison) -> Entry | None:
        return self._entry(await self._read(shard, key, _COMPARISON_CODE[comparison]), key)

    async def _get_on_shard(self, shard: int, key: str, comparison: Comparison) -> Entry | None:
        """A get that never returns, nor lands on, Oxia's own keys. They sort together in [_INTERNAL_LO,
        _INTERNAL_HI), and some of them (notification batches) are not records: a get that lands on one fails,
        and with it the other gets of its Read call. User keys starting with '/' sort before the block."""
        if comparison is Comparison.EQUAL:
            return await self._get_simple(shard, key, comparison)
        below = key.startswith("/") or compare_keys(key, _INTERNAL_LO) < 0
        above = not below and compare_keys(key, _INTERNAL_HI) >= 0
        if comparison in (Comparison.CEILING, Comparison.HIGHER):
            if below:
                entry = await self._get_simple(shard, key, comparison)
                if entry is None or not entry.key.startswith(_INTERNAL_PREFIX):
                    return entry
            elif above:
                return await self._get_simple(shard, key, comparison)
            # The smallest key after the block: the block's 2-segment keys are records, so landing there is safe.
            return await self._get_simple(shard, _INTERNAL_HI, Comparison.CEILING)
        if below:
            return await self._get_simple(shard, key, comparison)
        if above:
            # Only search down from key if a user key lies in [_INTERNAL_HI, key]; else skip the block.
            first = await self._get_simple(shard, _INTERNAL_HI, Comparison.CEILING)
            if first is not None:
                c = compare_keys(first.key, key)
                if c < 0 or (c == 0 and comparison is Comparison.FLOOR):
                    try:
                        entry = await self._get_simple(shard, key, comparison)
                    except MetadataError as e:  # raced with a delete of `first`, landed in the block
                        if "deserialize" not in str(e).lower():
                            raise
                        entry = None
                    if entry is not None and not entry.key.startswith(_INTERNAL_PREFIX):
                        return entry
        entry = await self._get_simple(shard, _INTERNAL_LO, Comparison.LOWER)
        return entry

    async def get(
        self,
        key: str,
        comparison: Comparison = Comparison.EQUAL,
        *,
        partition_key: str | None = None,
    ) -> Entry | None:
        if comparison is Comparison.EQUAL and key.startswith(_INTERNAL_PREFIX):
            return None
        if comparison is Comparison.EQUAL or partition_key is not None or len(self._ranges) == 1:
            return await self._get_on_shard(self.shard_of(key, partition_key), key, comparison)
        # A comparison without a partition key searches every shard.
        found = await asyncio.gather(*(self._get_on_shard(s, key, comparison) for s in self._all_shards()))
        entries = [e for e in found if e is not None]
        if not entries:
            return None
        pick = max if comparison in (Comparison.FLOOR, Comparison.LOWER) else min
        return pick(entries, key=lambda e: hierarchical_sort_key(e.key))

    # -- writes ------------------------------------------------------------------------------------------------

    async def _session_for(self, shard: int, generation: int | None) -> _Session:
        """This shard's session in the live generation (which must be `generation` if given), created on first
        use. Oxia has one per shard; to callers they are one session (see SessionLife)."""
        while True:
            live = self.session.require(generation)
            s = self._sessions.get(shard)
            if s is not None:
                return s
            lock = self._session_locks.setdefault(shard, asyncio.Lock())
            async with lock:
                if self._sessions.get(shard) is not None or self.session.generation != live:
                    continue
                request = _enc_create_session(shard, self.session_timeout_ms, self.client_identity)

                async def create() -> bytes:
                    return await self._leader_conn(shard).create_session(request, timeout=self._rpc_timeout)

                s = _Session(shard, _dec_create_session_response(await self._retrying("create session", create)),
                             live)
                self._check_open()
                if self.session.generation != live or not self.session.alive:  # ended while we asked
                    self._close_later(s)
                    continue
                s.task = self._loop.create_task(self._keep_alive(s))
                self._sessions[shard] = s
                return s

    async def _keep_alive(self, s: _Session) -> None:
        interval = self.session_timeout_ms / 3000
        request = _enc_shard_session(s.shard, s.id)
        last_ok = self._loop.time()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._leader_conn(s.shard).keep_alive(request, timeout=interval)
                last_ok = self._loop.time()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                if _is_session_not_found(e):
                    s.expired = True
                    self._end_generation(s.generation, f"Oxia dropped session {s.id} of shard {s.shard}")
                    return
                if self._loop.time() - last_ok > self.session_timeout_ms / 1000:
                    self._end_generation(s.generation, f"no keepalive of session {s.id} of shard {s.shard} got "
                                                       f"through within the session timeout ({_details(e)})")
                    return
                log.info("oxia: keep-alive of session %d on shard %d failed: %s", s.id, s.shard, _details(e))

    def _end_generation(self, generation: int, reason: str) -> None:
        """End the session generation: close every shard's session of it (their keys go now, not at their
        expiry) and begin the next generation, whose sessions are created on demand."""
        if not self.session.end(generation, reason):
            return
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for s in sessions:
            if s.task is not None and s.task is not asyncio.current_task():
                s.task.cancel()
            self._close_later(s)
        if not self._closed:
            self.session.begin()

    def _close_later(self, s: _Session) -> None:
        task = self._loop.create_task(self._close_session(s))
        self._closing_sessions.add(task)
        task.add_done_callback(self._closing_sessions.discard)

    async def _close_session(self, s: _Session) -> None:
        if s.expired:
            return
        request = _enc_shard_session(s.shard, s.id)
        try:
            leader = self._leaders.get(s.shard)
            if leader and leader in self._conns:
                await self._conns[leader].close_session(request, timeout=min(5.0, self._rpc_timeout))
        except Exception as e:  # noqa: BLE001
            log.info("oxia: closing session %d on shard %d failed: %s", s.id, s.shard, _details(e))

    async def _version_error(
        self, key: str, expected_version: int | None, partition_key: str | None
    ) -> MetadataError:
        if expected_version is not None and expected_version >= 0:
            current = await self.get(key, partition_key=partition_key)
            if current is None:
                return KeyNotFoundError(f"{key!r} does not exist (expected version {expected_version})")
            return VersionMismatchError(f"{key!r} has version {current.version}, not {expected_version}")
        return VersionMismatchError(f"{key!r} already exists")

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None = None,
        ephemeral: bool = False,
        session: int | None = None,
        partition_key: str | None = None,
    ) -> Entry:
        if key.startswith(_INTERNAL_PREFIX):
            raise MetadataError(f"oxia: keys under {_INTERNAL_PREFIX} belong to Oxia")
        if type(value) is not bytes:
            value = bytes(value)
        shard = self.shard_of(key, partition_key)
        owner = await self._session_for(shard, session) if ephemeral else None
        payload = _enc_put(
            key,
            value,
            expected_version,
            owner.id if owner else None,
            self.client_identity if owner else None,
            partition_key,
            None,
        )
        status, version_id, session_id, _key = await self._write(shard, _PUT, payload, expected_version is None)
        if status == _OK:
            return Entry(key, value, version_id, session_id is not None)
        if status == _UNEXPECTED_VERSION_ID:
            raise await self._version_error(key, expected_version, partition_key)
        if status == _SESSION_DOES_NOT_EXIST:
            if owner is not None:
                owner.expired = True
                self._end_generation(owner.generation, f"Oxia dropped session {owner.id} of shard {shard}")
            raise SessionExpiredError(f"oxia: session of shard {shard} does not exist")
        if status == _KEY_NOT_FOUND:
            raise KeyNotFoundError(key)
        raise MetadataError(f"oxia: put {key!r} failed with status {status}")

    async def put_sequential(
        self, prefix: str, value: bytes, deltas: Sequence[int], *, partition_key: str
    ) -> Entry:
        self._check_sequential(prefix, deltas, partition_key)
        known = self._sequence_sums.get(prefix)
        if known is None:
            known = await self._newest_sequence_sums(self._shard_for(partition_key), prefix)
        shard, value, payload = self._sequential_put(prefix, value, deltas, partition_key, known)
        return self._sequential_entry(prefix, value, deltas, await self._write(shard, _PUT, payload, False))

    async def put_sequential_batch(self, puts: Sequence[SequentialPut]) -> list[Entry | Exception]:
        """Queued together, in order, on their shards' writers: one write request per shard, applied in order."""
        results: list[Entry | Exception | None] = [None] * len(puts)
        known: dict[str, int | BaseException] = {}
        unknown: dict[str, str] = {}
        for p in puts:
            if p.prefix in self._sequence_sums:
                known[p.prefix] = self._sequence_sums[p.prefix]
            elif p.partition_key is not None:
                unknown[p.prefix] = p.partition_key
        found = await asyncio.gather(
            *(self._newest_sequence_sums(self._shard_for(pk), prefix) for prefix, pk in unknown.items()),
            return_exceptions=True)
        known.update(zip(unknown, found))
        queued = []
        for i, p in enumerate(puts):
            try:
                self._check_sequential(p.prefix, p.deltas, p.partition_key)
                sums = known[p.prefix]
                if isinstance(sums, BaseException):
                    raise sums
                shard, value, payload = self._sequential_put(p.prefix, p.value, p.deltas, p.partition_key, sums)
                queued.append((i, value, self._submit_write(shard, _PUT, payload, False)))
            except Exception as e:  # noqa: BLE001 - reported in the result
                results[i] = e
        for i, value, fut in queued:
            try:
                results[i] = self._sequential_entry(puts[i].prefix, value, puts[i].deltas, await fut)
            except Exception as e:  # noqa: BLE001 - reported in the result
                results[i] = e
        return results  # type: ignore[return-value]

    @staticmethod
    def _check_sequential(prefix: str, deltas: Sequence[int], partition_key: str | None) -> None:
        # The server fails the whole write request (every operation coalesced with this one) on these.
        if partition_key is None:
            raise ValueError("put_sequential needs a partition_key")
        if not deltas or deltas[0] <= 0 or any(d < 0 or d >= 1 << 64 for d in deltas):
            raise ValueError(f"put_sequential deltas must be non-negative, the first > 0: {list(deltas)}")
        if prefix.startswith(_INTERNAL_PREFIX):
            raise MetadataError(f"oxia: keys under {_INTERNAL_PREFIX} belong to Oxia")

    def _sequential_put(
        self, prefix: str, value: bytes, deltas: Sequence[int], partition_key: str, known: int
    ) -> tuple[int, bytes, bytes]:
        """(shard, value, payload) of a checked put_sequential under a prefix whose newest key has known sums."""
        if type(value) is not bytes:
            value = bytes(value)
        if len(deltas) < known:
            raise MetadataError(f"put_sequential {prefix}: the newest key has {known} sums, got {len(deltas)} deltas")
        return self._shard_for(partition_key), value, _enc_put(prefix, value, None, None, None, partition_key, deltas)

    def _sequential_entry(self, prefix: str, value: bytes, deltas: Sequence[int], result: tuple) -> Entry:
        status, version_id, session_id, key = result
        if status != _OK or key is None:
            raise MetadataError(f"oxia: put_sequential {prefix!r} failed with status {status}")
        if len(self._sequence_sums) >= 100_000:
            self._sequence_sums.clear()
        self._sequence_sums[prefix] = len(deltas)
        return Entry(key, value, version_id, False)

    async def _newest_sequence_sums(self, shard: int, prefix: str) -> int:
        """The number of sums in the newest key under prefix, found as the server finds it (the key below
        'prefix-<max uint64>'). The server fails the whole write request, not just one put, when a put_sequential
        has fewer deltas than that or the key does not parse, so both are refused here first."""
        newest = await self._get_on_shard(shard, f"{prefix}-{(1 << 64) - 1:020d}", Comparison.LOWER)
        if newest is None or not newest.key.startswith(prefix):
            return 0
        parts = newest.key[len(prefix) :].split("-")[1:]
        if not all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts):
            raise MetadataError(f"put_sequential {prefix}: the newest key {newest.key!r} is not a sequence key")
        return len(parts)

    async def delete(
        self, key: str, *, expected_version: int | None = None, partition_key: str | None = None
    ) -> bool:
        if key.startswith(_INTERNAL_PREFIX):
            return False
        shard = self.shard_of(key, partition_key)
        status = await self._write(
            shard, _DELETE, _enc_delete(key, expected_version), expected_version is None
        )
        if status == _OK:
            return True
        if status == _KEY_NOT_FOUND:
            return False
        if status == _UNEXPECTED_VERSION_ID:
            raise await self._version_error(key, expected_version, partition_key)
        raise MetadataError(f"oxia: delete {key!r} failed with status {status}")

    async def delete_range(self, start: str, end: str, *, partition_key: str | None = None) -> None:
        ranges = _user_ranges(start, end)
        if not ranges:
            return
        shards = [self._shard_for(partition_key)] if partition_key is not None else self._all_shards()
        calls = [
            self._write(shard, _DELETE_RANGE, _enc_delete_range(s, e), True) for shard in shards for s, e in ranges
        ]
        for status in await asyncio.gather(*calls):
            if status != _OK:
                raise MetadataError(f"oxia: delete_range [{start!r}, {end!r}) failed with status {status}")

    # -- list and scan -----------------------------------------------------------------------------------------

    async def _list_shard(self, shard: int, start: str, end: str) -> list[str]:
        async def once() -> list[str]:
            keys: list[str] = []
            call = self._leader_conn(shard).list(_enc_range_request(shard, start, end), timeout=self._rpc_timeout)
            async for raw in call:
                keys.extend(_dec_list_response(raw))
            return keys

        return await self._retrying("list", once)

    async def _scan_shard(self, shard: int, start: str, end: str) -> list[Entry]:
        async def once() -> list[Entry]:
            entries: list[Entry] = []
            call = self._leader_conn(shard).range_scan(
                _enc_range_request(shard, start, end), timeout=self._rpc_timeout
            )
            async for raw in call:
                for status, version_id, session_id, value, key in _dec_get_responses(raw):
                    entries.append(Entry(key or "", bytes(value), version_id, session_id is not None))
            return entries

        return await self._retrying("range scan", once)

    def _targets(self, partition_key: str | None) -> list[int]:
        self._check_open()
        return [self._shard_for(partition_key)] if partition_key is not None else self._all_shards()

    async def list(self, start: str, end: str, *, partition_key: str | None = None) -> list[str]:
        ranges = _user_ranges(start, end)
        shards = self._targets(partition_key)
        parts = await asyncio.gather(*(self._list_shard(sh, s, e) for sh in shards for s, e in ranges))
        keys = [k for part in parts for k in part]
        if len(shards) > 1:
            keys.sort(key=hierarchical_sort_key)
        return keys

    async def range_scan(self, start: str, end: str, *, partition_key: str | None = None) -> list[Entry]:
        ranges = _user_ranges(start, end)
        shards = self._targets(partition_key)
        parts = await asyncio.gather(*(self._scan_shard(sh, s, e) for sh in shards for s, e in ranges))
        entries = [x for part in parts for x in part]
        if len(shards) > 1:
            entries.sort(key=lambda x: hierarchical_sort_key(x.key))
        return entries

    # -- watch -------------------------------------------------------------------------------------------------

    async def watch(self, prefix: str) -> Watch:
        self._check_open()
        w = OxiaWatch(self, prefix)
        async with self._feed_lock:
            feeds = []
            for shard in self._all_shards():
                feed = self._feeds.get(shard)
                if feed is None:
                    feed = self._feeds[shard] = _NotificationFeed(self, shard)
                feed.watches.add(w)
                feeds.append(feed)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.shield(f.ready) for f in feeds)), self._op_timeout
            )
        except BaseException as e:
            await w.aclose()
            if isinstance(e, asyncio.TimeoutError):
                raise MetadataError(f"oxia: notification streams not ready in {self._op_timeout} s") from None
            raise
        return w

    async def _unsubscribe(self, w: OxiaWatch) -> None:
        async with self._feed_lock:
            for shard, feed in list(self._feeds.items()):
                feed.watches.discard(w)
                if not feed.watches:
                    del self._feeds[shard]
                    await feed.close()
