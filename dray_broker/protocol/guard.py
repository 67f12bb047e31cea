"""Check a request frame against its schema before kio's native decoder sees it.

Two kio gaps make this necessary (../shared/FACTS.md):
- kio reserves memory for an array from the count on the wire before reading any element. A 42-byte Fetch whose
  topic count is 0xFFFFFFFE asks for 34 GB; the allocation fails and Rust aborts the whole broker (SIGABRT, not an
  exception). Every element takes at least one byte, so a count (or a string/bytes length) larger than the bytes
  left in the frame is malformed: refused here, before kio allocates anything.
- kio raises KeyError on a tagged field it does not know, where the protocol (KIP-482) says to skip it. Unknown
  tagged fields are dropped here, so kio sees a frame with known tags only.
- kio decodes null where the schema allows none (handlers then fail on None): refused here too.

The walk follows kio's own schema classes, compiled once per (API, version) into a short plan: runs of fixed-size
fields become one skip, so a request costs a few steps per array element.
"""

from __future__ import annotations

import dataclasses
import struct
from functools import cache
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

from dray_broker.protocol.kio_shim import (
    EntityField,
    EntityTupleField,
    PrimitiveTupleField,
    classify_field,
    field_tag,
    is_optional,
    kafka_type,
)
from dray_broker.protocol.primitives import encode_uvarint

_FIXED = {"bool": 1, "int8": 1, "int16": 2, "uint16": 2, "int32": 4, "int64": 8, "float64": 8, "uuid": 16,
          "timedelta_i32": 4, "timedelta_i64": 8, "datetime_i64": 8, "uint32": 4, "uint64": 8, "uint8": 1}

_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from

# Plan steps: (op, argument, whether the wire may hold null)
_SKIP = 0  # n fixed bytes
_STRING = 1  # string, bytes or records (compact when flexible)
_STRING_LEGACY16 = 2  # int16-length string (the request header's client_id, in every header version)
_ARRAY_FIXED = 3  # array of fixed-size primitives: element size
_ARRAY_STRING = 4  # array of strings
_ARRAY_ENTITY = 5  # array of entities: plan
_ENTITY = 6  # nested entity: plan
_NULLABLE_ENTITY = 7  # nested entity after an int8 null marker: plan

# A change to the frame: (start, end, replacement bytes)
Edit = tuple[int, int, bytes]


