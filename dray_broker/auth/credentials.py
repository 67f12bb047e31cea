"""SCRAM credentials as Kafka keeps them (RFC 5802 section 3, KIP-554), and their encoding for the metadata store.

A credential is what the server needs to check a SCRAM login without knowing the password: the salt, the iteration
count, StoredKey = H(HMAC(SaltedPassword, "Client Key")) and ServerKey = HMAC(SaltedPassword, "Server Key"). It is the
record Kafka stores per user and mechanism (UserScramCredentialRecord: salt, stored_key, server_key, iterations), so
DescribeUserScramCredentials answers (mechanism, iterations) from it and AlterUserScramCredentials' upsertion
(salt, salted_password, iterations) becomes one (scram.credential_from_salted_password).

Stored as one JSON object with base64 fields. The key it is stored under belongs to the caller (the keyspace module).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from dataclasses import dataclass


class ScramMechanism(enum.Enum):
    """The SCRAM mechanisms Kafka supports, with the type codes of the KIP-554 APIs (0 is UNKNOWN there)."""

    SCRAM_SHA_256 = ("SCRAM-SHA-256", 1, "sha256")
    SCRAM_SHA_512 = ("SCRAM-SHA-512", 2, "sha512")

    def __init__(self, mechanism_name: str, type_code: int, hash_name: str):
        self.mechanism_name = mechanism_name
        self.type_code = type_code
        self.hash_name = hash_name
        self.digest_size = hashlib.new(hash_name).digest_size

    # Kafka's bounds (ScramMechanism.java: 4096 for both; ScramControlManager refuses more than 16384).
    @property
    def min_iterations(self) -> int:
        return 4096

    @property
    def max_iterations(self) -> int:
        return 16384

    @classmethod
    def from_name(cls, name: str) -> ScramMechanism | None:
        return _BY_NAME.get(name)

    @classmethod
    def from_type(cls, type_code: int) -> ScramMechanism | None:
        return _BY_TYPE.get(type_code)


_BY_NAME = {m.mechanism_name: m for m in ScramMechanism}
_BY_TYPE = {m.type_code: m for m in ScramMechanism}


class CredentialFormatError(ValueError):
    """A stored credential that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class ScramCredential:
    mechanism: ScramMechanism
    salt: bytes
    stored_key: bytes
    server_key: bytes
    iterations: int

    def __repr__(self) -> str:  # keys stay out of logs
        return f"ScramCredential({self.mechanism.mechanism_name}, iterations={self.iterations})"

    def encode(self) -> bytes:
        """Stable JSON: sorted keys, no spaces, base64 (standard alphabet, padded) for the byte fields."""
        return json.dumps(
            {
                "mechanism": self.mechanism.mechanism_name,
                "salt": _b64(self.salt),
                "stored_key": _b64(self.stored_key),
                "server_key": _b64(self.server_key),
                "iterations": self.iterations,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> ScramCredential:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise CredentialFormatError(f"credential is not JSON: {e}") from None
        if not isinstance(obj, dict) or set(obj) != {"mechanism", "salt", "stored_key", "server_key", "iterations"}:
            raise CredentialFormatError("credential must be an object with mechanism, salt, stored_key, server_key "
                                        "and iterations")
        mechanism = ScramMechanism.from_name(obj["mechanism"]) if isinstance(obj["mechanism"], str) else None
        if mechanism is None:
            raise CredentialFormatError(f"unknown SCRAM mechanism {obj['mechanism']!r}")
        iterations = obj["iterations"]
        if type(iterations) is not int or iterations <= 0:
            raise CredentialFormatError(f"iterations must be a positive integer, not {iterations!r}")
        salt, stored_key, server_key = (_unb64(obj[k], k) for k in ("salt", "stored_key", "server_key"))
        if not salt:
            raise CredentialFormatError("empty salt")
        for name, key in (("stored_key", stored_key), ("server_key", server_key)):
            if len(key) != mechanism.digest_size:
                raise CredentialFormatError(f"{name} has {len(key)} bytes, {mechanism.mechanism_name} needs "
                                            f"{mechanism.digest_size}")
        return cls(mechanism, salt, stored_key, server_key, iterations)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise CredentialFormatError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CredentialFormatError(f"{name} is not valid base64") from None
