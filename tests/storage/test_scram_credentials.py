"""SCRAM credentials in the metadata store (dray_broker/auth/credential_store.py), on both backends: what is put is
read back, listed and deleted under the keyspace's keys; a value that is not a credential is ignored, not fatal."""

from __future__ import annotations

import uuid

import pytest

from dray_broker import keyspace
from dray_broker.auth.credential_store import ScramCredentialStore
from dray_broker.auth.credentials import ScramMechanism
from dray_broker.auth.scram import new_credential
from dray_broker.metadata import open_metadata_store

BACKENDS = ["sqlite", pytest.param("oxia", marks=pytest.mark.oxia)]
SHA256, SHA512 = ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512


@pytest.fixture(params=BACKENDS)
def metadata_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path_factory.mktemp('users')}/meta.db"
    return f"oxia://{request.getfixturevalue('oxia_service').address}"


async def test_put_get_list_delete(metadata_url):
    store = await open_metadata_store(metadata_url)
    try:
        users = ScramCredentialStore(store)
        alice, odd = f"alice-{uuid.uuid4().hex[:6]}", f"o/d d=,~{uuid.uuid4().hex[:6]}"
        a256, a512 = new_credential(SHA256, "pw", 4096), new_credential(SHA512, "pw", 8192)
        o512 = new_credential(SHA512, "other", 4096)
        assert await users.get(alice, SHA256) is None
        await users.put(alice, a256)
        await users.put(alice, a512)
        await users.put(odd, o512)
        assert await users.get(alice, SHA256) == a256
        assert await users.get(alice, SHA512) == a512
        assert await users.get(odd, SHA512) == o512 and await users.get(odd, SHA256) is None
        # Under the keyspace's key, as JSON with no password in it.
        entry = await store.get(keyspace.scram_credential_key("SCRAM-SHA-512", odd),
                                partition_key=keyspace.scram_credentials("SCRAM-SHA-512").partition_key)
        assert entry is not None and b"other" not in entry.value
        listed = await users.all()
        assert listed[alice] == [a256, a512] and listed[odd] == [o512]

        assert await users.delete(alice, SHA256) is True
        assert await users.delete(alice, SHA256) is False
        assert await users.get(alice, SHA256) is None and (await users.all())[alice] == [a512]
    finally:
        await store.close()


async def test_an_unreadable_credential_counts_as_none(metadata_url):
    store = await open_metadata_store(metadata_url)
    try:
        users = ScramCredentialStore(store)
        name = f"broken-{uuid.uuid4().hex[:6]}"
        await store.put(keyspace.scram_credential_key("SCRAM-SHA-256", name), b"{not json",
                        partition_key=keyspace.scram_credentials("SCRAM-SHA-256").partition_key)
        assert await users.get(name, SHA256) is None
        assert name not in await users.all()
    finally:
        await store.close()
