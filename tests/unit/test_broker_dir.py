"""The broker's data directory: its lock and the broker id it keeps (meta.properties), on a real file system and
a real (SQLite) metadata store allocating ids."""

from __future__ import annotations

import os

import pytest

from dray_broker.metadata import open_metadata_store
from dray_broker.routing.registry import allocate_broker_id
from dray_broker.server.broker_dir import BrokerDir, BrokerIdMismatch, DataDirInUse, broker_id_of


async def test_the_id_is_allocated_once_kept_and_checked(tmp_path, caplog):
    store = await open_metadata_store(f"sqlite://{tmp_path}/meta.db")
    try:
        def allocate():
            return allocate_broker_id(store)

        d = BrokerDir(tmp_path / "data")
        d.path.mkdir()
        assert await broker_id_of(d, None, "cluster-a", allocate) == (1, False)  # new: nothing to wait for
        assert await broker_id_of(d, None, "cluster-a", allocate) == (1, True)  # kept
        assert (d.path / "meta.properties").read_text().splitlines()[1:] == [
            "version=1", "cluster.id=cluster-a", "broker.id=1"]
        assert not list(d.path.glob("*.tmp"))
        assert await broker_id_of(d, 1, "cluster-a", allocate) == (1, True)
        with pytest.raises(BrokerIdMismatch, match="--broker-id 5 does not match broker id 1 kept in"):
            await broker_id_of(d, 5, "cluster-a", allocate)

        # The file of another cluster: its id means nothing here; a new one is allocated and kept.
        assert await broker_id_of(d, None, "cluster-b", allocate) == (2, False)
        assert "belongs to broker 1 of cluster cluster-a, not of this cluster (cluster-b)" in caplog.text
        assert "cluster.id=cluster-b" in (d.path / "meta.properties").read_text()
        assert await broker_id_of(d, 7, "cluster-c", allocate) == (7, True)  # configured, nothing stored for c
        assert await broker_id_of(d, None, "cluster-c", allocate) == (7, True)
    finally:
        await store.close()


def test_one_holder_at_a_time(tmp_path):
    first, second = BrokerDir(tmp_path / "data"), BrokerDir(tmp_path / "data")
    assert first.holder() is None  # never used
    first.lock("127.0.0.1:9092")
    assert second.holder() == {"pid": os.getpid(), "listen": "127.0.0.1:9092"}
    with pytest.raises(DataDirInUse, match=f"in use by a Dray broker \\(pid {os.getpid()}, listening on "
                                           "127.0.0.1:9092\\)"):
        second.lock("127.0.0.1:9093")
    first.unlock()
    assert second.holder() is None
    second.lock("127.0.0.1:9093")
    second.unlock()
