"""The Iceberg side: one table per topic, written with pyiceberg.

Table `<namespace>.<topic>` (location `<warehouse>/<topic>-<topic id>`, so a re-created topic gets a fresh
directory), partitioned by `partition` (identity), sorted by offset. Columns: dray_broker/lake_schema.py, the
contract with dray_broker/fetch/compacted.py, which reads them back into record batches.

Compaction writes each data file itself, at a path named by its offset range, and commits it with a merge-append
whose snapshot summary records the range (dray.partition, dray.start-offset, dray.end-offset) and, cumulatively,
the committed end offset of every partition (dray.committed, JSON). The current snapshot therefore says how far
each partition is committed: a rerun reads it before writing, so a range is never committed twice. Commits do not
retry inside pyiceberg (commit.retry.num-retries=0): a conflicting commit fails and the job step retries from the
start, re-reading the summary.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.io.pyarrow import (
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.typedef import Record

from dray_broker import lake_schema
from dray_broker.config import LakeSettings
from dray_pipelines.iceberg_shim import writer_options

log = logging.getLogger(__name__)

PARTITION_SPEC = PartitionSpec(PartitionField(source_id=lake_schema.field_id(lake_schema.PARTITION), field_id=1000,
                                              transform=IdentityTransform(), name=lake_schema.PARTITION))
SORT_ORDER = SortOrder(SortField(source_id=lake_schema.field_id(lake_schema.OFFSET), transform=IdentityTransform()))

TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    "commit.retry.num-retries": "0",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
}

# Snapshot summary keys.
S_OPERATION = "dray.operation"
S_PARTITION = "dray.partition"
S_START = "dray.start-offset"
S_END = "dray.end-offset"
S_COMMITTED = "dray.committed"
S_TOPIC_ID = "dray.topic-id"
P_TOPIC_ID = "dray.topic-id"
# Parquet footer key: the row groups of a file as [[start, end, wal_bytes, min_ts, max_ts], ...].
F_ROW_GROUPS = b"dray.row_groups"
# Parquet footer key of a file the cleaner of a compacted topic wrote: per range of F_ROW_GROUPS, the Parquet row
# group holding its records, or -1 when the cleaner removed them all (the range has no row group).
F_CLEANED = b"dray.parquet_row_groups"


_catalogs: dict[tuple, Catalog] = {}
_catalogs_lock = threading.Lock()


def open_catalog(settings: LakeSettings) -> Catalog:
    """The catalog for these settings (one per process and settings: opening a SQL catalog costs ~0.2-2 s)."""
    key = (settings.catalog_url, settings.warehouse_url, tuple(sorted(settings.fileio_properties().items())))
    with _catalogs_lock:
        catalog = _catalogs.get(key)
        if catalog is None:
            catalog = _catalogs[key] = _open_catalog(settings)
        return catalog


def _open_catalog(settings: LakeSettings) -> Catalog:
    url = settings.catalog_url
    props = {"warehouse": settings.warehouse_url, **settings.fileio_properties()}
    if url.startswith(("http://", "https://")):
        return load_catalog("dray", type="rest", uri=url, **props)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(("sqlite://", "postgresql+")):
        return load_catalog("dray", type="sql", uri=url, **props)
    raise ValueError(f"unsupported catalog URL {url!r}: use sqlite:///path, postgresql://... or http(s)://...")


def table_location(settings: LakeSettings, topic: str, topic_id) -> str:
    return f"{settings.warehouse_url}/{settings.namespace}/{topic}-{topic_id}"


def purge_topic_table(catalog: Catalog, settings: LakeSettings, topic: str, topic_id) -> bool:
    """Drop the table of a deleted topic with its files, if the table by that name is still that topic's."""
    identifier = (settings.namespace, topic)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        return False
    if table.properties.get(P_TOPIC_ID) != str(topic_id):
        return False
    catalog.purge_table(identifier)
    return True


