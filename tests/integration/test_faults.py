"""Short rows of the fault matrix (bench/faults.py), on both backends: a broker whose metadata session expires
heals by itself, and a broker whose object store cannot be written answers produces with retriable errors, acks
nothing it could not store, and serves again once the store is back. Each row runs a real cluster (one broker,
2 s session timeout), a streaming producer, a probe producer with retries=0 and a KIP-848 consumer group, and
checks afterwards that every acknowledged record is at its offset with its bytes."""

from __future__ import annotations

import pytest

from bench.faults import run_row

BACKENDS = ["embedded", "oxia-s3"]


def _services(request, backend: str) -> None:
    if backend == "oxia-s3":  # the rows start servers of their own; these fixtures make sure the binaries exist
        request.getfixturevalue("oxia_service")
        request.getfixturevalue("s3_service")


def _healed(out) -> None:
    assert out.lost == [], f"acknowledged records lost: {out.lost[:20]}"
    assert not out.not_retriable, f"producers got errors that are not retriable: {out.probe_errors}"
    assert out.ready_after_s is not None, "the broker did not report ready again"
    assert out.group_ok, f"the consumer group did not work again: {out.group_detail}"


@pytest.mark.parametrize("backend,fault", [("embedded", "metadata-stall"), ("oxia-s3", "metadata-stall"),
                                           ("embedded", "broker-stall")])
def test_session_expiry_heals(request, tmp_path, backend, fault):
    """The store (SQLite's write lock held by another process; the Oxia server SIGSTOPped) or the broker
    (SIGSTOPped) stalls for twice the session timeout: the session expires, and without a restart the broker gets
    a new one, registers again, reports ready, and the consumer group it coordinated reads every acknowledged record
    and commits through it."""
    _services(request, backend)
    out = run_row(backend, fault, brokers=1, session_timeout_ms=2000, rate=100, workdir=tmp_path)
    _healed(out)
    assert out.generation is not None and out.generation >= 2, "the session was not lost and renewed"
    if fault == "metadata-stall":
        assert 503 in out.readyz_during, f"/readyz answered {out.readyz_during} while the session was gone"


@pytest.mark.parametrize("backend", BACKENDS)
def test_object_store_unwritable(request, tmp_path, backend):
    """The objects directory is made read-only (embedded) or MinIO is killed and restarted (oxia-s3): produces get
    retriable errors, nothing is acked during the fault, and afterwards produce and the group work again with no
    acknowledged record lost."""
    _services(request, backend)
    out = run_row(backend, "objects-unwritable", brokers=1, session_timeout_ms=2000, rate=100, workdir=tmp_path)
    _healed(out)
    assert out.probe_errors, "the probe producer got no error during the fault"
    if backend == "embedded":
        assert "KAFKA_STORAGE_ERROR" in out.probe_errors, out.probe_errors
    assert out.acked_during == 0, f"{out.acked_during} records acked while the object store could not be written"
