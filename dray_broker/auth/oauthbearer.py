"""SASL OAUTHBEARER, server side (RFC 7628), with JWT access tokens validated against a JSON Web Key Set the way
Kafka's broker-side validator does it (KIP-768, OAuthBearerValidatorCallbackHandler).

The client's one message: `n,[a=authzid],\\x01auth=Bearer <token>\\x01[key=value\\x01...]\\x01` (RFC 7628 section 3.1;
the key=value pairs besides `auth` are SASL extensions, KIP-342). A valid token answers an empty message and the token's
subject claim becomes the principal; its `exp` bounds the session (sasl.py). An invalid token answers the RFC's error
challenge `{"status":"invalid_token"}`, the client answers `\\x01`, and the login fails with that JSON as the message,
as Kafka does. A malformed message fails at once.

Token checks, with Kafka's settings (sasl.oauthbearer.*): signature by a key of the JWKS (by `kid`; a token without
`kid` is accepted only when the set has one key), an algorithm of the allowed list compatible with the key (RS*, PS*,
ES* at the matching curve; never `none` or HMAC), `exp` and `iat` present, `exp` not passed and `nbf` reached within the
clock skew (clock.skew.seconds, 30), `aud` containing one of expected.audience when that is set, `iss` equal to
expected.issuer when that is set, the subject claim (sub.claim.name, `sub`) a non-empty string, the scope claim
(scope.claim.name, `scope`) a space-separated string or a list of strings.

Sans-I/O: the key set is built from JWKS JSON the caller got (a file, or a URL fetched by the I/O shell; a
RefreshingKeySet refetches it on a schedule and on key rotation through an injected fetch), and the clock is passed
in. PyJWT (with `cryptography`) checks signatures; time claims are checked here against that clock.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.exceptions import PyJWTError

from dray_broker.auth.errors import AuthenticationFailed

INVALID_TOKEN = json.dumps({"status": "invalid_token"}, separators=(",", ":"))

# RFC 7628 section 3.1 and Kafka's OAuthBearerClientInitialResponse grammar.
_SASLNAME = r"(?:[\x01-\x2B\x2D-\x3C\x3E-\x7F]|=2C|=3D)+"
_KVPAIRS = r"(?:[A-Za-z]+=[\x21-\x7E \t\r\n]+\x01)*"
_CLIENT_RESPONSE = re.compile(rf"[ny],(?:a=(?P<authzid>{_SASLNAME}))?,\x01(?P<kvpairs>{_KVPAIRS})\x01")
_AUTH_VALUE = re.compile(r"(?P<scheme>\w+) +(?P<token>[-_~+/.a-zA-Z0-9]+=*)")

DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
_EC_CURVE_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


class InvalidToken(Exception):
    """The token fails validation; the reason is for the log only (the client sees invalid_token)."""


class InvalidKeySet(ValueError):
    """The JWKS document has no usable signing key."""


@dataclass(frozen=True, slots=True)
class BearerResponse:
    authzid: str
    token: str = field(repr=False)
    extensions: Mapping[str, str]


def parse_client_response(data: bytes) -> BearerResponse:
    """The client's initial response, or AuthenticationFailed if it is not one."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationFailed("OAUTHBEARER response is not UTF-8") from None
    m = _CLIENT_RESPONSE.fullmatch(text)
    if m is None:
        raise AuthenticationFailed("malformed OAUTHBEARER client response")
    pairs = dict(kv.split("=", 1) for kv in m["kvpairs"].split("\x01") if kv)
    auth = pairs.pop("auth", None)
    if auth is None:
        raise AuthenticationFailed("OAUTHBEARER client response without auth")
    a = _AUTH_VALUE.fullmatch(auth)
    if a is None or a["scheme"].lower() != "bearer":
        raise AuthenticationFailed("OAUTHBEARER auth is not 'Bearer <token>'")
    authzid = (m["authzid"] or "").replace("=2C", ",").replace("=3D", "=")
    return BearerResponse(authzid, a["token"], pairs)


@dataclass(frozen=True, slots=True)
class OAuthBearerSettings:
    """Kafka's broker settings for validating tokens (KIP-768)."""

    expected_audiences: frozenset[str] = frozenset()  # sasl.oauthbearer.expected.audience
    expected_issuer: str | None = None  # sasl.oauthbearer.expected.issuer
    clock_skew_s: int = 30  # sasl.oauthbearer.clock.skew.seconds
    scope_claim_name: str = "scope"  # sasl.oauthbearer.scope.claim.name
    sub_claim_name: str = "sub"  # sasl.oauthbearer.sub.claim.name
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    key: Any = field(repr=False)  # a cryptography public key
    algorithms: frozenset[str]  # the JWS algorithms this key may verify


