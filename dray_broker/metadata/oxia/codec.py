"""A minimal protobuf wire codec for the messages of Oxia's client.proto that this client sends and reads often.

betterproto2's pure-Python codec costs about 0.1 ms per message, which would cap put_sequential at a few thousand
per second; these functions encode and decode the few fields used, straight from and to bytes. Requests are
encoded whole (encode_*); responses are decoded to tuples (decode_*), unknown fields skipped. They are checked
against the PyPI package's betterproto2 classes in tests/storage/test_metadata_oxia.py.
"""

from __future__ import annotations

from typing import Sequence

from dray_broker.metadata.base import Comparison, MetadataError, NotificationType

# Status enum (client.proto)
OK = 0
KEY_NOT_FOUND = 1
UNEXPECTED_VERSION_ID = 2
SESSION_DOES_NOT_EXIST = 3

COMPARISON_CODE = {
    Comparison.EQUAL: 0,
    Comparison.FLOOR: 1,
    Comparison.CEILING: 2,
    Comparison.LOWER: 3,
    Comparison.HIGHER: 4,
}
NOTIFICATION_TYPES = {
    0: NotificationType.CREATED,
    1: NotificationType.MODIFIED,
    2: NotificationType.DELETED,
    3: NotificationType.RANGE_DELETED,
}


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


def encode_put(
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


def encode_delete(key: str, expected_version: int | None) -> bytes:
    out = bytearray()
    _put_bytes(out, 0x0A, key.encode())
    if expected_version is not None:
        out.append(0x10)
        _put_varint(out, expected_version)
    return bytes(out)


def encode_delete_range(start: str, end: str) -> bytes:
    out = bytearray()
    _put_bytes(out, 0x0A, start.encode())
    _put_bytes(out, 0x12, end.encode())
    return bytes(out)


def encode_get(key: str, include_value: bool, comparison: int) -> bytes:
    out = bytearray()
    _put_bytes(out, 0x0A, key.encode())
    if include_value:
        out += b"\x10\x01"
    if comparison:
        out.append(0x18)
        out.append(comparison)
    return bytes(out)


def encode_write_request(shard: int, puts: list[bytes], deletes: list[bytes], ranges: list[bytes]) -> bytes:
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    for p in puts:
        _put_bytes(out, 0x12, p)
    for d in deletes:
        _put_bytes(out, 0x1A, d)
    for r in ranges:
        _put_bytes(out, 0x22, r)
    return bytes(out)


def encode_read_request(shard: int, gets: list[bytes]) -> bytes:
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    for g in gets:
        _put_bytes(out, 0x12, g)
    return bytes(out)


def encode_range_request(shard: int, start: str, end: str) -> bytes:
    """ListRequest and RangeScanRequest share their first three fields."""
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    _put_bytes(out, 0x12, start.encode())
    _put_bytes(out, 0x1A, end.encode())
    return bytes(out)


def encode_shard_session(shard: int, session_id: int) -> bytes:
    """SessionHeartbeat and CloseSessionRequest: shard = 1, session_id = 2."""
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    out.append(0x10)
    _put_varint(out, session_id)
    return bytes(out)


def encode_create_session(shard: int, timeout_ms: int, client_identity: str) -> bytes:
    out = bytearray(b"\x08")
    _put_varint(out, shard)
    out.append(0x10)
    _put_varint(out, timeout_ms)
    _put_bytes(out, 0x1A, client_identity.encode())
    return bytes(out)


def encode_notifications_request(shard: int, start_offset_exclusive: int | None) -> bytes:
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


def decode_version(buf: bytes, pos: int, end: int) -> tuple[int, int | None]:
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


def decode_put_response(buf: bytes, pos: int, end: int) -> tuple[int, int, int | None, str | None]:
    """(status, version_id, session_id, key)"""
    status = OK
    version_id = 0
    session_id = None
    key = None
    while pos < end:
        tag = buf[pos]
        if tag == 0x12:
            n, pos = _get_varint(buf, pos + 1)
            version_id, session_id = decode_version(buf, pos, pos + n)
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


def decode_status_only(buf: bytes, pos: int, end: int) -> int:
    status = OK
    while pos < end:
        tag = buf[pos]
        if tag == 0x08:
            status, pos = _get_varint(buf, pos + 1)
        else:
            tag, pos = _get_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    return status


def decode_write_response(buf: bytes) -> tuple[list, list, list]:
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
                puts.append(decode_put_response(buf, pos, pos + n))
            elif tag == 0x12:
                deletes.append(decode_status_only(buf, pos, pos + n))
            else:
                ranges.append(decode_status_only(buf, pos, pos + n))
            pos += n
        else:
            tag, pos = _get_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    return puts, deletes, ranges


def decode_get_response(buf: bytes, pos: int, end: int) -> tuple[int, int, int | None, bytes, str | None]:
    """(status, version_id, session_id, value, key)"""
    status = OK
    version_id = 0
    session_id = None
    value = b""
    key = None
    while pos < end:
        tag = buf[pos]
        if tag == 0x12:
            n, pos = _get_varint(buf, pos + 1)
            version_id, session_id = decode_version(buf, pos, pos + n)
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


def decode_get_responses(buf: bytes) -> list:
    """ReadResponse.gets and RangeScanResponse.records (both field 1)."""
    out = []
    pos = 0
    end = len(buf)
    while pos < end:
        tag = buf[pos]
        if tag == 0x0A:
            n, pos = _get_varint(buf, pos + 1)
            out.append(decode_get_response(buf, pos, pos + n))
            pos += n
        else:
            tag, pos = _get_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    return out


def decode_list_response(buf: bytes) -> list[str]:
    return [buf[v[0] : v[1]].decode() for f, _wt, v in _fields(buf, 0, len(buf)) if f == 1]


def decode_notification_batch(buf: bytes) -> tuple[int, int, list[tuple[str, int, int | None, str | None]]]:
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


def decode_create_session_response(buf: bytes) -> int:
    for f, _wt, v in _fields(buf, 0, len(buf)):
        if f == 1:
            return _signed(v)
    return 0
