"""A topic as one relation: its Iceberg table at a pinned snapshot plus the log above what that snapshot holds.

Compaction commits a range to Iceberg first (the snapshot summary's dray.committed then says, per partition, where
the table ends) and swaps the offset index afterwards, so a pinned snapshot and the log from its committed ends are
disjoint and together hold every offset up to the log end, whatever compaction does meanwhile. The log part is read
the way Fetch reads it (PartitionReader over the offset index: WAL chunks, or Parquet entries rebuilt into batches
if a swap moved the index past the snapshot since), then decoded to Arrow in bulk (RowGroupBuilder, as compaction
does). Offsets below the log start (retention, DeleteRecords) are left out of both parts, as consumers never see
them.

A table belongs to a topic by id (its dray.topic-id property): a table left by a deleted topic of the same name is
not this topic's and is ignored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from dray_broker.fetch.compacted import CompactedReader
from dray_broker.fetch.reader import PartitionReader
from dray_broker.objectstore import ObjectNotFoundError
from dray_broker.records.batch import HEADER_SIZE, read_header
from dray_broker.topics.catalog import Topic
from dray_pipelines.convert import RowGroupBuilder
from dray_pipelines.lake import Lake
from dray_broker.lake_schema import ARROW_SCHEMA, OFFSET
from dray_pipelines.tables import P_TOPIC_ID, snapshot_committed

READ_BYTES = 8 * 1024 * 1024  # bytes of batches per read of the log
ATTEMPTS = 5  # a read raced garbage collection (a WAL object gone after its swap): read again


@dataclass
class TopicSnapshot:
    topic: Topic
    metadata_location: str | None  # the pinned Iceberg metadata file (None: no committed data)
    committed: dict[int, int]  # partition -> offset where the pinned snapshot ends
    log_start: dict[int, int]  # partition -> log start offset
    tail: pa.Table = field(default_factory=ARROW_SCHEMA.empty_table)  # the log from the committed ends on


def topic_table(lake: Lake, topic: Topic) -> Table | None:
    """The topic's Iceberg table as the catalog holds it now, if the table is this topic's (by id)."""
    try:
        table = lake.catalog.load_table((lake.settings.namespace, topic.name))
    except NoSuchTableError:
        return None
    return table if table.properties.get(P_TOPIC_ID) == str(topic.id) else None


async def read_topic(lake: Lake, topic: Topic) -> TopicSnapshot:
    """Pin the topic's table, then read the log above it."""
    for attempt in range(ATTEMPTS):
        table = await asyncio.to_thread(topic_table, lake, topic)
        pinned = table is not None and table.current_snapshot() is not None
        committed = snapshot_committed(table) if pinned else {}
        reader = PartitionReader(lake.objects, lake.index, READ_BYTES,
                                 load_compacted=CompactedReader(lake.objects, codec="none").load)
        try:
            parts = await asyncio.gather(*(partition_tail(reader, topic, p, committed.get(p, 0))
                                           for p in range(topic.partitions)))
        except ObjectNotFoundError:
            if attempt == ATTEMPTS - 1:
                raise
            continue
        log_start = {p: start for p, (start, _) in enumerate(parts)}
        tails = [t for _, t in parts if t.num_rows]
        tail = pa.concat_tables(tails) if tails else ARROW_SCHEMA.empty_table()
        return TopicSnapshot(topic, table.metadata_location if pinned else None, committed, log_start, tail)
    raise AssertionError("unreachable")


async def partition_tail(reader: PartitionReader, topic: Topic, partition: int, committed: int
                          ) -> tuple[int, pa.Table]:
    """(log start, the records from max(committed, log start) to the log end as rows)."""
    ref = topic.partition(partition)
    start = await reader.log_start_offset(ref)
    end = await reader.log_end_offset(ref, fresh=True)
    position = max(committed, start)
    builder = RowGroupBuilder(partition, topic.int_config("max.message.bytes") - HEADER_SIZE)
    chunks: list[pa.Table] = []
    while position < end:
        result = await reader.read(ref, position, READ_BYTES)
        if not result.pieces:
            break
        for piece in result.pieces:
            first = read_header(piece).base_offset
            position = builder.add_batches(piece, first)
        if builder.record_bytes >= READ_BYTES:
            chunks.append(builder.build()[0])
    if len(builder):
        chunks.append(builder.build()[0])
    if not chunks:
        return start, ARROW_SCHEMA.empty_table()
    rows = pa.concat_tables(chunks)
    # The first batch read may begin below the wanted offset (a batch straddling the committed end or the log start).
    low = max(committed, start)
    if rows.num_rows and rows.column(OFFSET)[0].as_py() < low:
        rows = rows.filter(pc.greater_equal(rows.column(OFFSET), low))
    return start, rows


async def read_topics(lake: Lake, names: list[str] | None = None) -> list[TopicSnapshot]:
    """Every topic (or the named ones) as snapshot + tail."""
    topics = [t for t in await lake.topics() if names is None or t.name in names]
    return [await read_topic(lake, t) for t in topics]