class JsonWebKeySet:
    """The signing keys of a JWKS document (RFC 7517), looked up by `kid`."""

    def __init__(self, keys: Iterable[VerificationKey]):
        self.keys = tuple(keys)
        self._by_kid = {k.kid: k for k in self.keys if k.kid is not None}

    @classmethod
    def from_json(cls, document: bytes | str | Mapping[str, Any]) -> JsonWebKeySet:
        """Keys of a JWKS document; keys for encryption, of unknown types or malformed are skipped."""
        try:
            obj = json.loads(document) if isinstance(document, (bytes, str)) else document
        except ValueError as e:
            raise InvalidKeySet(f"JWKS is not JSON: {e}") from None
        entries = obj.get("keys") if isinstance(obj, Mapping) else None
        if not isinstance(entries, list):
            raise InvalidKeySet("JWKS has no 'keys' array")
        keys = [key for key in map(_verification_key, entries) if key is not None]
        if not keys:
            raise InvalidKeySet("JWKS has no usable signing key")
        return cls(keys)

    def key_for(self, kid: str | None) -> VerificationKey | None:
        """The key for a token's `kid`; for a token without one, the only key of a one-key set."""
        if kid is None:
            return self.keys[0] if len(self.keys) == 1 else None
        return self._by_kid.get(kid)


class RefreshingKeySet:
    """A JWKS kept fresh from the identity provider (Kafka's RefreshingHttpsJwks): `fetch` returns the JWKS document
    (a file read or an HTTPS GET: the caller's I/O, sync or async). It is fetched again every refresh_ms
    (sasl.oauthbearer.jwks.endpoint.refresh.ms, 1 hour), and at once when a token names a kid the set does not have
    (a key rotation), at most every min_refetch_ms. A failed fetch keeps the keys it had; with no keys yet, the login
    fails. `key_for` is the sasl.py key lookup."""

    def __init__(self, fetch: Callable[[], bytes | str | Awaitable[bytes | str]], clock_ms: Callable[[], int],
                 refresh_ms: int = 3_600_000, min_refetch_ms: int = 10_000):
        self._fetch = fetch
        self._clock_ms = clock_ms
        self.refresh_ms = refresh_ms
        self.min_refetch_ms = min_refetch_ms
        self.keys: JsonWebKeySet | None = None
        self._fetched_at_ms = 0  # when the keys were last fetched (read only once there are keys)

    async def key_for(self, kid: str | None) -> VerificationKey | None:
        now = self._clock_ms()
        if self.keys is None or now - self._fetched_at_ms >= self.refresh_ms:
            await self._refresh(now)
        key = self.keys.key_for(kid) if self.keys is not None else None
        if key is None and self.keys is not None and now - self._fetched_at_ms >= self.min_refetch_ms:
            await self._refresh(now)
            key = self.keys.key_for(kid)
        return key

    async def _refresh(self, now: int) -> None:
        try:
            document = self._fetch()
            if inspect.isawaitable(document):
                document = await document
            self.keys = JsonWebKeySet.from_json(document)
        except Exception:  # noqa: BLE001 - keep serving the keys we have; without any, the caller's login fails
            if self.keys is None:
                raise
        finally:
            self._fetched_at_ms = now


def _verification_key(jwk: object) -> VerificationKey | None:
    if not isinstance(jwk, Mapping) or jwk.get("use", "sig") != "sig":
        return None
    kty = jwk.get("kty")
    if kty == "RSA":
        algorithms = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    elif kty == "EC" and jwk.get("crv") in _EC_CURVE_ALGORITHM:
        algorithms = {_EC_CURVE_ALGORITHM[jwk["crv"]]}
    else:
        return None  # symmetric keys never verify a broker login; other types are not supported
    if "alg" in jwk:
        algorithms &= {jwk["alg"]}
    kid = jwk.get("kid")
    if not algorithms or (kid is not None and not isinstance(kid, str)):
        return None
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=min(algorithms)).key
    except (PyJWTError, ValueError, TypeError, KeyError):
        return None
    return VerificationKey(kid, key, frozenset(algorithms))


