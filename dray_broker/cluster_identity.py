"""One cluster id shared by the metadata store and the object store, so that a broker or pipeline never pairs the
stores of two different clusters.

The pairing matters because the stores only make sense together: the offset index (metadata) points into WAL
objects (object store). A fresh metadata store pointed at a bucket that already holds another cluster's WAL would
serve none of that data, and orphan GC would then delete all of it as "written, never indexed".

The metadata store keeps the id at keyspace.CLUSTER_ID (made by the first broker); the object store keeps a copy
in the object MARKER_KEY, written create-only by the first broker that starts on it. Brokers refuse to start on a
mismatch; pipelines refuse to run (and so to collect garbage). A broker whose object store does not answer at
start still starts (reporting not ready on /readyz), with a warning: the check that prevents data loss is the
pipelines', which runs before every garbage collection.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from dray_broker.keyspace import CLUSTER_ID
from dray_broker.metadata import MUST_NOT_EXIST, MetadataStore, VersionMismatchError
from dray_broker.objectstore import ObjectExistsError, ObjectNotFoundError, ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)

MARKER_KEY = "dray-cluster-id"
# How long a starting broker waits for the object store to answer the check.
CHECK_TIMEOUT_S = 5.0


class ClusterMismatchError(Exception):
    """The metadata store and the object store belong to different clusters."""


async def ensure_cluster_identity(metadata: MetadataStore, objects: ObjectStore,
                                  timeout_s: float = CHECK_TIMEOUT_S) -> str:
    """The cluster id (made on first use), after checking the object store's marker (written on first use).
    Raise ClusterMismatchError on a mismatch; only warn if the object store does not answer in timeout_s."""
    try:
        await metadata.put(CLUSTER_ID, str(uuid.uuid4()).encode(), expected_version=MUST_NOT_EXIST)
    except VersionMismatchError:
        pass
    entry = await metadata.get(CLUSTER_ID)
    if entry is None:  # made above or before, and never deleted
        raise RuntimeError(f"{CLUSTER_ID} vanished from the metadata store")
    cluster_id = entry.value.decode()
    try:
        await asyncio.wait_for(_mark(objects, cluster_id), timeout_s)
    except (ObjectStoreError, asyncio.TimeoutError) as e:
        log.warning("cannot check which cluster the object store belongs to (%s); starting anyway: pipelines "
                    "check it before collecting any garbage", str(e) or f"no answer in {timeout_s:.0f} s")
    return cluster_id


async def _mark(objects: ObjectStore, cluster_id: str) -> None:
    marker = await _marker(objects)
    if marker is None:
        try:
            await objects.put(MARKER_KEY, cluster_id.encode(), create_only=True)
        except ObjectExistsError:  # another broker of some cluster got there first
            pass
        marker = await _marker(objects)
    _check(cluster_id, marker)


async def check_cluster_identity(metadata: MetadataStore, objects: ObjectStore) -> None:
    """For pipelines: refuse a mismatch, and an object store of a cluster paired with a metadata store of none;
    change nothing (an object store no broker has used yet has no marker, and nothing to collect)."""
    marker = await _marker(objects)
    if marker is not None:
        entry = await metadata.get(CLUSTER_ID)
        _check(entry.value.decode() if entry is not None else None, marker)


async def check_object_store_alone(objects: ObjectStore) -> None:
    """For a metadata store of no cluster: raise ClusterMismatchError if the object store belongs to one."""
    marker = await _marker(objects)
    if marker is not None:
        _check(None, marker)


async def cluster_id(metadata: MetadataStore) -> str | None:
    """The cluster id, or None when no broker ever started on this metadata store (there is no Dray data)."""
    entry = await metadata.get(CLUSTER_ID)
    return entry.value.decode() if entry is not None else None


async def _marker(objects: ObjectStore) -> str | None:
    try:
        return (await objects.get(MARKER_KEY)).decode()
    except ObjectNotFoundError:
        return None


def _check(cluster_id: str | None, marker: str | None) -> None:
    if marker != cluster_id:
        raise ClusterMismatchError(
            f"the object store belongs to cluster {marker} but the metadata store to "
            f"{'cluster ' + cluster_id if cluster_id else 'no cluster'}: "
            f"use the metadata store and object store of one cluster (the object store's {MARKER_KEY} object "
            f"names its cluster)")
