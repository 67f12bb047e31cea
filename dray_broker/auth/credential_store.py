"""SCRAM credentials in the metadata store: one key per user and mechanism, holding the credential (salt, stored key,
server key, iterations: credentials.py), never a password.

Every broker reads a user's credential from the store at each login (one get: logins are rare next to requests), so
a user created or deleted through any broker, or by `dray users bootstrap` before any broker ran, counts at the next
login everywhere. AlterUserScramCredentials and `dray users` write here. Keys: keyspace.scram_credential_key.
"""

from __future__ import annotations

import logging

from dray_broker import keyspace
from dray_broker.auth.credentials import CredentialFormatError, ScramCredential, ScramMechanism
from dray_broker.metadata import MetadataStore

log = logging.getLogger(__name__)


class ScramCredentialStore:
    """The users' SCRAM credentials, read and written in the metadata store."""

    def __init__(self, metadata: MetadataStore):
        self.metadata = metadata

    async def get(self, user: str, mechanism: ScramMechanism) -> ScramCredential | None:
        """The user's credential for the mechanism, or None. A stored value that cannot be read counts as none
        (logged): the login fails, the broker keeps serving."""
        directory = keyspace.scram_credentials(mechanism.mechanism_name)
        entry = await self.metadata.get(keyspace.scram_credential_key(mechanism.mechanism_name, user),
                                        partition_key=directory.partition_key)
        if entry is None:
            return None
        return _decode(entry.key, entry.value, mechanism)

    async def put(self, user: str, credential: ScramCredential) -> None:
        name = credential.mechanism.mechanism_name
        await self.metadata.put(keyspace.scram_credential_key(name, user), credential.encode(),
                                partition_key=keyspace.scram_credentials(name).partition_key)

    async def delete(self, user: str, mechanism: ScramMechanism) -> bool:
        """Delete the user's credential for the mechanism; whether there was one."""
        name = mechanism.mechanism_name
        return await self.metadata.delete(keyspace.scram_credential_key(name, user),
                                          partition_key=keyspace.scram_credentials(name).partition_key)

    async def all(self) -> dict[str, list[ScramCredential]]:
        """Every user with a credential, with their credentials (one per mechanism), users sorted by name."""
        users: dict[str, list[ScramCredential]] = {}
        for mechanism in ScramMechanism:
            directory = keyspace.scram_credentials(mechanism.mechanism_name)
            for entry in await self.metadata.range_scan(directory.prefix, directory.end,
                                                        partition_key=directory.partition_key):
                parsed = keyspace.parse_scram_credential_key(entry.key)
                credential = _decode(entry.key, entry.value, mechanism) if parsed is not None else None
                if parsed is not None and credential is not None:
                    users.setdefault(parsed[1], []).append(credential)
        return dict(sorted(users.items()))


def _decode(key: str, value: bytes, mechanism: ScramMechanism) -> ScramCredential | None:
    try:
        credential = ScramCredential.decode(value)
    except CredentialFormatError as e:
        log.error("ignoring the unreadable SCRAM credential at %s: %s", key, e)
        return None
    if credential.mechanism is not mechanism:
        log.error("ignoring the SCRAM credential at %s: it is for %s", key, credential.mechanism.mechanism_name)
        return None
    return credential
