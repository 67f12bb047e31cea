"""A raw Kafka protocol client for tests: sends kio request entities of any version, decodes the responses."""

from __future__ import annotations

import socket
import struct

from kio.index import load_payload_module, load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from dray_broker.protocol.codec import make

TIMEOUT = 10


class _Writer(list):
    write = list.append


class Wire:
    """One connection that sends kio request entities of any version and decodes the responses."""

    def __init__(self, bootstrap: str, client_id: str = "dray-wire-test"):
        host, port = bootstrap.rsplit(":", 1)
        self.client_id = client_id
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.correlation_id = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, api_key: int, version: int, body) -> None:
        """Send a request without waiting for its response."""
        req_cls = load_request_schema(api_key, version)
        header_cls = req_cls.__header_schema__
        self.correlation_id += 1
        w = _Writer()
        entity_writer(header_cls)(w, header_cls(request_api_key=api_key, request_api_version=version,
                                                correlation_id=self.correlation_id, client_id=self.client_id))
        entity_writer(req_cls)(w, body)
        payload = b"".join(w)
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)

    def call(self, api_key: int, version: int, body):
        self.send(api_key, version, body)
        size = struct.unpack(">i", self._read(4))[0]
        frame = self._read(size)
        resp_cls = load_response_schema(api_key, version)
        header, n = entity_reader(resp_cls.__header_schema__)(frame, 0)
        assert header.correlation_id == self.correlation_id
        response, m = entity_reader(resp_cls)(frame, n)
        assert n + m == len(frame), "trailing bytes after the response"
        return response

    def _read(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)


def request(api_key: int, version: int, cls_name: str, **fields):
    """A request entity (or nested entity) of this version; fields the version lacks are dropped."""
    module = load_payload_module(api_key, version, EntityType.request)
    return make(getattr(module, cls_name), **fields)


