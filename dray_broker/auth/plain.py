"""SASL PLAIN, server side (RFC 4616), checked against the stored SCRAM credential: there is no password store.

The client sends one message, `[authzid] NUL authcid NUL passwd` (UTF-8). The password is checked by deriving what a
SCRAM credential keeps from it: SaltedPassword = Hi(passwd, salt, iterations) with the credential's salt and count,
then StoredKey = H(HMAC(SaltedPassword, "Client Key")), compared in constant time with the stored one. That costs one
PBKDF2 (a few milliseconds at 4096 iterations), which is why sasl.py can run it off the event loop.

An unknown user is checked against a fake credential with the same work, so the answer time does not tell whether
the user exists. Messages are Kafka's (PlainSaslServer).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from dray_broker.auth.credentials import ScramCredential
from dray_broker.auth.errors import AuthenticationFailed
from dray_broker.auth.scram import salted_password

INVALID_LOGIN = "Authentication failed: Invalid username or password"


@dataclass(frozen=True, slots=True)
class PlainResponse:
    authzid: str
    username: str
    password: str = field(repr=False)


def parse_response(data: bytes) -> PlainResponse:
    """The client's message, split and checked as Kafka's PlainSaslServer does."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationFailed("PLAIN response is not UTF-8") from None
    tokens = text.split("\x00")
    if len(tokens) != 3:
        message = f"Invalid SASL/PLAIN response: expected 3 tokens, got {len(tokens)}"
        raise AuthenticationFailed(message, message)
    authzid, username, password = tokens
    if not username:
        raise AuthenticationFailed("PLAIN login without a user name", "Authentication failed: username not specified")
    if not password:
        raise AuthenticationFailed(f"PLAIN login of {username!r} without a password",
                                   "Authentication failed: password not specified")
    return PlainResponse(authzid, username, password)


def password_matches(password: str, credential: ScramCredential) -> bool:
    """Whether the password is the one the SCRAM credential was made from (one PBKDF2, constant-time compare)."""
    mechanism = credential.mechanism
    salted = salted_password(mechanism, password, credential.salt, credential.iterations)
    stored_key = hashlib.new(mechanism.hash_name, hmac.digest(salted, b"Client Key", mechanism.hash_name)).digest()
    return hmac.compare_digest(stored_key, credential.stored_key)


def check_login(response: PlainResponse, credential: ScramCredential | None, fake: ScramCredential) -> str:
    """The authenticated user name, or AuthenticationFailed. `credential` is None for an unknown user, who is then
    checked against `fake` (same work, certain failure)."""
    matches = password_matches(response.password, credential if credential is not None else fake)
    if credential is None or not matches:
        reason = "unknown user" if credential is None else "wrong password"
        raise AuthenticationFailed(f"PLAIN login of {response.username!r} failed: {reason}", INVALID_LOGIN)
    if response.authzid and response.authzid != response.username:
        raise AuthenticationFailed(
            f"PLAIN login of {response.username!r} asked for authorization id {response.authzid!r}",
            "Authentication failed: Client requested an authorization id that is different from username")
    return response.username
