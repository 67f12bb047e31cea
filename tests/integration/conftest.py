"""Brokers for integration tests: one per backend per session (topics are unique per test)."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.brokers import BrokerProcess

BACKENDS = ["embedded", "oxia-s3"]


def _broker_for(backend: str, request, tmp_path_factory) -> BrokerProcess:
    data_dir = tmp_path_factory.mktemp(f"broker-{backend}")
    if backend == "embedded":
        return BrokerProcess(data_dir)
    oxia = request.getfixturevalue("oxia_service")
    s3 = request.getfixturevalue("s3_service")
    namespace = "default"
    return BrokerProcess(data_dir, metadata=f"oxia://{oxia.address}/{namespace}",
                         object_store=s3.url(f"it-{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="session", params=BACKENDS)
def broker(request, tmp_path_factory):
    """A running broker on each backend: embedded (SQLite + local dir) and Oxia + MinIO."""
    b = _broker_for(request.param, request, tmp_path_factory).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory):
    """A running broker with embedded defaults, for tests that need one backend only."""
    b = BrokerProcess(tmp_path_factory.mktemp("broker-embedded-only")).start()
    yield b
    b.stop()


@pytest.fixture
def topic_name(request) -> str:
    return f"t-{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"
