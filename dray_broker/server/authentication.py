"""SASL on a connection: the I/O shell around auth/sasl.py's state machine. The dispatcher gives every frame of a
connection to a SASL listener to `Authenticator.gate` first; it serves SaslHandshake, SaslAuthenticate and the raw
tokens of SaslHandshake v0 itself, refuses what may not come before (or during) a login as Kafka does, and lets the
rest through (PROCEED) once the connection is authenticated, as `conn.principal`.

Failed logins are answered (SASL_AUTHENTICATION_FAILED with Kafka's message, or the handshake's error) after
connection.failed.authentication.delay.ms, then the connection is closed; each is counted in
dray_sasl_failed_logins{mechanism, reason}. An address with `limit` failures within `window_ms` gets its next logins
failed at once, without checking them (reason rate_limited), until its failures age out of the window: password
guessing costs the guesser, not the broker.

Before authentication a frame may not exceed sasl.server.max.receive.size (512 KiB), as in Kafka.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path
from typing import Callable

from kio.index import load_response_schema
from kio.schema.errors import ErrorCode

from dray_broker.auth.credential_store import ScramCredentialStore
from dray_broker.auth.oauthbearer import OAuthBearerSettings, RefreshingKeySet
from dray_broker.auth.sasl import MAX_RECEIVE_SIZE, Action, SaslConnection, SaslSettings
from dray_broker.config import Settings
from dray_broker.observability.metrics import BrokerMetrics
from dray_broker.protocol import apis
from dray_broker.protocol.codec import Request, UnsupportedVersionError, encode_response, make, peek_header, response_module
from dray_broker.protocol.rejections import error_response
from dray_broker.server.connection import Connection, FrameAnswer, LastAnswer
from dray_broker.server.handling import NO_RESPONSE, NoService, RequestContext, Response, RouteTable

log = logging.getLogger(__name__)

RATE_LIMITED = "Too many failed logins from this address; try again later"
MAX_TRACKED_ADDRESSES = 10_000


class Proceed:
    """The frame is an ordinary request of an authenticated connection: dispatch it."""


PROCEED = Proceed()


class FailedLogins:
    """Failed logins per client address within a sliding window (memory: at most MAX_TRACKED_ADDRESSES addresses,
    each at most `limit` timestamps)."""

    def __init__(self, limit: int, window_ms: int, clock_ms: Callable[[], int] = lambda: time.monotonic_ns() // 10**6):
        self.limit = limit
        self.window_ms = window_ms
        self._clock_ms = clock_ms
        self._failures: dict[str, deque[int]] = {}

    def blocked(self, address: str) -> bool:
        if self.limit <= 0:
            return False
        failures = self._failures.get(address)
        if failures is None:
            return False
        self._expire(failures, self._clock_ms())
        if not failures:
            del self._failures[address]
        return len(failures) >= self.limit

    def failed(self, address: str) -> None:
        if self.limit <= 0:
            return
        now = self._clock_ms()
        if address not in self._failures and len(self._failures) >= MAX_TRACKED_ADDRESSES:
            for other in list(self._failures):
                self._expire(self._failures[other], now)
                if not self._failures[other]:
                    del self._failures[other]
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:  # still full: forget the longest tracked
                del self._failures[next(iter(self._failures))]
        failures = self._failures.setdefault(address, deque(maxlen=self.limit))
        failures.append(now)

    def _expire(self, failures: deque[int], now: int) -> None:
        while failures and now - failures[0] >= self.window_ms:
            failures.popleft()


def sasl_settings(settings: Settings, credentials: ScramCredentialStore, cluster_id: str) -> SaslSettings:
    """The SASL listeners' settings: mechanisms, credentials from the metadata store, the OAUTHBEARER key set."""
    oauth_keys = None
    if settings.sasl_oauthbearer_jwks_url:
        keys = RefreshingKeySet(functools.partial(_read_jwks, settings.sasl_oauthbearer_jwks_url),
                                clock_ms=lambda: time.time_ns() // 10**6,
                                refresh_ms=settings.sasl_oauthbearer_jwks_refresh_ms)
        oauth_keys = keys.key_for
    audiences = settings.sasl_oauthbearer_expected_audience
    return SaslSettings(
        mechanisms=settings.enabled_sasl_mechanisms,
        credentials=credentials.get,
        oauth_keys=oauth_keys,
        oauthbearer=OAuthBearerSettings(
            expected_audiences=frozenset(a.strip() for a in audiences.split(",") if a.strip()) if audiences
            else frozenset(),
            expected_issuer=settings.sasl_oauthbearer_expected_issuer),
        max_reauth_ms=settings.connections_max_reauth_ms,
        # Unknown users get the same fake credential from every broker of the cluster.
        fake_secret=hashlib.sha256(b"dray fake SCRAM credentials\x00" + cluster_id.encode()).digest(),
        run_blocking=asyncio.to_thread,
    )


