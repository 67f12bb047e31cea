"""SCRAM-SHA-256 and SCRAM-SHA-512, server side (RFC 5802, RFC 7677), as Kafka's clients speak it, and the credential
derivation Kafka uses.

The exchange, one message each way twice:
    client-first  "n,[a=authzid],n=<user>,r=<client nonce>[,tokenauth=true]"   (gs2 header "n,," : no channel binding)
    server-first  "r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>"
    client-final  "c=biws,r=<nonce>,p=<base64 ClientProof>"                        ("biws" is base64 of "n,,")
    server-final  "v=<base64 ServerSignature>"
The server checks the proof with the stored credential alone: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)
and H(ClientKey) must equal StoredKey (constant-time compare).

Kafka specifics followed here: the password is hashed as its UTF-8 bytes (Kafka does not apply SASLprep); an
authorization id, if sent, must equal the user name; credentials with fewer than 4096 iterations are refused at login;
the `tokenauth` extension asks for a delegation-token login, which Dray does not have, so it is refused. A failure
carries the RFC's server-error value (`e=invalid-proof`, ...) for the log; on the wire Kafka answers
SASL_AUTHENTICATION_FAILED without a server-final message, and so does sasl.py.

No user enumeration: for an unknown user the server answers a server-first built from a fake credential derived from
a server secret and the user name (the same salt on every attempt, like a real user's) and fails at the proof check
after the same work as a wrong password.

The `scramp` library was considered and not used: it applies SASLprep to user names and passwords (Kafka does not, so
credentials made by Kafka's admin client for some passwords would not match), does not expose the client's extensions
(needed to refuse `tokenauth`), refuses any authorization id, and calls a synchronous credential lookup in the middle
of parsing, where the metadata store is asynchronous. The exchange itself is a few HMACs with hashlib/hmac.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from typing import NoReturn

from dray_broker.auth.credentials import ScramCredential, ScramMechanism
from dray_broker.auth.errors import AuthenticationFailed

DEFAULT_ITERATIONS = 4096
TOKEN_AUTH_EXTENSION = "tokenauth"

# RFC 5802 section 7 grammar, with Kafka's extension names (several letters, e.g. "tokenauth").
_SASLNAME = r"(?:[^\x00,=]|=2C|=3D)+"  # value-safe-char or an escaped ',' / '=' (UTF-8 allowed)
_PRINTABLE = r"[\x21-\x2B\x2D-\x7E]+"  # printable ASCII except ','
_EXTENSIONS = r"(?:,[A-Za-z]+=[^\x00,]+)*"
_BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
_CLIENT_FIRST = re.compile(
    rf"(?P<gs2>(?P<flag>[ny]),(?:a=(?P<authzid>{_SASLNAME}))?,)"
    rf"(?P<bare>n=(?P<saslname>{_SASLNAME}),r=(?P<nonce>{_PRINTABLE})(?P<extensions>{_EXTENSIONS}))"
)
_MANDATORY_EXTENSION = re.compile(r"[ny],[^,]*,m=")  # reserved-mext: RFC 5802 says the login must fail
_CLIENT_FINAL = re.compile(
    rf"(?P<without_proof>c=(?P<cbind>{_BASE64}),r=(?P<nonce>{_PRINTABLE}){_EXTENSIONS}),p=(?P<proof>{_BASE64})"
)


class ServerError(enum.StrEnum):
    """RFC 5802 server-error-value: what a server-final `e=` would say."""

    INVALID_ENCODING = "invalid-encoding"
    EXTENSIONS_NOT_SUPPORTED = "extensions-not-supported"
    INVALID_PROOF = "invalid-proof"
    CHANNEL_BINDINGS_DONT_MATCH = "channel-bindings-dont-match"
    SERVER_DOES_SUPPORT_CHANNEL_BINDING = "server-does-support-channel-binding"
    OTHER_ERROR = "other-error"


class ScramError(AuthenticationFailed):
    def __init__(self, reason: str, server_error: ServerError, client_message: str | None = None):
        super().__init__(reason, client_message)
        self.server_error = server_error

    @property
    def server_final(self) -> bytes:
        """The RFC's failure message, `e=<server-error-value>`."""
        return b"e=" + self.server_error.encode()


# ---------------------------------------------------------------------------------------------------------------
# Credentials


