"""The columns of a topic's Iceberg table: the contract between the pipeline that writes the tables
(dray_pipelines/convert.py, tables.py) and the fetch path that rebuilds record batches from them
(dray_broker/fetch/compacted.py). DuckDB users see the same columns.

One row per record, control records included (their offsets exist in the log), in offset order:
    partition       int32        the Kafka partition (the table is partitioned by it)
    offset          int64        the record's offset
    timestamp       timestamp    microseconds UTC, from the record's millisecond timestamp; for a batch with
                                 log-append time, the batch's max timestamp
    key, value      binary       null for a null key or value
    headers         list         (key string, value binary or null) structs, in order, duplicates allowed
The batch a record came in is kept with each of its rows, so that the batch can be rebuilt exactly:
    attributes      int32        the batch attributes: codec (bits 0-2), log-append time (bit 3), transactional (4),
                                 control (5)
    batch_offset    int64        the offset of the batch's first record (rows with the same value are one batch)
    producer_id, producer_epoch, base_sequence      the batch's producer fields (-1 when not idempotent)

Field ids are those pyiceberg assigns on create_table (top level first, then nested); data files are written with
the ids of the table's schema as the catalog holds it. ARROW_SCHEMA is built here with pyarrow only, so the broker
does not import pyiceberg (0.2-0.5 s at start); iceberg_schema() builds the same schema for pyiceberg, and
tests/pipelines check that pyiceberg's conversion of one gives the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pyiceberg.schema import Schema

PARTITION = "partition"
OFFSET = "offset"
TIMESTAMP = "timestamp"
KEY = "key"
VALUE = "value"
HEADERS = "headers"
ATTRIBUTES = "attributes"
BATCH_OFFSET = "batch_offset"
PRODUCER_ID = "producer_id"
PRODUCER_EPOCH = "producer_epoch"
BASE_SEQUENCE = "base_sequence"
HEADER_KEY = "key"
HEADER_VALUE = "value"

# The columns a record batch is rebuilt from (all but the partition, which the reader knows).
BATCH_COLUMNS = (OFFSET, TIMESTAMP, KEY, VALUE, HEADERS, ATTRIBUTES, BATCH_OFFSET, PRODUCER_ID, PRODUCER_EPOCH,
                 BASE_SEQUENCE)

MICROS_PER_MS = 1000  # timestamp column unit per Kafka timestamp unit


@dataclass(frozen=True, slots=True)
class Column:
    field_id: int
    name: str
    kind: str  # the Iceberg type: int, long, timestamptz, binary, string, or list of (key string, value binary)
    required: bool
    doc: str | None = None


HEADER_LIST_ID = 12  # the list's element
HEADER_KEY_ID = 13
HEADER_VALUE_ID = 14

COLUMNS = (
    Column(1, PARTITION, "int", True, "Kafka partition"),
    Column(2, OFFSET, "long", True, "Kafka offset"),
    Column(3, TIMESTAMP, "timestamptz", True, "record timestamp (ms precision)"),
    Column(4, KEY, "binary", False),
    Column(5, VALUE, "binary", False),
    Column(6, HEADERS, "headers", True, "record headers in order (duplicate keys allowed)"),
    Column(7, ATTRIBUTES, "int", True,
           "attributes of the record's batch: codec (bits 0-2), log-append time (bit 3), transactional (4)"),
    Column(8, BATCH_OFFSET, "long", True, "offset of the first record of its batch"),
    Column(9, PRODUCER_ID, "long", True),
    Column(10, PRODUCER_EPOCH, "int", True),
    Column(11, BASE_SEQUENCE, "int", True, "producer sequence of its batch's first record"),
)


def field_id(name: str) -> int:
    return next(c.field_id for c in COLUMNS if c.name == name)


def _arrow_field(name: str, type_: pa.DataType, nullable: bool, fid: int, doc: str | None = None) -> pa.Field:
    metadata = {b"PARQUET:field_id": str(fid).encode()}
    if doc:
        metadata = {b"doc": doc.encode(), **metadata}
    return pa.field(name, type_, nullable=nullable, metadata=metadata)


HEADER_STRUCT = pa.struct([
    _arrow_field(HEADER_KEY, pa.large_string(), False, HEADER_KEY_ID),
    _arrow_field(HEADER_VALUE, pa.large_binary(), True, HEADER_VALUE_ID),
])
_ARROW_TYPES = {
    "int": pa.int32(),
    "long": pa.int64(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "binary": pa.large_binary(),
    "headers": pa.large_list(_arrow_field("element", HEADER_STRUCT, False, HEADER_LIST_ID)),
}
ARROW_SCHEMA = pa.schema([_arrow_field(c.name, _ARROW_TYPES[c.kind], not c.required, c.field_id, c.doc)
                          for c in COLUMNS])


@cache
def iceberg_schema() -> Schema:
    """The table schema for pyiceberg (imported here only: the broker never needs it)."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import (
        BinaryType,
        IntegerType,
        ListType,
        LongType,
        NestedField,
        StringType,
        StructType,
        TimestamptzType,
    )

    headers = ListType(HEADER_LIST_ID, StructType(
        NestedField(HEADER_KEY_ID, HEADER_KEY, StringType(), required=True),
        NestedField(HEADER_VALUE_ID, HEADER_VALUE, BinaryType(), required=False),
    ), element_required=True)
    types = {"int": IntegerType(), "long": LongType(), "timestamptz": TimestamptzType(), "binary": BinaryType(),
             "headers": headers}
    return Schema(*(NestedField(c.field_id, c.name, types[c.kind], required=c.required, doc=c.doc) for c in COLUMNS))