async def _read_jwks(url: str) -> bytes:
    """The JWKS document at a path, a file:// or an http(s):// URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        def get() -> bytes:
            with urllib.request.urlopen(url, timeout=10) as response:
                document: bytes = response.read()
                return document
        return await asyncio.to_thread(get)
    path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else url
    return await asyncio.to_thread(Path(path).read_bytes)


class Authenticator:
    """The broker's SASL side: settings, the failed-login limiter and the metrics, shared by its connections."""

    def __init__(self, settings: SaslSettings, routes: RouteTable, metrics: BrokerMetrics, limiter: FailedLogins,
                 max_request_bytes: int, failure_delay_ms: int = 0):
        self.settings = settings
        self._failure_delay_s = failure_delay_ms / 1000
        self._routes = routes
        self._metrics = metrics
        self._limiter = limiter
        self._max_request_bytes = max_request_bytes

    def attach(self, conn: Connection) -> None:
        """Make a new connection (to a SASL listener) log in before anything else."""
        conn.sasl = SaslConnection(self.settings)
        conn.max_frame_bytes = min(MAX_RECEIVE_SIZE, self._max_request_bytes)

    async def gate(self, frame: bytes, conn: Connection) -> FrameAnswer | Proceed:
        sasl = conn.sasl
        assert sasl is not None
        if sasl.expects_raw_token:
            return await self._raw_token(frame, conn, sasl)
        api_key, version, correlation_id = peek_header(frame)
        admission = sasl.admit(api_key)
        action = admission.action
        if action is Action.PROCESS:
            return PROCEED
        if action is Action.CLOSE:
            if not sasl.authenticated and sasl.principal is not None:
                reason = "the SASL session expired"
            else:
                reason = f"API {api_key} before SASL authentication"
                self._failed(conn, sasl, "illegal_state")
            conn.close(reason)
            return NO_RESPONSE
        route = self._routes.get(api_key)
        if route is None or not route.accepts(version):
            self._failed(conn, sasl, "illegal_state")
            conn.close(f"API key {api_key} version {version} during SASL authentication")
            return NO_RESPONSE
        try:
            req = route.decode(frame)
        except UnsupportedVersionError as e:
            conn.close(str(e))
            return NO_RESPONSE
        conn.client_id = req.client_id
        if action is Action.HANDSHAKE:
            handshake = sasl.handshake(version, req.body.mechanism)
            M = response_module(apis.SASL_HANDSHAKE, version)
            chunks = encode_response(api_key, version, correlation_id, make(
                M.SaslHandshakeResponse, error_code=handshake.error_code, mechanisms=handshake.mechanisms))
            if handshake.close:
                reason = ("unsupported_mechanism" if handshake.error_code is ErrorCode.unsupported_sasl_mechanism
                          else "illegal_state")
                self._failed(conn, sasl, reason)
                await self._delay_failure()
                return LastAnswer(chunks, f"SaslHandshake refused ({handshake.error_code.name})")
            return chunks
        if action is Action.AUTHENTICATE:
            return await self._authenticate(conn, sasl, req.body.auth_bytes, version, correlation_id)
        # REJECT: the request's own error response.
        body = error_response(load_response_schema(api_key, version), req.body, admission.error_code,
                              admission.error_message)
        chunks = encode_response(api_key, version, correlation_id, body)
        if admission.close:
            self._failed(conn, sasl, "illegal_state")
            return LastAnswer(chunks, admission.error_message or "illegal SASL state")
        return chunks

    async def _authenticate(self, conn: Connection, sasl: SaslConnection, auth_bytes: bytes, version: int,
                            correlation_id: int) -> FrameAnswer:
        M = response_module(apis.SASL_AUTHENTICATE, version)
        if self._limiter.blocked(conn.host):
            self._failed(conn, sasl, "rate_limited", count_towards_limit=False)
            await self._delay_failure()
            body = make(M.SaslAuthenticateResponse, error_code=ErrorCode.sasl_authentication_failed,
                        error_message=RATE_LIMITED, auth_bytes=b"", session_lifetime=0)
            return LastAnswer(encode_response(apis.SASL_AUTHENTICATE, version, correlation_id, body), RATE_LIMITED)
        logged_in_before = sasl.principal is not None
        reply = await sasl.authenticate(bytes(auth_bytes), version)
        body = make(M.SaslAuthenticateResponse, error_code=reply.error_code, error_message=reply.error_message,
                    auth_bytes=reply.auth_bytes, session_lifetime=reply.session_lifetime_ms)
        chunks = encode_response(apis.SASL_AUTHENTICATE, version, correlation_id, body)
        if reply.close:
            reason = "authentication_failed" if reply.error_code is ErrorCode.sasl_authentication_failed \
                else "illegal_state"
            self._failed(conn, sasl, reason, detail=reply.reason)
            await self._delay_failure()
            return LastAnswer(chunks, f"SASL authentication failed: {reply.error_message}")
        if sasl.authenticated:
            self._logged_in(conn, sasl, logged_in_before)
        return chunks

    async def _raw_token(self, token: bytes, conn: Connection, sasl: SaslConnection) -> FrameAnswer:
        """A SASL token framed alone (after SaslHandshake v0): answered the same way, without Kafka headers."""
        if self._limiter.blocked(conn.host):
            self._failed(conn, sasl, "rate_limited", count_towards_limit=False)
            await self._delay_failure()
            conn.close(RATE_LIMITED)
            return NO_RESPONSE
        logged_in_before = sasl.principal is not None
        reply = await sasl.raw_token(token)
        chunks = [reply.frame] if reply.frame is not None else []
        if reply.close:
            self._failed(conn, sasl, "authentication_failed", detail=reply.reason)
            await self._delay_failure()
            if not chunks:
                conn.close("SASL authentication failed")
                return NO_RESPONSE
            return LastAnswer(chunks, "SASL authentication failed")
        if sasl.authenticated:
            self._logged_in(conn, sasl, logged_in_before)
        return chunks

    async def _delay_failure(self) -> None:
        """Kafka's connection.failed.authentication.delay.ms: the failed client waits before it learns, and so
        before it retries (this connection's requests only: the others are served meanwhile)."""
        if self._failure_delay_s > 0:
            await asyncio.sleep(self._failure_delay_s)

    def _logged_in(self, conn: Connection, sasl: SaslConnection, reauthentication: bool) -> None:
        assert sasl.principal is not None and sasl.mechanism is not None
        conn.principal = sasl.principal
        conn.max_frame_bytes = self._max_request_bytes
        self._metrics.sasl_logins.labels(sasl.mechanism, "true" if reauthentication else "false").inc()
        if not reauthentication:
            log.info("%s authenticated as %s with %s", conn.peer, sasl.principal, sasl.mechanism)

    def _failed(self, conn: Connection, sasl: SaslConnection, reason: str, *, count_towards_limit: bool = True,
                detail: str | None = None) -> None:
        mechanism = sasl.mechanism if sasl.mechanism in self.settings.mechanisms else "none"
        self._metrics.sasl_failed_logins.labels(mechanism, reason).inc()
        if count_towards_limit:
            self._limiter.failed(conn.host)
        log.warning("failed SASL login from %s (client %s, mechanism %s): %s", conn.peer, conn.client_id, mechanism,
                    detail or reason)


# --- the SASL APIs where no login is going on -----------------------------------------------------------------------


async def handle_sasl_handshake(_: NoService, ctx: RequestContext, req: Request) -> Response:
    """SaslHandshake on a listener without SASL: ILLEGAL_SASL_STATE, as Kafka's KafkaApis answers it. (On a SASL
    listener the gate above answers it.)"""
    M = response_module(apis.SASL_HANDSHAKE, req.version)
    return Response(make(M.SaslHandshakeResponse, error_code=ErrorCode.illegal_sasl_state, mechanisms=()))


async def handle_sasl_authenticate(_: NoService, ctx: RequestContext, req: Request) -> Response:
    M = response_module(apis.SASL_AUTHENTICATE, req.version)
    return Response(make(M.SaslAuthenticateResponse, error_code=ErrorCode.illegal_sasl_state,
                         error_message="SaslAuthenticate request received after successful authentication",
                         auth_bytes=b"", session_lifetime=0))
