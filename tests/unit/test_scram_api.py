"""DescribeUserScramCredentials and AlterUserScramCredentials (auth/scram_api.py) over an SQLite metadata store:
Kafka's answers for duplicates, empty names, unknown mechanisms, bad iteration counts and missing credentials; a
user's changes apply all or none; what is stored logs in."""

from __future__ import annotations

from kio.schema.alter_user_scram_credentials.v0 import request as alter
from kio.schema.describe_user_scram_credentials.v0 import request as describe
from kio.schema.errors import ErrorCode

from dray_broker.auth.credential_store import ScramCredentialStore
from dray_broker.auth.credentials import ScramMechanism
from dray_broker.auth.plain import password_matches
from dray_broker.auth.scram import salted_password
from dray_broker.auth.scram_api import handle_alter_user_scram_credentials, handle_describe_user_scram_credentials
from dray_broker.metadata import open_metadata_store
from dray_broker.protocol.codec import Request
from dray_broker.server.handling import RequestContext
from dray_broker.server.services import UserService

CTX = RequestContext("unit", "/127.0.0.1")
SHA256, SHA512 = ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512


def upsert(name: str, mechanism: ScramMechanism | int, password: str = "pw", iterations: int = 4096,
           salt: bytes = b"salt-salt-salt"):
    m = mechanism if isinstance(mechanism, ScramMechanism) else SHA256
    code = mechanism.type_code if isinstance(mechanism, ScramMechanism) else mechanism
    return alter.ScramCredentialUpsertion(name=name, mechanism=code, iterations=iterations, salt=salt,
                                          salted_password=salted_password(m, password, salt, max(iterations, 1)))


def delete(name: str, mechanism: ScramMechanism | int):
    code = mechanism.type_code if isinstance(mechanism, ScramMechanism) else mechanism
    return alter.ScramCredentialDeletion(name=name, mechanism=code)


async def call_alter(users, deletions=(), upsertions=()):
    body = alter.AlterUserScramCredentialsRequest(deletions=tuple(deletions), upsertions=tuple(upsertions))
    response = await handle_alter_user_scram_credentials(users, CTX, Request(51, 0, 1, "unit", body))
    return {r.user: (r.error_code, r.error_message) for r in response.body.results}


async def call_describe(users, names):
    body = describe.DescribeUserScramCredentialsRequest(
        users=None if names is None else tuple(describe.UserName(name=n) for n in names))
    response = await handle_describe_user_scram_credentials(users, CTX, Request(50, 0, 1, "unit", body))
    assert response.body.error_code == ErrorCode.none
    return {r.user: (r.error_code, {(i.mechanism, i.iterations) for i in r.credential_infos})
            for r in response.body.results}


async def test_alter_and_describe_as_kafka_answers(tmp_path):
    store = await open_metadata_store(f"sqlite://{tmp_path}/meta.db")
    try:
        users = UserService(ScramCredentialStore(store))
        assert await call_alter(users, upsertions=[upsert("alice", SHA256), upsert("alice", SHA512, iterations=8192),
                                                   upsert("bob", SHA512)]) == {
            "alice": (ErrorCode.none, None), "bob": (ErrorCode.none, None)}
        credential = await users.credentials.get("alice", SHA512)
        assert credential is not None and password_matches("pw", credential) and credential.iterations == 8192

        assert await call_describe(users, None) == {"alice": (ErrorCode.none, {(1, 4096), (2, 8192)}),
                                                    "bob": (ErrorCode.none, {(2, 4096)})}
        described = await call_describe(users, ["bob", "carol", "alice", "alice"])
        assert described["bob"] == (ErrorCode.none, {(2, 4096)})
        assert described["carol"] == (ErrorCode.resource_not_found, set())
        assert described["alice"] == (ErrorCode.duplicate_resource, set())

        results = await call_alter(users, deletions=[delete("bob", SHA256), delete("alice", SHA512),
                                                     delete("dave", 7)],
                                   upsertions=[upsert("", SHA256), upsert("erin", SHA256, iterations=100),
                                               upsert("frank", SHA512, iterations=20000),
                                               upsert("alice", SHA512), upsert("gina", 9)])
        assert results["bob"][0] == ErrorCode.resource_not_found
        assert results["alice"] == (ErrorCode.duplicate_resource,
                                    "A user credential cannot be altered twice in the same request")
        assert results["dave"] == (ErrorCode.unsupported_sasl_mechanism, "Unknown SCRAM mechanism")
        assert results[""] == (ErrorCode.unacceptable_credential, "Username must not be empty")
        assert results["erin"] == (ErrorCode.unacceptable_credential, "Too few iterations")
        assert results["frank"] == (ErrorCode.unacceptable_credential, "Too many iterations")
        assert results["gina"][0] == ErrorCode.unsupported_sasl_mechanism
        # Nothing of a refused user changed.
        assert await users.credentials.get("alice", SHA512) == credential

        # All or none per user: bob's upsertion does not happen when his deletion is refused.
        results = await call_alter(users, deletions=[delete("bob", SHA256)], upsertions=[upsert("bob", SHA512, "new")])
        assert results["bob"][0] == ErrorCode.resource_not_found
        assert password_matches("pw", await users.credentials.get("bob", SHA512))
        assert await call_alter(users, deletions=[delete("bob", SHA512)]) == {"bob": (ErrorCode.none, None)}
        assert "bob" not in await call_describe(users, None)
    finally:
        await store.close()