def token_key_id(token: str) -> str | None:
    """The `kid` of a token's header (unverified), or InvalidToken if the token is not a JWS."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except PyJWTError as e:
        raise InvalidToken(f"not a JWT: {e}") from None
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("kid is not a string")
    return kid


@dataclass(frozen=True, slots=True)
class ValidatedToken:
    principal_name: str
    scopes: frozenset[str]
    expires_at_ms: int
    issued_at_ms: int


def validate_token(token: str, key: VerificationKey | None, settings: OAuthBearerSettings,
                   now_ms: int) -> ValidatedToken:
    """Check a token against the key its `kid` names (None: no such key), at time now_ms."""
    if key is None:
        raise InvalidToken("no key in the JWKS for the token's kid")
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except PyJWTError as e:
        raise InvalidToken(f"not a JWT: {e}") from None
    if alg not in settings.algorithms or alg not in key.algorithms:
        raise InvalidToken(f"algorithm {alg!r} is not allowed for this key")
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=list(settings.expected_audiences) or None,
            issuer=settings.expected_issuer,
            # Time claims are checked below against the injected clock; sub/jti by this module's own rules.
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_sub": False,
                     "verify_jti": False, "verify_aud": bool(settings.expected_audiences),
                     "verify_iss": settings.expected_issuer is not None},
        )
    except PyJWTError as e:
        raise InvalidToken(f"{type(e).__name__}: {e}") from None
    skew_ms = settings.clock_skew_s * 1000
    exp_ms = _time_claim(claims, "exp")
    iat_ms = _time_claim(claims, "iat")
    if now_ms >= exp_ms + skew_ms:
        raise InvalidToken(f"token expired at {exp_ms} ms (now {now_ms} ms)")
    if "nbf" in claims and now_ms + skew_ms < _time_claim(claims, "nbf"):
        raise InvalidToken("token is not valid yet (nbf)")
    subject = claims.get(settings.sub_claim_name)
    if not isinstance(subject, str) or not subject.strip():
        raise InvalidToken(f"claim {settings.sub_claim_name!r} is missing or empty")
    return ValidatedToken(subject.strip(), _scopes(claims.get(settings.scope_claim_name)), exp_ms, iat_ms)


def _time_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"claim {name!r} is missing or not a number")
    return int(value * 1000)


def _scopes(value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(s, str) and s.strip() for s in value):
        return frozenset(s.strip() for s in value)
    raise InvalidToken("scope claim is neither a string nor a list of strings")


class _Stage(enum.Enum):
    INITIAL = 1
    ERROR_SENT = 2
    DONE = 3
    FAILED = 4


class OAuthBearerServer:
    """One OAUTHBEARER login, server side:

        response = server.receive_initial(data)   # parse; the caller then finds the key and validates the token
        reply = server.accept(response, token)    # valid token: b"" (the login is complete)
        reply = server.reject()                   # InvalidToken: the error challenge, then
        server.receive_after_error(data)          # the client's \\x01 answer: the login fails
    """

    def __init__(self) -> None:
        self._stage = _Stage.INITIAL
        self.token: ValidatedToken | None = None
        self.extensions: Mapping[str, str] = {}

    @property
    def complete(self) -> bool:
        return self._stage is _Stage.DONE

    @property
    def expects_initial(self) -> bool:
        return self._stage is _Stage.INITIAL

    def receive_initial(self, data: bytes) -> BearerResponse:
        if self._stage is not _Stage.INITIAL:
            self._stage = _Stage.FAILED
            raise AuthenticationFailed("unexpected OAUTHBEARER message")
        try:
            return parse_client_response(data)
        except AuthenticationFailed:
            self._stage = _Stage.FAILED
            raise

    def accept(self, response: BearerResponse, token: ValidatedToken) -> bytes:
        """The answer to a valid token: empty, unless the authorization id is not the token's principal."""
        if response.authzid and response.authzid != token.principal_name:
            self._stage = _Stage.FAILED
            raise AuthenticationFailed(
                f"authorization id {response.authzid!r} is not the token's principal {token.principal_name!r}",
                f"Authentication failed: Client requested an authorization id ({response.authzid}) that is different "
                f"from the token's principal name ({token.principal_name})")
        self.token = token
        self.extensions = dict(response.extensions)
        self._stage = _Stage.DONE
        return b""

    def reject(self) -> bytes:
        """The RFC 7628 error challenge for an invalid token; the client must answer it with \\x01."""
        self._stage = _Stage.ERROR_SENT
        return INVALID_TOKEN.encode()

    def receive_after_error(self, data: bytes) -> None:
        self._stage = _Stage.FAILED
        reason = "client acknowledged the invalid_token error" if bytes(data) == b"\x01" else \
            "client did not answer the invalid_token error with \\x01"
        raise AuthenticationFailed(reason, INVALID_TOKEN)
