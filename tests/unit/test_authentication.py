"""The broker's SASL shell (server/authentication.py): the per-address failed-login window, and where the JWKS of
OAUTHBEARER comes from (a path, a file:// URL, an http:// URL served here)."""

from __future__ import annotations

import http.server
import threading

from dray_broker.server import authentication
from dray_broker.server.authentication import FailedLogins


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_an_address_is_blocked_after_limit_failures_until_they_age_out():
    clock = Clock()
    limiter = FailedLogins(limit=3, window_ms=60_000, clock_ms=clock)
    for _ in range(2):
        limiter.failed("/10.0.0.1")
        clock.now += 1000
    assert not limiter.blocked("/10.0.0.1")
    limiter.failed("/10.0.0.1")
    assert limiter.blocked("/10.0.0.1") and not limiter.blocked("/10.0.0.2")
    clock.now += 58_000  # the first failure is 60 s old: out of the window
    assert not limiter.blocked("/10.0.0.1")
    clock.now += 10_000
    assert not limiter.blocked("/10.0.0.1")


def test_no_limit_and_bounded_memory(monkeypatch):
    off = FailedLogins(limit=0, window_ms=60_000)
    for _ in range(100):
        off.failed("/a")
    assert not off.blocked("/a")
    monkeypatch.setattr(authentication, "MAX_TRACKED_ADDRESSES", 10)
    clock = Clock()
    limiter = FailedLogins(limit=1, window_ms=1000, clock_ms=clock)
    for i in range(25):
        limiter.failed(f"/10.0.0.{i}")
    assert len(limiter._failures) <= 10
    assert limiter.blocked("/10.0.0.24")  # the newest are kept


async def test_the_jwks_is_read_from_a_path_a_file_url_or_http(tmp_path):
    document = b'{"keys": []}'
    path = tmp_path / "jwks.json"
    path.write_bytes(document)
    assert await authentication._read_jwks(str(path)) == document
    assert await authentication._read_jwks(path.as_uri()) == document

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        assert await authentication._read_jwks(url) == document
    finally:
        server.shutdown()
        server.server_close()


# --- the gate in front of the route table ------------------------------------------------------------------------


def _frame(api_key: int, version: int, body, correlation_id: int = 7) -> bytes:
    from kio.index import load_request_schema
    from kio.serial import entity_writer

    from dray_broker.protocol.codec import ChunkWriter

    cls = load_request_schema(api_key, version)
    header = cls.__header_schema__
    out = ChunkWriter()
    entity_writer(header)(out, header(request_api_key=api_key, request_api_version=version,
                                      correlation_id=correlation_id, client_id="unit"))
    entity_writer(cls)(out, body)
    return b"".join(out)


def _response(api_key: int, version: int, chunks):
    from kio.index import load_response_schema
    from kio.serial import entity_reader

    from dray_broker.server.connection import LastAnswer

    data = b"".join(chunks.chunks if isinstance(chunks, LastAnswer) else chunks)[4:]
    cls = load_response_schema(api_key, version)
    _, n = entity_reader(cls.__header_schema__)(data, 0)
    return entity_reader(cls)(data, n)[0]


async def test_the_gate_logs_a_connection_in_and_its_requests_carry_the_principal():
    from kio.schema.errors import ErrorCode
    from kio.schema.metadata.v12.request import MetadataRequest
    from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
    from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

    from dray_broker.auth.credentials import ScramMechanism
    from dray_broker.auth.principal import ANONYMOUS, user
    from dray_broker.auth.sasl import SaslSettings
    from dray_broker.auth.scram import new_credential
    from dray_broker.observability.metrics import BrokerMetrics
    from dray_broker.protocol import apis
    from dray_broker.protocol.codec import make, response_module
    from dray_broker.server.api_versions import handle_api_versions
    from dray_broker.server.connection import Connection, LastAnswer
    from dray_broker.server.dispatch import Dispatcher
    from dray_broker.server.handling import NoService, Response, RouteTable, route
    from dray_broker.server.request_budget import RequestBudget
    from tests.unit.auth_clients import SCRAM_CLIENTS

    seen = []  # the principal of each Metadata request that reached its handler
    M = response_module(apis.METADATA, 12)

    async def handle_metadata(_: NoService, ctx, req):
        seen.append(ctx.principal)
        return Response(make(M.MetadataResponse, throttle_time=0, brokers=(), cluster_id=None, controller_id=-1,
                             topics=()))

    routes = RouteTable([
        route(apis.API_VERSIONS, "ApiVersions", (0, 4), RouteTable, handle_api_versions),
        route(apis.METADATA, "Metadata", (0, 13), NoService, handle_metadata),
        route(apis.SASL_HANDSHAKE, "SaslHandshake", (0, 1), NoService, authentication.handle_sasl_handshake),
        route(apis.SASL_AUTHENTICATE, "SaslAuthenticate", (0, 2), NoService, authentication.handle_sasl_authenticate),
    ])
    mechanism = ScramMechanism.SCRAM_SHA_512
    credentials = {"alice": new_credential(mechanism, "pw")}
    metrics = BrokerMetrics()
    gate = authentication.Authenticator(
        SaslSettings(("SCRAM-SHA-512", "PLAIN"), credentials=lambda name, m: credentials.get(name) if m is mechanism
                     else None), routes, metrics, FailedLogins(5, 60_000), max_request_bytes=1 << 20)
    dispatcher = Dispatcher(routes, [routes, NoService()], metrics, gate)

    def connection() -> Connection:
        conn = Connection(dispatcher.dispatch, 1 << 20, lambda c: None, RequestBudget(1 << 20))
        gate.attach(conn)
        return conn

    metadata = _frame(3, 12, MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                             include_topic_authorized_operations=False))
    conn = connection()
    assert conn.max_frame_bytes == 512 * 1024
    handshake = await dispatcher.dispatch(_frame(17, 1, SaslHandshakeRequest(mechanism="SCRAM-SHA-512")), conn)
    assert _response(17, 1, handshake).error_code == ErrorCode.none
    client = SCRAM_CLIENTS["kafka-python"]("alice", "pw", "SCRAM-SHA-512")
    first = await dispatcher.dispatch(_frame(36, 2, SaslAuthenticateRequest(auth_bytes=client.first())), conn)
    final = await dispatcher.dispatch(
        _frame(36, 2, SaslAuthenticateRequest(auth_bytes=client.final(_response(36, 2, first).auth_bytes))), conn)
    client.verify(_response(36, 2, final).auth_bytes)
    assert conn.principal == user("alice") and conn.max_frame_bytes == 1 << 20
    await dispatcher.dispatch(metadata, conn)
    assert seen == [user("alice")]

    # A wrong password: the answer is the connection's last, counted; Metadata never reaches its handler.
    conn = connection()
    await dispatcher.dispatch(_frame(17, 1, SaslHandshakeRequest(mechanism="PLAIN")), conn)
    failed = await dispatcher.dispatch(_frame(36, 2, SaslAuthenticateRequest(auth_bytes=b"\0alice\0nope")), conn)
    assert isinstance(failed, LastAnswer)
    assert _response(36, 2, failed).error_code == ErrorCode.sasl_authentication_failed
    assert conn.principal == ANONYMOUS
    assert metrics.sasl_failed_logins.labels("PLAIN", "authentication_failed")._value.get() == 1
    # Before any login, Metadata closes the connection without reaching the handler.
    conn = connection()
    await dispatcher.dispatch(metadata, conn)
    assert seen == [user("alice")]
    assert metrics.sasl_failed_logins.labels("none", "illegal_state")._value.get() == 1