class FrameError(ValueError):
    """The frame cannot be a valid request of its API and version."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    steps: tuple
    flexible: bool
    tags: dict  # tag -> plan of the field's value (a _Plan wrapping one step)
    tag_section: bool  # an entity of a flexible version ends with its tagged fields; a tagged value does not


@cache
def _plan(cls: Any) -> _Plan:
    flexible = cls.__flexible__
    steps: list = []
    tags = {}
    for f in dataclasses.fields(cls):
        step = _step(f)
        tag = field_tag(f)
        if tag is not None:
            tags[tag] = _Plan((step,), True, {}, False)
            continue
        if step[0] == _SKIP and steps and steps[-1][0] == _SKIP:
            steps[-1] = (_SKIP, steps[-1][1] + step[1], False)
        else:
            steps.append(step)
    return _Plan(tuple(steps), flexible, tags, flexible)


def _step(f: dataclasses.Field[Any]) -> tuple[Any, ...]:
    kind = classify_field(f)
    nullable = get_origin(f.type) in (UnionType, Union) and NoneType in get_args(f.type)
    if isinstance(kind, EntityTupleField):
        return (_ARRAY_ENTITY, _plan(kind.type_), nullable)
    if isinstance(kind, EntityField):
        return (_NULLABLE_ENTITY if is_optional(f) else _ENTITY, _plan(kind.type_), nullable)
    wire = kafka_type(f)
    if isinstance(kind, PrimitiveTupleField):
        if wire in _FIXED:
            return (_ARRAY_FIXED, _FIXED[wire], nullable)
        return (_ARRAY_STRING, None, nullable)
    if wire in _FIXED:
        return (_SKIP, _FIXED[wire], False)
    if wire in ("string", "bytes", "records"):
        return (_STRING, wire, nullable)
    raise TypeError(f"no frame check for kafka type {wire} of {f.name}")  # every kio 0.6.5 schema compiles


def _uvarint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(5):
        if pos >= end:
            raise FrameError("a varint runs past the end of the frame")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    raise FrameError("a varint is longer than 5 bytes")


def _int(buf: bytes, pos: int, end: int, size: int) -> tuple[int, int]:
    if pos + size > end:
        raise FrameError("a length runs past the end of the frame")
    return int.from_bytes(buf[pos:pos + size], "big", signed=True), pos + size


def _length(buf: bytes, pos: int, end: int, flexible: bool, legacy_size: int) -> tuple[int, int]:
    """A string/bytes length or an array count: -1 for null. Must fit in what is left of the frame."""
    if flexible:
        n, pos = _uvarint(buf, pos, end)
        n -= 1
    else:
        n, pos = _int(buf, pos, end, legacy_size)
        if n < -1:
            raise FrameError(f"negative length {n}")
    if n > end - pos:
        raise FrameError(f"a length of {n} is more than the {end - pos} bytes left in the frame")
    return n, pos


def _walk(plan: _Plan, buf: bytes, pos: int, end: int, edits: list[Edit]) -> int:
    flexible = plan.flexible
    for op, arg, nullable in plan.steps:
        if op == _SKIP:
            pos += arg
            if pos > end:
                raise FrameError("the frame ends inside a field")
            continue
        if op == _ENTITY:
            pos = _walk(arg, buf, pos, end, edits)
            continue
        if op == _NULLABLE_ENTITY:
            marker, pos = _int(buf, pos, end, 1)
            if marker >= 0:
                pos = _walk(arg, buf, pos, end, edits)
            continue
        # Every other step starts with a length or count (-1: null). Varints of one byte are the common case.
        if op == _STRING_LEGACY16 or not flexible:
            if op == _STRING_LEGACY16 or (op == _STRING and arg == "string"):
                if pos + 2 > end:
                    raise FrameError("a length runs past the end of the frame")
                n = _I16(buf, pos)[0]
                pos += 2
            else:
                if pos + 4 > end:
                    raise FrameError("a length runs past the end of the frame")
                n = _I32(buf, pos)[0]
                pos += 4
            if n < -1:
                raise FrameError(f"negative length {n}")
        else:
            if pos < end and buf[pos] < 0x80:
                n = buf[pos] - 1
                pos += 1
            else:
                n, pos = _uvarint(buf, pos, end)
                n -= 1
        if n > end - pos:
            raise FrameError(f"a length of {n} is more than the {end - pos} bytes left in the frame")
        if n <= 0:
            if n < 0 and not nullable:
                raise FrameError("null where the schema allows none")
            continue
        if op == _STRING or op == _STRING_LEGACY16:
            pos += n
        elif op == _ARRAY_ENTITY:
            for _ in range(n):
                pos = _walk(arg, buf, pos, end, edits)
        elif op == _ARRAY_FIXED:
            pos += n * arg
            if pos > end:
                raise FrameError("an array runs past the end of the frame")
        else:  # _ARRAY_STRING
            for _ in range(n):
                m, pos = _length(buf, pos, end, flexible, 2)
                pos += max(m, 0)
    if plan.tag_section:
        if pos < end and buf[pos] == 0:  # no tagged fields: the common case
            return pos + 1
        pos = _tagged_fields(plan, buf, pos, end, edits)
    return pos


def _tagged_fields(plan: _Plan, buf: bytes, pos: int, end: int, edits: list[Edit]) -> int:
    start = pos
    count, pos = _uvarint(buf, pos, end)
    if count > end - pos:
        raise FrameError(f"{count} tagged fields cannot fit in the frame")
    kept = []
    dropped = False
    for _ in range(count):
        entry = pos
        tag, pos = _uvarint(buf, pos, end)
        size, pos = _uvarint(buf, pos, end)
        if size > end - pos:
            raise FrameError(f"a tagged field of {size} bytes runs past the end of the frame")
        value_end = pos + size
        field_plan = plan.tags.get(tag)
        if field_plan is None:
            dropped = True
        else:
            inner: list[Edit] = []
            if _walk(field_plan, buf, pos, value_end, inner) != value_end:
                raise FrameError(f"tagged field {tag} does not fill its {size} bytes")
            if inner:
                dropped = True
                value = _apply(buf, pos, value_end, inner)
                kept.append(encode_uvarint(tag) + encode_uvarint(len(value)) + value)
            else:
                kept.append(bytes(buf[entry:value_end]))
        pos = value_end
    if dropped:
        edits.append((start, pos, encode_uvarint(len(kept)) + b"".join(kept)))
    return pos


def _apply(buf: bytes, start: int, end: int, edits: list[Edit]) -> bytes:
    out = []
    pos = start
    for a, b, replacement in sorted(edits):
        out.append(bytes(buf[pos:a]))
        out.append(replacement)
        pos = b
    out.append(bytes(buf[pos:end]))
    return b"".join(out)


@cache
def _header_plan(header_cls: Any) -> _Plan:
    """Request header v1/v2: api key, version, correlation id, then client_id as an int16-length string (also in
    the flexible v2), then (v2) tagged fields."""
    return _Plan(((_SKIP, 8, False), (_STRING_LEGACY16, None, True)), header_cls.__flexible__, {},
                 header_cls.__flexible__)


def check_request(frame: bytes, request_cls: Any) -> bytes:
    """The frame, or a copy of it without unknown tagged fields. Raise FrameError where a length or count cannot
    fit in the frame (before kio would reserve memory for it)."""
    end = len(frame)
    edits: list[Edit] = []
    pos = _walk(_header_plan(request_cls.__header_schema__), frame, 0, end, edits)
    _walk(_plan(request_cls), frame, pos, end, edits)
    return _apply(frame, 0, end, edits) if edits else frame
