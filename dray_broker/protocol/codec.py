"""Kafka frames <-> kio entities. No I/O here: the server feeds frames in and writes the chunks out.

kio quirks handled here (../shared/FACTS.md): the decoder wants bytes, an unknown version raises UnknownEntity,
and an unknown tagged field raises KeyError.
"""

from __future__ import annotations

import dataclasses
import datetime
import struct
import uuid
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

from kio.index import UnknownAPIKey, UnknownEntity, load_payload_module, load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from dray_broker.protocol.guard import FrameError, check_request
from dray_broker.protocol.kio_shim import kafka_type

_SIZE = struct.Struct(">i")
_KEY_VERSION_CORRELATION = struct.Struct(">hhi")


class MalformedRequestError(Exception):
    """The frame cannot be parsed; the connection must be closed."""


class UnsupportedVersionError(Exception):
    """kio has no schema for this API key and version."""

    def __init__(self, api_key: int, version: int, correlation_id: int):
        super().__init__(f"API key {api_key} version {version} is not supported")
        self.api_key = api_key
        self.version = version
        self.correlation_id = correlation_id


@dataclass(frozen=True, slots=True)
class Request:
    api_key: int
    version: int
    correlation_id: int
    client_id: str | None
    body: Any


@dataclass(frozen=True, slots=True)
class EncodedBody:
    """A response body its handler encoded itself (hot paths); encode_response only adds the header, which has
    a tag buffer after the correlation id when flexible (response header v1). data is the body, or a list of its
    chunks that are written out as they are (a Fetch response's record views: never joined)."""

    data: bytes | list
    flexible_header: bool


class ChunkWriter(list[bytes]):
    """The writer kio wants: collects chunks for transport.writelines (no joining copies)."""

    write = list.append


def peek_header(frame: bytes) -> tuple[int, int, int]:
    """(api_key, version, correlation_id) of a frame, read without kio."""
    if len(frame) < _KEY_VERSION_CORRELATION.size:
        raise MalformedRequestError(f"request of {len(frame)} bytes is shorter than a request header")
    return _KEY_VERSION_CORRELATION.unpack_from(frame)


@cache
def _readers(api_key: int, version: int) -> tuple[Any, Any, Any]:
    cls = load_request_schema(api_key, version)
    return cls, entity_reader(cls.__header_schema__), entity_reader(cls)


def decode_request(frame: bytes) -> Request:
    api_key, version, correlation_id = peek_header(frame)
    try:
        cls, read_header, read_body = _readers(api_key, version)
    except (UnknownAPIKey, UnknownEntity):
        raise UnsupportedVersionError(api_key, version, correlation_id) from None
    try:
        # Before kio: it would abort the process on an impossible array count, and refuse unknown tagged fields.
        frame = check_request(frame, cls)
    except FrameError as e:
        raise MalformedRequestError(f"API {api_key} v{version}: {e}") from None
    try:
        header, n = read_header(frame, 0)
        body, end = read_body(frame, n)
    except KeyError as e:
        raise MalformedRequestError(f"unknown tagged field {e} in API {api_key} v{version}") from None
    except Exception as e:  # the native decoder raises several types for short or inconsistent frames
        raise MalformedRequestError(f"cannot decode API {api_key} v{version}: {e!r}") from None
    return Request(api_key, version, correlation_id, header.client_id, body)


@cache
def _writers(api_key: int, version: int) -> tuple[Any, Any, Any]:
    cls = load_response_schema(api_key, version)
    header_cls = cls.__header_schema__
    return header_cls, entity_writer(header_cls), entity_writer(cls)


def encode_response(api_key: int, version: int, correlation_id: int, response: Any) -> list[bytes]:
    """The whole response frame (size prefix, header, body) as a list of chunks."""
    if isinstance(response, EncodedBody):  # the hot path: header by hand too
        header = _SIZE.pack(correlation_id) + (b"\x00" if response.flexible_header else b"")
        data = response.data
        if isinstance(data, list):
            return [_SIZE.pack(len(header) + sum(map(len, data))), header, *data]
        return [_SIZE.pack(len(header) + len(data)), header, data]
    header_cls, write_header, write_body = _writers(api_key, version)
    out = ChunkWriter([b""])
    write_header(out, header_cls(correlation_id=correlation_id))
    write_body(out, response)
    out[0] = _SIZE.pack(sum(map(len, out)))
    return out


# --- building version-specific responses --------------------------------------------------------------------


@cache
def response_module(api_key: int, version: int) -> ModuleType:
    return load_payload_module(api_key, version, EntityType.response)


@cache
def _field_plan(cls: type) -> tuple[frozenset[str], dict[str, int]]:
    names = set()
    timedeltas = {}
    for f in dataclasses.fields(cls):
        names.add(f.name)
        if kafka_type(f).startswith("timedelta"):
            timedeltas[f.name] = 1
    return frozenset(names), timedeltas


def make(cls: type, **values: Any) -> Any:
    """Build a kio entity of this version from values named as in any version: fields this version lacks are
    dropped, and milliseconds become timedeltas where the schema wants them."""
    names, timedeltas = _field_plan(cls)
    kwargs = {}
    for k, v in values.items():
        if k in names:
            if k in timedeltas and isinstance(v, int):
                v = datetime.timedelta(milliseconds=v)
            kwargs[k] = v
    return cls(**kwargs)


def ms(value: datetime.timedelta | int | None) -> int:
    """Milliseconds from a kio timedelta field (which decodes -1 as -1 ms)."""
    if value is None:
        return -1
    if isinstance(value, datetime.timedelta):
        return int(value / datetime.timedelta(milliseconds=1))
    return int(value)


NULL_UUID = uuid.UUID(int=0)
