"""The log as the pipeline sees it: the broker's metadata store (topics, offset index) and object store (WAL
objects, and by default the Iceberg warehouse), plus the Iceberg catalog. Open one with `async with open_lake(s)`.

Pipeline state kept in the metadata store, next to the index (keys per partition, from dray_broker/keyspace.py):
    boundaries   JSON {"dead": [[offset, first_seen_ms], ...], "start": [...], "trimmed": [...]}: when the dead
        boundary (max of compacted watermark and log start: no reader needs the WAL below it), the log start offset,
        and the offset below which the Iceberg table dropped its whole data files (retention's trim, also after a
        DeleteRecords moved the log start) first reached each value. WAL entries and objects below the dead boundary
        are deleted only a grace period after that; Parquet index entries below the log start too, and only once the
        table is trimmed there (until then they say which files to drop).
    cleaner      JSON {"passes": [[clean_end, at_ms], ...], "tombstones_due_ms": t}: the cleaner of a compacted topic
        (dray_pipelines/cleaning.py): the passes that finished (each cleaned the log below clean_end as of at_ms),
        and when the oldest tombstone left may be removed (null: none left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import urlparse

from ulid import ULID

from dray_broker import keyspace
from dray_broker.cluster_identity import check_cluster_identity, check_object_store_alone, cluster_id
from dray_broker.config import LakeSettings
from dray_broker.index.offsets import IndexEntry, OffsetIndex, PartitionRef
from dray_broker.metadata import MetadataStore, VersionMismatchError, open_metadata_store
from dray_broker.objectstore import ObjectStore, open_object_store
from dray_broker.topics.catalog import Topic, TopicCatalog
from dray_pipelines.tables import TopicTable, open_catalog

_HISTORY = 64


class Clock:
    """Wall-clock milliseconds: every "now" of the pipelines (thresholds, grace periods, TTLs, the boundary history)
    comes from here, so that a test moves time forward with advance() instead of sleeping through a period."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def advance(self, ms: int) -> None:
        self.offset_ms += ms


clock = Clock()


def now_ms() -> int:
    return clock.now_ms()


def partition_key(topic: str, partition: int) -> str:
    """The Dagster partition key of a topic-partition (Kafka's own spelling)."""
    return f"{topic}-{partition}"


def split_partition_key(key: str) -> tuple[str, int]:
    topic, _, p = key.rpartition("-")
    if not topic or not p.isdigit():
        raise ValueError(f"{key!r} is not a <topic>-<partition> key")
    return topic, int(p)


def wal_object_ms(object_key: str) -> int | None:
    """When a WAL object was written, from its ULID name."""
    try:
        return ULID.from_str(object_key.rsplit("/", 1)[-1]).milliseconds
    except (ValueError, TypeError):
        return None


@dataclass
class PartitionState:
    """Where one partition's log stands."""

    topic: Topic
    partition: int
    log_start: int
    log_end: int
    watermark: int
    watermark_version: int
    uncompacted: list[IndexEntry]  # WAL entries at or above the watermark, in offset order
    cum_bytes_at_watermark: int
    cum_bytes_at_end: int

    @property
    def ref(self) -> PartitionRef:
        return self.topic.partition(self.partition)

    @property
    def key(self) -> str:
        return partition_key(self.topic.name, self.partition)

    @property
    def uncompacted_bytes(self) -> int:
        return self.cum_bytes_at_end - self.cum_bytes_at_watermark

    @property
    def uncompacted_records(self) -> int:
        return self.log_end - max(self.watermark, self.log_start)

    def oldest_uncompacted_ms(self) -> int | None:
        for e in self.uncompacted:
            if e.end > self.log_start:
                ms = wal_object_ms(e.location.object_key)
                if ms is not None:
                    return ms
        return None


