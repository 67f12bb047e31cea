"""The SASL state machine of one connection (KIP-43 SaslHandshake, KIP-152 SaslAuthenticate, KIP-368
re-authentication), sans-I/O: the connection hands it what the client sent and writes back what it returns.

How a SASL listener talks, as Kafka's SaslServerAuthenticator does it:
- Before authentication only ApiVersions and SaslHandshake are served; anything else closes the connection.
- SaslHandshake names a mechanism. Not enabled: UNSUPPORTED_SASL_MECHANISM (with the enabled list), then close.
  v1: the exchange continues in SaslAuthenticate requests (auth_bytes in, auth_bytes out); any other request meanwhile
  gets ILLEGAL_SASL_STATE and the connection closes.
  v0: the exchange continues in raw frames, each a 4-byte big-endian length and the mechanism's bytes, no Kafka
  header, both ways (`expects_raw_token` tells the connection to read the next frame that way).
- A failed login answers SASL_AUTHENTICATION_FAILED with Kafka's message (v1) or nothing (v0), then closes.
- Success makes the connection's principal User:<name>. With connections.max.reauth.ms (per mechanism) or a token
  expiry (OAUTHBEARER `exp`), the session has a lifetime: SaslAuthenticate v1+ tells the client (session_lifetime_ms),
  and after it a request other than SaslHandshake closes the connection. A client that used SaslAuthenticate v1+
  re-authenticates with a new SaslHandshake (at most once a second) with the same mechanism and principal.
- After authentication, SaslAuthenticate (and SaslHandshake when re-authentication is not possible) get
  ILLEGAL_SASL_STATE and the connection stays open, as in Kafka's KafkaApis.

Mechanisms: SCRAM-SHA-256 and SCRAM-SHA-512 (scram.py), PLAIN (plain.py), OAUTHBEARER (oauthbearer.py). Credentials
come from an injected lookup (user name, SCRAM mechanism) -> credential or None, sync or async; OAUTHBEARER keys from
an injected lookup kid -> key. Unknown users cost the same work as wrong passwords (fake credentials).
"""

from __future__ import annotations

import enum
import inspect
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kio.schema.errors import ErrorCode

from dray_broker.auth import oauthbearer, plain
from dray_broker.auth.credentials import ScramCredential, ScramMechanism
from dray_broker.auth.errors import AuthenticationFailed
from dray_broker.auth.oauthbearer import InvalidToken, OAuthBearerServer, OAuthBearerSettings, VerificationKey
from dray_broker.auth.principal import KafkaPrincipal, user
from dray_broker.auth.scram import DEFAULT_ITERATIONS, ScramServer, fake_credential

T = TypeVar("T")

SASL_HANDSHAKE = 17
API_VERSIONS = 18
SASL_AUTHENTICATE = 36

PLAIN = "PLAIN"
OAUTHBEARER = "OAUTHBEARER"
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", PLAIN, OAUTHBEARER)

MAX_RECEIVE_SIZE = 524288  # sasl.server.max.receive.size: the largest frame a client may send before authentication
MIN_REAUTH_INTERVAL_MS = 1000  # Kafka refuses to start re-authentication more often

CredentialLookup = Callable[[str, ScramMechanism], "ScramCredential | None | Awaitable[ScramCredential | None]"]
KeyLookup = Callable[[str | None], "VerificationKey | None | Awaitable[VerificationKey | None]"]
RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]


async def _inline(fn: Callable[[], T]) -> T:
    return fn()


