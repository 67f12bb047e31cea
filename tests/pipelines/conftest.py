"""Fixtures for the lakehouse pipeline tests: pipeline settings on a fresh data dir, one Dagster instance per session
(runs execute in process), and a Runner that evaluates the sensors and executes their runs."""

from __future__ import annotations

import os
import uuid
import warnings

import pytest

from dray_broker.config import LakeSettings
from tests import services

warnings.filterwarnings("ignore", module="dagster")
os.environ.setdefault("DRAY_STEP_RETRY_DELAY_S", "0.05")


def lake_settings(data_dir, **overrides) -> LakeSettings:
    values = {"data_dir": data_dir, "compact_bytes": 1 << 40, "compact_age_ms": 1 << 40, "wal_gc_grace_ms": 0,
              "orphan_ttl_ms": 3_600_000, "row_group_bytes": 4096}
    values.update(overrides)
    return LakeSettings.load(values)


@pytest.fixture
def settings(tmp_path) -> LakeSettings:
    return lake_settings(tmp_path / "data")


@pytest.fixture(params=["embedded", "oxia-s3"])
def backend_settings(request, tmp_path) -> LakeSettings:
    """Pipeline settings on each backend: the embedded stores, or an Oxia server of the test's own (topics are
    named alike across tests) and a fresh prefix of the session's MinIO bucket. The Iceberg catalog is SQLite."""
    if request.param == "embedded":
        return lake_settings(tmp_path / "data")
    request.getfixturevalue("oxia_service")  # the binary is there, and the test counts as an Oxia test
    s3 = request.getfixturevalue("s3_service")
    oxia = services.start_oxia()
    request.addfinalizer(oxia.stop)
    return lake_settings(tmp_path / "data", metadata=f"oxia://{oxia.address}",
                         object_store=s3.url(f"lake-{uuid.uuid4().hex[:8]}"))


@pytest.fixture
def clock():
    """The pipelines' clock: advance(ms) makes a grace period or an age threshold pass without waiting."""
    from dray_pipelines.lake import clock

    yield clock
    clock.offset_ms = 0


@pytest.fixture(scope="session")
def dagster_instance():
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def runner(settings, dagster_instance):
    from dray_pipelines.runner import Runner

    return Runner(settings, instance=dagster_instance)
