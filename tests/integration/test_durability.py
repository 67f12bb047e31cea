"""The kill -9 durability checker (bench/durability.py) in short form: two brokers on one store, idempotent and
plain confluent-kafka producers, a broker killed -9 and restarted a few times; then every acknowledged record
must be at its offset with the same bytes, with no duplicate from an idempotent producer and no fatal error."""

from __future__ import annotations

import uuid

import pytest

from bench.durability import Config, run
from tests import services
from tests.integration.conftest import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill9_loses_no_acknowledged_record(request, backend, tmp_path):
    config = Config(cycles=4, brokers=2, partitions=2, idempotent_producers=2, plain_producers=1, rate=150,
                    value_size=200, min_interval_s=0.5, max_interval_s=1.5, session_timeout_ms=2000, seed=1)
    oxia = None
    if backend != "embedded":
        request.getfixturevalue("oxia_service")  # the binary is there (or the test is reported as not run)
        oxia = services.start_oxia()  # a namespace of its own: no other test's brokers in this cluster
        config.oxia = oxia.address
        config.s3 = request.getfixturevalue("s3_service").url(f"durability-{uuid.uuid4().hex[:8]}")
    try:
        result = run(config, tmp_path)
    finally:
        if oxia is not None:
            oxia.stop()
    print(result.summary())
    r = result.report
    assert result.cycles == 4 and r.acked > 1000 and "brokers killed -9 and restarted: 4" in result.faults
    assert (r.lost, r.duplicates, r.out_of_order, r.gaps) == (0, 0, 0, 0), r.examples
    assert result.fatal == 0
    assert result.never_retrieved == 0
    assert result.crashes == []
