"""Brokers for integration tests: one per backend per session (topics are unique per test)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from tests import services
from tests.integration.brokers import BrokerProcess

BACKENDS = ["embedded", "oxia-s3"]


def _broker_for(backend: str, request, tmp_path_factory, oxia_address: str | None = None) -> BrokerProcess:
    """A broker process (not started) on a backend; oxia-s3 uses the session's Oxia unless given another."""
    data_dir = tmp_path_factory.mktemp(f"broker-{backend}")
    if backend == "embedded":
        return BrokerProcess(data_dir)
    oxia = request.getfixturevalue("oxia_service")
    s3 = request.getfixturevalue("s3_service")
    return BrokerProcess(data_dir, metadata=f"oxia://{oxia_address or oxia.address}",
                         object_store=s3.url(f"it-{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="session", params=BACKENDS)
def broker(request, tmp_path_factory):
    """A running broker on each backend: embedded (SQLite + local dir) and Oxia + MinIO.

    The Oxia one gets an Oxia server of its own: brokers registered in one Oxia namespace form one cluster, and
    tests that start and kill brokers on the shared `oxia_service` must not see this long-lived one (nor it them)."""
    own_oxia = None
    if request.param != "embedded":
        request.getfixturevalue("oxia_service")  # the binary is there (or the test is reported as not run)
        own_oxia = services.start_oxia()
    b = _broker_for(request.param, request, tmp_path_factory, own_oxia.address if own_oxia else None).start()
    yield b
    b.stop()
    if own_oxia is not None:
        own_oxia.stop()


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory):
    """A running broker with embedded defaults, for tests that need one backend only."""
    b = BrokerProcess(tmp_path_factory.mktemp("broker-embedded-only")).start()
    yield b
    b.stop()


@pytest.fixture
def topic_name(request) -> str:
    return f"t-{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class ClusterStores:
    """The metadata store and object store that the brokers of one test's cluster share."""

    backend: str
    metadata: str
    object_store: str

    def args(self) -> list[str]:
        return [f"--metadata={self.metadata}", f"--object-store={self.object_store}"]


@pytest.fixture(params=BACKENDS)
def cluster_stores(request, tmp_path):
    """Stores for a cluster of brokers that a test starts and kills itself, on each backend: an SQLite file and a
    directory, or an Oxia server of the test's own (brokers registered in one Oxia namespace form one cluster) and
    a fresh prefix of the session's MinIO bucket."""
    if request.param == "embedded":
        yield ClusterStores("embedded", f"sqlite://{tmp_path}/meta.db", f"file://{tmp_path}/objects")
        return
    request.getfixturevalue("oxia_service")  # the binary is there, and the test counts as an Oxia test
    s3 = request.getfixturevalue("s3_service")
    oxia = services.start_oxia()
    try:
        yield ClusterStores("oxia-s3", f"oxia://{oxia.address}", s3.url(f"cluster-{uuid.uuid4().hex[:8]}"))
    finally:
        oxia.stop()