@dataclass(frozen=True)
class SaslSettings:
    """A listener's SASL configuration (sasl.enabled.mechanisms and friends)."""

    mechanisms: tuple[str, ...]
    credentials: CredentialLookup | None = None  # SCRAM-* and PLAIN
    oauth_keys: KeyLookup | None = None  # OAUTHBEARER
    oauthbearer: OAuthBearerSettings = OAuthBearerSettings()
    max_reauth_ms: int = 0  # connections.max.reauth.ms (0: sessions do not expire unless a token does)
    max_reauth_ms_by_mechanism: Mapping[str, int] = field(default_factory=dict)  # per-mechanism overrides
    # Fake credentials of unknown users derive from this secret; share it between brokers (e.g. from the cluster id
    # and a configured secret) so that an unknown user's salt is the same on every broker, as a real user's is.
    fake_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    fake_iterations: int = DEFAULT_ITERATIONS
    # How to run a PBKDF2 (PLAIN logins, a few ms): inline by default; the broker passes asyncio.to_thread.
    run_blocking: RunBlocking = _inline

    def __post_init__(self) -> None:
        if not self.mechanisms:
            raise ValueError("no SASL mechanism is enabled")
        unknown = [m for m in self.mechanisms if m not in MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported SASL mechanisms {unknown}; supported: {list(MECHANISMS)}")
        if len(set(self.mechanisms)) != len(self.mechanisms):
            raise ValueError(f"SASL mechanisms listed twice: {list(self.mechanisms)}")
        if self.credentials is None and any(m != OAUTHBEARER for m in self.mechanisms):
            raise ValueError("SCRAM and PLAIN need a credential lookup")
        if self.oauth_keys is None and OAUTHBEARER in self.mechanisms:
            raise ValueError("OAUTHBEARER needs a key lookup (a JWKS)")

    def reauth_ms(self, mechanism: str) -> int:
        return self.max_reauth_ms_by_mechanism.get(mechanism, self.max_reauth_ms)


class State(enum.Enum):
    HANDSHAKE = "handshake"  # waiting for SaslHandshake (ApiVersions is served meanwhile)
    RAW_TOKENS = "raw tokens"  # after SaslHandshake v0: the exchange in raw frames
    AUTHENTICATE = "authenticate"  # after SaslHandshake v1 (or a re-authentication): SaslAuthenticate requests
    AUTHENTICATED = "authenticated"
    FAILED = "failed"  # the connection must be closed


class Action(enum.Enum):
    PROCESS = "process"  # an ordinary request: serve it (authorized as `principal`)
    HANDSHAKE = "handshake"  # call handshake()
    AUTHENTICATE = "authenticate"  # call authenticate()
    REJECT = "reject"  # answer the request with error_code / error_message; close afterwards if close is set
    CLOSE = "close"  # close the connection without answering


@dataclass(frozen=True, slots=True)
class Admission:
    action: Action
    error_code: ErrorCode = ErrorCode.none
    error_message: str | None = None
    close: bool = False


@dataclass(frozen=True, slots=True)
class HandshakeReply:
    error_code: ErrorCode
    mechanisms: tuple[str, ...]
    close: bool = False  # close after sending


@dataclass(frozen=True, slots=True)
class AuthenticateReply:
    error_code: ErrorCode
    error_message: str | None
    auth_bytes: bytes
    session_lifetime_ms: int = 0  # SaslAuthenticate v1+
    close: bool = False  # close after sending
    reason: str | None = None  # why the login failed, for the broker's log (never sent)


@dataclass(frozen=True, slots=True)
class RawTokenReply:
    frame: bytes | None  # the length-prefixed token to send, if any
    close: bool = False  # close (after sending the frame, if any)
    reason: str | None = None  # why the login failed, for the broker's log (never sent)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SaslConnection:
    """The SASL side of one connection. Call admit() for every request frame decoded (or, while
    expects_raw_token, raw_token() for every frame), then handshake() / authenticate() as it says."""

    def __init__(self, settings: SaslSettings, clock_ms: Callable[[], int] = _wall_clock_ms):
        self.settings = settings
        self._clock_ms = clock_ms
        self.state = State.HANDSHAKE
        self.principal: KafkaPrincipal | None = None  # set once authenticated; kept during a re-authentication
        self.mechanism: str | None = None
        self.session_expires_at_ms: int | None = None
        self._server: ScramServer | OAuthBearerServer | None = None  # PLAIN needs no state between messages
        self._credential_expires_at_ms: int | None = None
        self._reauthenticating = False
        self._reauth_mechanism_refused: str | None = None
        self._client_supports_reauth = False
        self._last_reauth_start_ms: int | None = None
        self._busy = False

    @property
    def authenticated(self) -> bool:
        return self.state is State.AUTHENTICATED

    @property
    def expects_raw_token(self) -> bool:
        return self.state is State.RAW_TOKENS

    def session_expired(self, now_ms: int | None = None) -> bool:
        now_ms = self._clock_ms() if now_ms is None else now_ms
        return self.session_expires_at_ms is not None and now_ms > self.session_expires_at_ms

    # -----------------------------------------------------------------------------------------------------------
    # Requests

    def admit(self, api_key: int) -> Admission:
        """What to do with a request of this API that arrived now."""
        if self.state is State.HANDSHAKE:
            if api_key == API_VERSIONS:
                return Admission(Action.PROCESS)
            if api_key == SASL_HANDSHAKE:
                return Admission(Action.HANDSHAKE)
            self._fail()  # Kafka: IllegalSaslStateException before any response
            return Admission(Action.CLOSE)
        if self.state is State.AUTHENTICATE:
            if api_key == SASL_AUTHENTICATE:
                return Admission(Action.AUTHENTICATE)
            self._fail()
            return Admission(Action.REJECT, ErrorCode.illegal_sasl_state,
                             f"Unexpected Kafka request of type {api_key} during SASL authentication.", close=True)
        if self.state is State.AUTHENTICATED:
            now = self._clock_ms()
            if api_key == SASL_HANDSHAKE:
                if self._can_reauthenticate(now):
                    return Admission(Action.HANDSHAKE)
                return Admission(Action.REJECT, ErrorCode.illegal_sasl_state,
                                 "SaslHandshake request received after successful authentication")
            if self.session_expired(now):
                self._fail()
                return Admission(Action.CLOSE)
            if api_key == SASL_AUTHENTICATE:
                return Admission(Action.REJECT, ErrorCode.illegal_sasl_state,
                                 "SaslAuthenticate request received after successful authentication")
            return Admission(Action.PROCESS)
        self._fail()  # RAW_TOKENS (the frame should have gone to raw_token()) or FAILED
        return Admission(Action.CLOSE)

    def handshake(self, version: int, mechanism: str) -> HandshakeReply:
        """Answer a SaslHandshake (admit() said HANDSHAKE)."""
        enabled = self.settings.mechanisms
        reauth = self.state is State.AUTHENTICATED
        if not (self.state is State.HANDSHAKE or (reauth and self._can_reauthenticate(self._clock_ms()))):
            self._fail()
            return HandshakeReply(ErrorCode.illegal_sasl_state, enabled, close=True)
        if mechanism not in enabled:
            self._fail()
            return HandshakeReply(ErrorCode.unsupported_sasl_mechanism, enabled, close=True)
        if reauth:
            if version < 1:  # a client that re-authenticates speaks SaslAuthenticate, so SaslHandshake v1
                self._fail()
                return HandshakeReply(ErrorCode.illegal_sasl_state, enabled, close=True)
            self._reauthenticating = True
            self._last_reauth_start_ms = self._clock_ms()
            if mechanism != self.mechanism:  # Kafka accepts the handshake and fails the next token
                self._reauth_mechanism_refused = mechanism
        self._server = self._new_server(mechanism)
        if not reauth:
            self.mechanism = mechanism
        self.state = State.AUTHENTICATE if version >= 1 else State.RAW_TOKENS
        return HandshakeReply(ErrorCode.none, enabled)

    async def authenticate(self, auth_bytes: bytes, version: int) -> AuthenticateReply:
        """Answer a SaslAuthenticate (admit() said AUTHENTICATE)."""
        if self.state is not State.AUTHENTICATE or self._busy:
            self._fail()
            return AuthenticateReply(ErrorCode.illegal_sasl_state, "SaslAuthenticate request in the wrong state",
                                     b"", close=True)
        if version >= 1:
            self._client_supports_reauth = True
        try:
            reply, done = await self._step(auth_bytes)
        except AuthenticationFailed as e:
            return AuthenticateReply(ErrorCode.sasl_authentication_failed, self._client_message(e), b"", close=True,
                                     reason=e.reason)
        lifetime = self._complete() if done else 0
        return AuthenticateReply(ErrorCode.none, None, reply, session_lifetime_ms=lifetime)

    async def raw_token(self, token: bytes) -> RawTokenReply:
        """Answer a raw SASL frame's payload (expects_raw_token: after SaslHandshake v0)."""
        if self.state is not State.RAW_TOKENS or self._busy:
            self._fail()
            return RawTokenReply(None, close=True)
        try:
            reply, done = await self._step(token)
        except AuthenticationFailed as e:
            return RawTokenReply(None, close=True, reason=e.reason)
        if done:
            self._complete()
        return RawTokenReply(len(reply).to_bytes(4, "big") + reply)

    # -----------------------------------------------------------------------------------------------------------
    # The exchange

    def _new_server(self, mechanism: str) -> ScramServer | OAuthBearerServer | None:
        scram = ScramMechanism.from_name(mechanism)
        if scram is not None:
            return ScramServer(scram, self.settings.fake_secret, fake_iterations=self.settings.fake_iterations)
        return OAuthBearerServer() if mechanism == OAUTHBEARER else None

    async def _step(self, data: bytes) -> tuple[bytes, bool]:
        """One client message in: (the answer, whether the login is now complete), or AuthenticationFailed (after
        which the connection is FAILED)."""
        self._busy = True
        try:
            if self._reauth_mechanism_refused is not None:
                raise AuthenticationFailed(
                    "re-authentication with another mechanism",
                    f"SASL mechanism '{self._reauth_mechanism_refused}' requested by client is not supported for "
                    f"re-authentication of mechanism '{self.mechanism}'")
            server = self._server
            if isinstance(server, ScramServer):
                return await self._scram_step(server, data)
            if isinstance(server, OAuthBearerServer):
                return await self._oauthbearer_step(server, data)
            return await self._plain_step(data)
        except AuthenticationFailed:
            self._fail()
            raise
        finally:
            self._busy = False

    async def _scram_step(self, server: ScramServer, data: bytes) -> tuple[bytes, bool]:
        if server.username is None:
            username = server.receive_client_first(data)
            credential = await self._credential(username, server.mechanism)
            return server.server_first(credential), False
        reply = server.receive_client_final(data)
        self._authenticated_as(user(server.username))
        return reply, True

    async def _plain_step(self, data: bytes) -> tuple[bytes, bool]:
        response = plain.parse_response(data)
        credential = (await self._credential(response.username, ScramMechanism.SCRAM_SHA_256)
                      or await self._credential(response.username, ScramMechanism.SCRAM_SHA_512))
        fake = fake_credential(ScramMechanism.SCRAM_SHA_256, response.username, self.settings.fake_secret,
                               self.settings.fake_iterations)
        name = await self.settings.run_blocking(lambda: plain.check_login(response, credential, fake))
        self._authenticated_as(user(name))
        return b"", True

    async def _oauthbearer_step(self, server: OAuthBearerServer, data: bytes) -> tuple[bytes, bool]:
        if not server.expects_initial:
            server.receive_after_error(data)  # raises: the login failed
        response = server.receive_initial(data)
        try:
            kid = oauthbearer.token_key_id(response.token)
            key = await self._lookup(self.settings.oauth_keys, kid)
            token = oauthbearer.validate_token(response.token, key, self.settings.oauthbearer, self._clock_ms())
        except InvalidToken:
            return server.reject(), False
        reply = server.accept(response, token)
        self._authenticated_as(user(token.principal_name), credential_expires_at_ms=token.expires_at_ms)
        return reply, True

    async def _credential(self, username: str, mechanism: ScramMechanism) -> ScramCredential | None:
        credential = await self._lookup(self.settings.credentials, username, mechanism)
        if credential is not None and not isinstance(credential, ScramCredential):
            raise AuthenticationFailed(f"credential lookup returned {type(credential).__name__}")
        return credential if credential is None or credential.mechanism is mechanism else None

    @staticmethod
    async def _lookup(fn: Callable[..., Any] | None, *args: Any) -> Any:
        """Call an injected lookup, sync or async. Its failures fail the login (Kafka: "credentials could not be
        obtained") instead of the connection's task."""
        assert fn is not None
        try:
            value = fn(*args)
            return await value if inspect.isawaitable(value) else value
        except Exception as e:  # noqa: BLE001 - any store failure is a failed login, never a crashed connection
            raise AuthenticationFailed(f"credential lookup failed: {type(e).__name__}: {e}") from e

    # -----------------------------------------------------------------------------------------------------------
    # Completion

    def _authenticated_as(self, principal: KafkaPrincipal, credential_expires_at_ms: int | None = None) -> None:
        """Record the login's outcome; the session lifetime is computed by _complete()."""
        if self._reauthenticating and principal != self.principal:
            assert self.principal is not None
            raise AuthenticationFailed(
                "principal changed during re-authentication",
                f"Cannot change principals during re-authentication from {self.principal.type}.{self.principal.name}"
                f": {principal.type}.{principal.name}")
        self.principal = principal
        self._credential_expires_at_ms = credential_expires_at_ms

    def _complete(self) -> int:
        """Enter AUTHENTICATED; returns the session lifetime (Kafka's rule: the smaller of connections.max.reauth.ms
        and the credential's remaining life, whichever is set; 0 for none)."""
        assert self.mechanism is not None
        now = self._clock_ms()
        max_reauth = self.settings.reauth_ms(self.mechanism)
        expires = self._credential_expires_at_ms
        lifetime = 0
        self.session_expires_at_ms = None
        if expires is not None or max_reauth > 0:
            if expires is None:
                lifetime = max_reauth
            elif max_reauth <= 0:
                lifetime = max(0, expires - now)
            else:
                lifetime = max(0, min(expires - now, max_reauth))
            self.session_expires_at_ms = now + lifetime
        self.state = State.AUTHENTICATED
        self._server = None
        self._reauthenticating = False
        return lifetime

    def _can_reauthenticate(self, now: int) -> bool:
        return (self.session_expires_at_ms is not None and self._client_supports_reauth
                and (self._last_reauth_start_ms is None or now - self._last_reauth_start_ms >= MIN_REAUTH_INTERVAL_MS))

    def _client_message(self, e: AuthenticationFailed) -> str:
        if e.client_message is not None:
            return e.client_message
        during = "re-authentication" if self._reauthenticating else "authentication"
        return f"Authentication failed during {during} due to invalid credentials with SASL mechanism {self.mechanism}"

    def _fail(self) -> None:
        self.state = State.FAILED
        self._server = None