def snapshot_committed(table: Table) -> dict[int, int]:
    """partition -> committed end offset, as recorded by the table's current snapshot (or its nearest ancestor
    that records it)."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        props = snapshot.summary.additional_properties if snapshot.summary else {}
        if S_COMMITTED in props:
            return {int(k): v for k, v in json.loads(props[S_COMMITTED]).items()}
        if snapshot.parent_snapshot_id is None:
            break
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id)
    return {}


@dataclass(frozen=True)
class RowGroupInfo:
    index: int
    start: int
    end: int
    wal_bytes: int
    min_timestamp: int
    max_timestamp: int


@dataclass(frozen=True)
class LiveFile:
    """A data file of one partition in the current snapshot, with its offset range and row groups."""

    path: str
    start: int
    end: int
    size: int
    record_count: int
    row_groups: tuple[RowGroupInfo, ...]
    footer: tuple[int, int]  # byte range of the Parquet footer


def staged_file_name(partition: int, start: int, end: int) -> str:
    return f"{partition:05d}-{start:020d}-{end:020d}.parquet"


class TopicTable:
    """The Iceberg table of one topic."""

    def __init__(self, catalog: Catalog, settings: LakeSettings, topic_name: str, topic_id: uuid.UUID):
        self.catalog = catalog
        self.settings = settings
        self.topic = topic_name
        self.topic_id = topic_id
        self.identifier = (settings.namespace, topic_name)
        self._table: Table | None = None

    # --- the table --------------------------------------------------------------------------------------------

    def table(self, refresh: bool = False) -> Table:
        if self._table is None:
            self._table = self._load_or_create()
        elif refresh:
            self._table = self.catalog.load_table(self.identifier)
        return self._table

    def _load_or_create(self) -> Table:
        self.catalog.create_namespace_if_not_exists(self.settings.namespace)
        try:
            table = self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            table = None
        if table is not None and table.properties.get(P_TOPIC_ID) not in (None, str(self.topic_id)):
            # The topic was deleted and created again: its old table goes, as its old log did.
            log.warning("table %s belongs to an earlier topic %s; dropping it", self.identifier,
                        table.properties.get(P_TOPIC_ID))
            self.catalog.purge_table(self.identifier)
            table = None
        if table is None:
            location = table_location(self.settings, self.topic, self.topic_id)
            try:
                table = self.catalog.create_table(
                    self.identifier, lake_schema.iceberg_schema(), location=location, partition_spec=PARTITION_SPEC,
                    sort_order=SORT_ORDER, properties={**TABLE_PROPERTIES, P_TOPIC_ID: str(self.topic_id)},
                )
            except TableAlreadyExistsError:
                table = self.catalog.load_table(self.identifier)
        return table

    @property
    def location(self) -> str:
        return self.table().location()

    def data_path(self, partition: int, start: int, end: int) -> str:
        return f"{self.location}/data/partition={partition}/{staged_file_name(partition, start, end)}"

    # --- progress recorded in snapshot summaries --------------------------------------------------------------

    def committed(self, refresh: bool = True) -> dict[int, int]:
        """partition -> committed end offset, from the newest snapshot that records it."""
        return snapshot_committed(self.table(refresh=refresh))

    def committed_end(self, partition: int, refresh: bool = True) -> int:
        return self.committed(refresh).get(partition, 0)

    # --- writing ----------------------------------------------------------------------------------------------

    def open_writer(self, path: str) -> "DataFileWriter":
        return DataFileWriter(self.table(), path)

    def staged_file(self, path: str, start: int, end: int) -> "LiveFile | None":
        """The staged file at path if it is whole and holds exactly [start, end), else None (absent, cut short by
        a crash while writing, or another range: then it is deleted, to be written again)."""
        try:
            info = self.describe_file(path)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - unreadable: a partial write
            info = None
        if info is not None and info.start == start and info.end == end and info.record_count == end - start:
            return info
        log.warning("staged file %s is partial or holds another range: writing it again", path)
        try:
            self.table().io.delete(path)
        except Exception:  # noqa: BLE001
            pass
        return None

    def data_file(self, path: str, partition: int) -> DataFile:
        """The Iceberg DataFile of a written Parquet file (statistics from its footer)."""
        table = self.table()
        input_file = table.io.new_input(path)
        with input_file.open() as f:
            metadata = pq.read_metadata(f)
        stats = data_file_statistics_from_parquet_metadata(
            parquet_metadata=metadata,
            stats_columns=compute_statistics_plan(table.schema(), table.metadata.properties),
            parquet_column_mapping=parquet_path_to_id_mapping(table.schema()),
        )
        return DataFile.from_args(
            content=DataFileContent.DATA, file_path=path, file_format=FileFormat.PARQUET,
            partition=Record(partition), file_size_in_bytes=len(input_file), sort_order_id=None,
            spec_id=table.metadata.default_spec_id, equality_ids=None, key_metadata=None,
            **stats.to_serialized_dict(),
        )

    def commit_range(self, partition: int, expected_committed: int, start: int, end: int, path: str) -> int:
        """Append the data file holding [start, end) of partition in one snapshot whose summary moves the
        partition's committed end from expected_committed to end; return the snapshot id. Raises
        CommitFailedException on a concurrent commit (nothing is committed then), CompactionError-like
        RuntimeError if the committed end is no longer expected_committed."""
        table = self.table(refresh=True)
        committed = self.committed(refresh=False)
        if committed.get(partition, 0) != expected_committed:
            raise RuntimeError(f"{self.topic}-{partition}: committed end is {committed.get(partition, 0)}, "
                               f"not {expected_committed}")
        committed[partition] = end
        props = {
            S_OPERATION: "compaction", S_TOPIC_ID: str(self.topic_id), S_PARTITION: str(partition),
            S_START: str(start), S_END: str(end),
            S_COMMITTED: json.dumps({str(k): v for k, v in sorted(committed.items())}, separators=(",", ":")),
        }
        data_file = self.data_file(path, partition)
        with table.transaction() as tx:
            with tx.update_snapshot(snapshot_properties=props).merge_append() as append:
                append.append_data_file(data_file)
                snapshot_id = append.snapshot_id
        self._table = None
        return snapshot_id

    # --- reading the current snapshot ---------------------------------------------------------------------------

    def live_files(self, partition: int, from_offset: int = 0, to_offset: int | None = None,
                   refresh: bool = True) -> list[LiveFile]:
        """Data files of partition holding offsets in [from_offset, to_offset), in offset order."""
        table = self.table(refresh=refresh)
        if table.current_snapshot() is None:
            return []
        expr = And(EqualTo(lake_schema.PARTITION, partition), GreaterThanOrEqual(lake_schema.OFFSET, from_offset))
        if to_offset is not None:
            expr = And(expr, LessThan(lake_schema.OFFSET, to_offset))
        out = []
        for task in table.scan(row_filter=expr).plan_files():
            out.append(self.describe_file(task.file.file_path, task.file.file_size_in_bytes,
                                          task.file.record_count))
        return sorted(out, key=lambda f: f.start)

    def describe_file(self, path: str, size: int | None = None, record_count: int | None = None) -> LiveFile:
        table = self.table()
        input_file = table.io.new_input(path)
        size = len(input_file) if size is None else size
        with input_file.open() as f:
            f.seek(size - 8)
            tail = f.read(8)
            footer_len = int.from_bytes(tail[:4], "little")
            f.seek(0)
            metadata = pq.read_metadata(f)
        kv = metadata.metadata or {}
        if F_CLEANED in kv:
            groups = tuple(RowGroupInfo(rg, *g) for rg, g in zip(json.loads(kv[F_CLEANED]),
                                                                 json.loads(kv[F_ROW_GROUPS])))
        elif F_ROW_GROUPS in kv:
            groups = tuple(RowGroupInfo(i, *g) for i, g in enumerate(json.loads(kv[F_ROW_GROUPS])))
        else:
            groups = tuple(_row_groups_from_stats(metadata))
        return LiveFile(path, groups[0].start, groups[-1].end, size,
                        metadata.num_rows if record_count is None else record_count, groups,
                        (size - 8 - footer_len, size))

    # --- retention and maintenance ----------------------------------------------------------------------------

    def delete_files(self, partition: int, files: list[LiveFile], new_start: int) -> int | None:
        """Remove whole data files (below the log start) from the table in one snapshot."""
        if not files:
            return None
        table = self.table(refresh=True)
        committed = self.committed(refresh=False)
        wanted = {f.path for f in files}
        props = {S_OPERATION: "retention", S_TOPIC_ID: str(self.topic_id), S_PARTITION: str(partition),
                 S_START: str(new_start),
                 S_COMMITTED: json.dumps({str(k): v for k, v in sorted(committed.items())}, separators=(",", ":"))}
        expr = And(EqualTo(lake_schema.PARTITION, partition), LessThan(lake_schema.OFFSET, new_start))
        doomed = [t.file for t in table.scan(row_filter=expr).plan_files() if t.file.file_path in wanted]
        if not doomed:
            return None
        with table.transaction() as tx:
            with tx.update_snapshot(snapshot_properties=props).overwrite() as overwrite:
                for data_file in doomed:
                    overwrite.delete_data_file(data_file)
        self._table = None
        return self.table().current_snapshot().snapshot_id

    def replace_files(self, partition: int, replaced: dict[str, str | None], properties: dict[str, str]) -> int | None:
        """One snapshot that removes the data files replaced names (old path -> new path) and adds their
        replacements (None: the replacement holds no record and is not added); old files no longer live are left
        out. Return the snapshot id, or None when no old file was live."""
        table = self.table(refresh=True)
        if table.current_snapshot() is None:
            return None
        committed = self.committed(refresh=False)
        live = {t.file.file_path: t.file for t in table.scan(row_filter=EqualTo(lake_schema.PARTITION, partition)).plan_files()}
        doomed = [live[old] for old in replaced if old in live]
        if not doomed:
            return None
        added = [self.data_file(new, partition) for old, new in replaced.items() if old in live and new is not None]
        props = {S_TOPIC_ID: str(self.topic_id), S_PARTITION: str(partition),
                 S_COMMITTED: json.dumps({str(k): v for k, v in sorted(committed.items())}, separators=(",", ":")),
                 **properties}
        with table.transaction() as tx:
            with tx.update_snapshot(snapshot_properties=props).overwrite() as overwrite:
                for data_file in doomed:
                    overwrite.delete_data_file(data_file)
                for data_file in added:
                    overwrite.append_data_file(data_file)
        self._table = None
        return self.table().current_snapshot().snapshot_id

    def set_properties(self, **properties: str) -> None:
        table = self.table(refresh=True)
        if all(table.properties.get(k) == v for k, v in properties.items()):
            return
        with table.transaction() as tx:
            tx.set_properties(**properties)
        self._table = None

    def expire_snapshots(self, older_than_ms: int) -> int:
        """Expire snapshots older than the given age (never the current one); return how many."""
        from datetime import datetime, timezone

        table = self.table(refresh=True)
        cutoff = int(time.time() * 1000) - older_than_ms
        current = table.current_snapshot()
        old = [s for s in table.snapshots() if s.timestamp_ms < cutoff and (current is None or s.snapshot_id != current.snapshot_id)]
        if not old:
            return 0
        table.maintenance.expire_snapshots().older_than(datetime.fromtimestamp(cutoff / 1000, timezone.utc)).commit()
        self._table = None
        return len(old)

    def referenced_files(self) -> set[str]:
        """Every data file live in some snapshot of the table (what must not be deleted). A file a snapshot
        removed (retention) stays needed while an older snapshot that holds it is kept."""
        table = self.table(refresh=True)
        out: set[str] = set()
        seen_manifests: set[str] = set()
        for snapshot in table.snapshots():
            for manifest in snapshot.manifests(table.io):
                if manifest.manifest_path in seen_manifests:
                    continue
                seen_manifests.add(manifest.manifest_path)
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                    out.add(entry.data_file.file_path)
        return out


def _row_groups_from_stats(metadata: pq.FileMetaData) -> Iterator[RowGroupInfo]:
    """Row group ranges from offset statistics (files written by other tools)."""
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    o = names.index(lake_schema.OFFSET)
    t = names.index(lake_schema.TIMESTAMP)
    for i in range(metadata.num_row_groups):
        rg = metadata.row_group(i)
        so, st = rg.column(o).statistics, rg.column(t).statistics
        yield RowGroupInfo(i, so.min, so.max + 1, rg.total_byte_size,
                           _ms(st.min) if st else -1, _ms(st.max) if st else -1)


def _ms(value) -> int:
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    return int(value) // 1000


class DataFileWriter:
    """Writes one Parquet data file row group by row group (each row group is whole record batches), with the
    table's writer settings (zstd), field ids, statistics, and the row groups' offset ranges in the footer."""

    def __init__(self, table: Table, path: str):
        self.path = path
        self._table = table
        self.schema = schema_to_pyarrow(table.schema(), include_field_ids=True)
        self._kwargs = writer_options(table.metadata.properties)
        self._stream = None
        self._writer: pq.ParquetWriter | None = None
        self.row_groups: list[list[int]] = []
        self.rows = 0

    def write_row_group(self, data: pa.Table, start: int, end: int, wal_bytes: int, min_ts: int, max_ts: int) -> None:
        if self._writer is None:
            self._stream = self._table.io.new_output(self.path).create(overwrite=True)
            self._writer = pq.ParquetWriter(self._stream, schema=self.schema, store_decimal_as_integer=True,
                                            write_statistics=True, **self._kwargs)
        data = pa.Table.from_arrays(data.columns, schema=self.schema)  # the table's field ids
        self._writer.write_table(data, row_group_size=max(1, data.num_rows))
        self.row_groups.append([start, end, wal_bytes, min_ts, max_ts])
        self.rows += data.num_rows

    def close(self) -> None:
        if self._writer is None:
            raise ValueError("no row group was written")
        self._writer.add_key_value_metadata({F_ROW_GROUPS.decode(): json.dumps(self.row_groups, separators=(",", ":"))})
        self._writer.close()
        self._stream.close()

    def abort(self) -> None:
        """Give up: close what is open and delete the partial file. (Should the delete fail, the file left holds
        fewer records than its name says, and TopicTable.staged_file writes it again.)"""
        if self._writer is not None:
            _quietly(self._writer.close)
        if self._stream is not None:
            _quietly(self._stream.close)
            _quietly(lambda: self._table.io.delete(self.path))
        self._writer = self._stream = None


class CleanedFileWriter(DataFileWriter):
    """Writes a data file of a compacted topic's cleaned range: one row group per range of the file it replaces
    (so that each index entry keeps its offsets), none for a range the cleaner emptied. A file with no record left
    is still written (no row group; its footer says the ranges)."""

    def __init__(self, table: Table, path: str):
        super().__init__(table, path)
        self.parquet_row_groups: list[int] = []
        self._written = 0

    def write_range(self, data: pa.Table, start: int, end: int, wal_bytes: int, min_ts: int, max_ts: int) -> None:
        if data.num_rows:
            super().write_row_group(data, start, end, wal_bytes, min_ts, max_ts)
            self.parquet_row_groups.append(self._written)
            self._written += 1
        else:
            self.row_groups.append([start, end, 0, min_ts, max_ts])
            self.parquet_row_groups.append(-1)

    def close(self) -> None:
        if self._writer is None:
            self._stream = self._table.io.new_output(self.path).create(overwrite=True)
            self._writer = pq.ParquetWriter(self._stream, schema=self.schema, store_decimal_as_integer=True,
                                            write_statistics=True, **self._kwargs)
        self._writer.add_key_value_metadata({F_CLEANED.decode(): json.dumps(self.parquet_row_groups)})
        super().close()


def _quietly(step) -> None:
    try:
        step()
    except Exception:  # noqa: BLE001 - a broken stream: nothing more to save
        pass
