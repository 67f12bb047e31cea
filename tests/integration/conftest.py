"""Brokers for integration tests: one per backend per session (topics are unique per test)."""

from __future__ import annotations

import uuid

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