class Lake:
    def __init__(self, settings: LakeSettings, store: MetadataStore, objects: ObjectStore):
        self.settings = settings
        self.store = store
        self.objects = objects
        self.index = OffsetIndex(store)
        self.topic_catalog = TopicCatalog(store)  # read afresh on every call here (no watch, no cache)
        self._catalog = None
        self._tables: dict[str, TopicTable] = {}

    @property
    def catalog(self):
        if self._catalog is None:
            self._catalog = open_catalog(self.settings)
        return self._catalog

    def table(self, topic: Topic) -> TopicTable:
        t = self._tables.get(topic.name)
        if t is None or t.topic_id != topic.id:
            t = self._tables[topic.name] = TopicTable(self.catalog, self.settings, topic.name, topic.id)
        return t

    # --- topics -----------------------------------------------------------------------------------------------

    async def topics(self) -> list[Topic]:
        return await self.topic_catalog.read_all()

    async def topic(self, name: str) -> Topic | None:
        return await self.topic_catalog.refresh(name)

    async def partitions(self) -> list[tuple[Topic, int]]:
        return [(t, p) for t in await self.topics() for p in range(t.partitions)]

    # --- partition state --------------------------------------------------------------------------------------

    async def state(self, topic: Topic, partition: int) -> PartitionState:
        ref = topic.partition(partition)
        watermark, version = await self.index.compacted_watermark(ref)
        log_start = await self.index.log_start_offset(ref)
        wal = await self.index.wal_after(ref, watermark)
        return PartitionState(topic, partition, log_start, max(wal.log_end, watermark), watermark, version,
                              wal.entries, wal.bytes_at, wal.bytes_at_end)

    # --- boundaries: when did WAL data, and the log start, move past an offset --------------------------------

    @staticmethod
    def _boundary_key(ref: PartitionRef) -> str:
        return keyspace.lake_boundaries_key(ref.topic_id, ref.partition)

    async def boundaries(self, ref: PartitionRef) -> tuple[dict[str, list[list[int]]], int]:
        """({"dead": [[offset, first_seen_ms], ...], "start": [...], "trimmed": [...]}, version). dead: the WAL
        below offset is needed by no reader (max of compacted watermark and log start); start: the log start
        offset; trimmed: the table's whole data files below offset are dropped."""
        e = await self.store.get(self._boundary_key(ref), partition_key=ref.partition_key)
        doc = json.loads(e.value) if e else {}
        return ({"dead": doc.get("dead", []), "start": doc.get("start", []), "trimmed": doc.get("trimmed", [])},
                (e.version if e else -1))

    async def note_boundaries(self, ref: PartitionRef, *, dead: int | None = None, start: int | None = None,
                              trimmed: int | None = None, at_ms: int | None = None) -> dict[str, list[list[int]]]:
        """Record when each boundary first reached its value (no-op for values seen before)."""
        at_ms = now_ms() if at_ms is None else at_ms
        while True:
            doc, version = await self.boundaries(ref)
            changed = False
            for name, value in (("dead", dead), ("start", start), ("trimmed", trimmed)):
                history = doc[name]
                if value is None or (history and history[-1][0] >= value):
                    continue
                doc[name] = (history + [[value, at_ms]])[-_HISTORY:]
                changed = True
            if not changed:
                return doc
            try:
                await self.store.put(self._boundary_key(ref), json.dumps(doc).encode(), expected_version=version,
                                     partition_key=ref.partition_key)
                return doc
            except VersionMismatchError:
                continue

    # --- the cleaner of compacted topics -----------------------------------------------------------------------

    @staticmethod
    def _cleaner_key(ref: PartitionRef) -> str:
        return keyspace.lake_cleaner_key(ref.topic_id, ref.partition)

    async def cleaner(self, ref: PartitionRef) -> dict:
        """{"passes": [[clean_end, at_ms], ...], "tombstones_due_ms": int | None}."""
        e = await self.store.get(self._cleaner_key(ref), partition_key=ref.partition_key)
        doc = json.loads(e.value) if e else {}
        return {"passes": doc.get("passes", []), "tombstones_due_ms": doc.get("tombstones_due_ms")}

    async def note_cleaned(self, ref: PartitionRef, end: int, at_ms: int, tombstones_due_ms: int | None) -> None:
        """Record a finished pass (no-op if it is recorded already)."""
        key = self._cleaner_key(ref)
        while True:
            e = await self.store.get(key, partition_key=ref.partition_key)
            doc = json.loads(e.value) if e else {"passes": []}
            if [end, at_ms] in doc["passes"]:
                return
            doc["passes"] = (doc["passes"] + [[end, at_ms]])[-_HISTORY:]
            doc["tombstones_due_ms"] = tombstones_due_ms
            try:
                await self.store.put(key, json.dumps(doc).encode(), expected_version=e.version if e else -1,
                                     partition_key=ref.partition_key)
                return
            except VersionMismatchError:
                continue

    async def forget_partition(self, ref: PartitionRef) -> None:
        """Delete the pipeline's keys of a partition of a deleted topic."""
        d = keyspace.lake_dir(ref.topic_id, ref.partition)
        await self.store.delete_range(d.prefix, d.end, partition_key=d.partition_key)

    @staticmethod
    def expired(history: list[list[int]], grace_ms: int, at_ms: int | None = None) -> int:
        """The highest boundary value reached at least grace_ms ago (0 if none)."""
        at_ms = now_ms() if at_ms is None else at_ms
        return max((value for value, seen in history if seen + grace_ms <= at_ms), default=0)