def salted_password(mechanism: ScramMechanism, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802: PBKDF2-HMAC over the password's UTF-8 bytes, as Kafka's ScramFormatter."""
    return hashlib.pbkdf2_hmac(mechanism.hash_name, password.encode("utf-8"), salt, iterations)


def credential_from_salted_password(mechanism: ScramMechanism, salt: bytes, salted: bytes,
                                    iterations: int) -> ScramCredential:
    """The stored credential for a salted password: what AlterUserScramCredentials' upsertion (KIP-554) sends."""
    client_key = hmac.digest(salted, b"Client Key", mechanism.hash_name)
    return ScramCredential(
        mechanism=mechanism,
        salt=salt,
        stored_key=hashlib.new(mechanism.hash_name, client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", mechanism.hash_name),
        iterations=iterations,
    )


def new_credential(mechanism: ScramMechanism, password: str, iterations: int = DEFAULT_ITERATIONS,
                   salt: bytes | None = None) -> ScramCredential:
    """A credential for a password, with a fresh random salt unless one is given."""
    check_iterations(mechanism, iterations)
    salt = secrets.token_bytes(32) if salt is None else salt
    return credential_from_salted_password(mechanism, salt, salted_password(mechanism, password, salt, iterations),
                                           iterations)


class UnacceptableCredential(ValueError):
    """An upsertion Kafka refuses with UNACCEPTABLE_CREDENTIAL (93)."""


def check_iterations(mechanism: ScramMechanism, iterations: int) -> None:
    """Kafka's bounds for a new credential (ScramControlManager.validateUpsertion), with its messages."""
    if iterations < mechanism.min_iterations:
        raise UnacceptableCredential("Too few iterations")
    if iterations > mechanism.max_iterations:
        raise UnacceptableCredential("Too many iterations")


def credential_from_upsertion(mechanism: ScramMechanism, salt: bytes, salted: bytes,
                              iterations: int) -> ScramCredential:
    """An AlterUserScramCredentials upsertion, validated as Kafka does (plus: salt and salted password non-empty)."""
    check_iterations(mechanism, iterations)
    if not salt or not salted:
        raise UnacceptableCredential("Salt and salted password must not be empty")
    return credential_from_salted_password(mechanism, salt, salted, iterations)


def fake_credential(mechanism: ScramMechanism, username: str, secret: bytes,
                    iterations: int = DEFAULT_ITERATIONS) -> ScramCredential:
    """A credential for a user who does not exist: stable for a given secret and name, useless without the secret."""

    def derive(label: bytes) -> bytes:
        return hmac.digest(secret, label + b"\x00" + mechanism.mechanism_name.encode() + b"\x00" + username.encode(),
                           mechanism.hash_name)

    return ScramCredential(mechanism, derive(b"salt")[:32], derive(b"stored"), derive(b"server"), iterations)


# ---------------------------------------------------------------------------------------------------------------
# The exchange


class _Stage(enum.Enum):
    CLIENT_FIRST = 1
    CREDENTIAL = 2
    CLIENT_FINAL = 3
    DONE = 4
    FAILED = 5


class ScramServer:
    """One SCRAM login, server side, in three calls:

        user = server.receive_client_first(data)     # then look the credential up (maybe asynchronously)
        reply = server.server_first(credential)      # None for an unknown user: a fake one is used
        reply = server.receive_client_final(data)    # raises ScramError unless the proof is right

    After a ScramError the exchange is over; any further call raises ScramError too.
    """

    def __init__(self, mechanism: ScramMechanism, fake_secret: bytes, *, fake_iterations: int = DEFAULT_ITERATIONS,
                 server_nonce: str | None = None):
        self.mechanism = mechanism
        self._fake_secret = fake_secret
        self._fake_iterations = fake_iterations
        self._server_nonce = server_nonce if server_nonce is not None else secrets.token_urlsafe(24)
        self._stage = _Stage.CLIENT_FIRST
        self.username: str | None = None
        self._gs2_header = ""
        self._client_nonce = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._credential: ScramCredential | None = None
        self._known_user = False

    @property
    def complete(self) -> bool:
        return self._stage is _Stage.DONE

    def receive_client_first(self, data: bytes) -> str:
        """Parse the client-first message; returns the user name whose credential the caller must look up."""
        self._expect(_Stage.CLIENT_FIRST)
        text = self._decode(data)
        if text.startswith("p="):
            self._fail("client asked for channel binding", ServerError.SERVER_DOES_SUPPORT_CHANNEL_BINDING)
        m = _CLIENT_FIRST.fullmatch(text)
        if m is None:
            if _MANDATORY_EXTENSION.match(text):
                self._fail("mandatory extension (m=) in client-first", ServerError.EXTENSIONS_NOT_SUPPORTED)
            self._fail("malformed client-first message", ServerError.OTHER_ERROR)
        username = _unescape(m["saslname"])
        extensions = dict(kv[1:].split("=", 1) for kv in re.findall(r",[^,]+", m["extensions"]))
        if extensions.get(TOKEN_AUTH_EXTENSION, "").lower() == "true":
            self._fail(f"delegation token login refused for {username!r}: delegation tokens are not supported",
                       ServerError.EXTENSIONS_NOT_SUPPORTED)
        if m["authzid"] is not None and _unescape(m["authzid"]) != username:
            self._fail(f"authorization id {_unescape(m['authzid'])!r} is not the user {username!r}",
                       ServerError.OTHER_ERROR,
                       "Authentication failed: Client requested an authorization id that is different from username")
        self.username = username
        self._gs2_header = m["gs2"]
        self._client_nonce = m["nonce"]
        self._client_first_bare = m["bare"]
        self._stage = _Stage.CREDENTIAL
        return username

    def server_first(self, credential: ScramCredential | None) -> bytes:
        """The server-first message for the user's credential (None: the user does not exist)."""
        self._expect(_Stage.CREDENTIAL)
        assert self.username is not None
        if credential is not None and credential.mechanism is not self.mechanism:
            raise ValueError(f"a {credential.mechanism.mechanism_name} credential for a "
                             f"{self.mechanism.mechanism_name} login")
        self._known_user = credential is not None
        if credential is None:
            credential = fake_credential(self.mechanism, self.username, self._fake_secret, self._fake_iterations)
        elif credential.iterations < self.mechanism.min_iterations:
            self._fail(f"credential of {self.username!r} has {credential.iterations} iterations, fewer than "
                       f"{self.mechanism.min_iterations}", ServerError.OTHER_ERROR)
        self._credential = credential
        self._server_first = (f"r={self._client_nonce}{self._server_nonce},"
                              f"s={base64.b64encode(credential.salt).decode()},i={credential.iterations}")
        self._stage = _Stage.CLIENT_FINAL
        return self._server_first.encode()

    def receive_client_final(self, data: bytes) -> bytes:
        """Check the client's proof; returns the server-final message (the server's signature)."""
        self._expect(_Stage.CLIENT_FINAL)
        credential = self._credential
        assert credential is not None
        text = self._decode(data)
        m = _CLIENT_FINAL.fullmatch(text)
        if m is None:
            self._fail("malformed client-final message", ServerError.OTHER_ERROR)
        # Kafka's check (ScramSaslServer): the nonce must end with the server-first nonce. librdkafka 2.0.x sends its
        # client nonce twice ("r=<client nonce><client nonce><server nonce>"; kcat 1.7.1 on Debian does), and Kafka
        # accepts it; the proof covers the message as sent either way.
        if not m["nonce"].endswith(self._client_nonce + self._server_nonce):
            self._fail("client-final nonce does not end with the server-first nonce", ServerError.OTHER_ERROR)
        cbind, proof = base64.b64decode(m["cbind"]), base64.b64decode(m["proof"])
        if base64.b64encode(cbind).decode() != m["cbind"] or base64.b64encode(proof).decode() != m["proof"]:
            self._fail("non-canonical base64 in client-final", ServerError.OTHER_ERROR)  # unused bits set
        if cbind != self._gs2_header.encode():
            self._fail("channel binding does not match the gs2 header", ServerError.CHANNEL_BINDINGS_DONT_MATCH)
        auth_message = f"{self._client_first_bare},{self._server_first},{m['without_proof']}".encode()
        hash_name = self.mechanism.hash_name
        client_signature = hmac.digest(credential.stored_key, auth_message, hash_name)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature)) if len(proof) == len(client_signature) \
            else client_signature  # a proof of the wrong length fails below after the same work
        proof_ok = hmac.compare_digest(hashlib.new(hash_name, client_key).digest(), credential.stored_key)
        if not (proof_ok and self._known_user and len(proof) == len(client_signature)):
            self._fail(f"invalid proof for {self.username!r}" if self._known_user else
                       f"unknown user {self.username!r}", ServerError.INVALID_PROOF)
        server_signature = hmac.digest(credential.server_key, auth_message, hash_name)
        self._credential = None
        self._stage = _Stage.DONE
        return b"v=" + base64.b64encode(server_signature)

    def _expect(self, stage: _Stage) -> None:
        if self._stage is not stage:
            self._fail(f"unexpected SCRAM message in stage {self._stage.name}", ServerError.OTHER_ERROR)

    def _decode(self, data: bytes) -> str:
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            self._fail("SCRAM message is not UTF-8", ServerError.INVALID_ENCODING)

    def _fail(self, reason: str, server_error: ServerError, client_message: str | None = None) -> NoReturn:
        self._stage = _Stage.FAILED
        self._credential = None
        raise ScramError(reason, server_error, client_message)


def _unescape(saslname: str) -> str:
    return saslname.replace("=2C", ",").replace("=3D", "=")