class NoDrayData(Exception):
    """The settings point at stores no Dray broker ever used (one line, saying where it looked)."""


def where_looked(settings: LakeSettings) -> str:
    """Where the settings say the stores are, and which setting said so."""
    if settings.metadata is not None:
        return f"metadata store {settings.metadata} (--metadata / DRAY_METADATA)"
    return (f"{settings.metadata_url.removeprefix('sqlite://')} (data dir {settings.data_dir}: --data-dir, "
            f"DRAY_DATA_DIR, --config or --metadata)")


async def _open_metadata_store(settings: LakeSettings) -> MetadataStore:
    url = urlparse(settings.metadata_url)
    if url.scheme == "sqlite" and not Path(url.path).exists():  # opening it would create it (and its directory)
        raise NoDrayData(f"no Dray data at {where_looked(settings)}")
    return await open_metadata_store(settings.metadata_url)


@contextlib.asynccontextmanager
async def open_lake(settings: LakeSettings) -> AsyncIterator[Lake]:
    """The stores as the broker finds them (the same settings). Raise NoDrayData, creating nothing, when no broker
    ever used them (ClusterMismatchError when the object store is another cluster's)."""
    try:
        store = await _open_metadata_store(settings)
    except NoDrayData:
        await _object_store_alone(settings)
        raise
    objects = None
    try:
        if await cluster_id(store) is None:
            await _object_store_alone(settings)
            raise NoDrayData(f"no Dray data at {where_looked(settings)}: no broker has started on it")
        objects = open_object_store(settings.object_store_url)
        await check_cluster_identity(store, objects)  # before any GC could take another cluster's WAL for orphans
        yield Lake(settings, store, objects)
    finally:
        if objects is not None:
            await objects.close()
        await store.close()


async def _object_store_alone(settings: LakeSettings) -> None:
    """With no cluster in the metadata store: an object store that belongs to one is a mismatch, not "no data"."""
    url = urlparse(settings.object_store_url)
    if url.scheme == "file" and not Path(url.path).exists():  # opening it would create it
        return
    objects = open_object_store(settings.object_store_url)
    try:
        await check_object_store_alone(objects)
    finally:
        await objects.close()


def check_dray_data(settings: LakeSettings) -> None:
    """Raise NoDrayData (or ClusterMismatchError) unless the settings point at a Dray cluster's stores."""

    async def check() -> None:
        async with open_lake(settings):
            pass

    asyncio.run(check())


def topic_from_id(topics: list[Topic], topic_id: uuid.UUID) -> Topic | None:
    return next((t for t in topics if t.id == topic_id), None)
