"""Record batches (as in WAL chunks) -> Arrow tables in the topic table's schema (dray_broker/lake_schema.py), one row
per record.

Every batch becomes rows, control batches included (their offsets exist in the log; `attributes & 32` marks
them), so that a Parquet range holds every offset it claims and can be rebuilt into the same batches.
Decompression goes through dray_broker.records.decode (all codecs, xerial snappy too), bounded by max_inflated (the
topic's max.message.bytes, which the produce path enforced): a batch that inflates beyond it raises RecordsTooLarge
before its records are held. The record walk here appends straight to column lists, which is the hot loop of
compaction.
"""

from __future__ import annotations

import pyarrow as pa

from dray_broker.records.batch import HEADER_SIZE, TIMESTAMP_TYPE_LOG_APPEND, read_header
from dray_broker.records.decode import DEFAULT_MAX_INFLATED, RecordDecodeError, decompress
from dray_broker.records.decode import read_varint as _varint
from dray_broker import lake_schema as S

_TYPES = {f.name: f.type for f in S.ARROW_SCHEMA}
_HEADER_KEY = S.HEADER_STRUCT.field(S.HEADER_KEY)
_HEADER_VALUE = S.HEADER_STRUCT.field(S.HEADER_VALUE)


class RowGroupBuilder:
    """Accumulates whole record batches of one partition; build() makes one Arrow table (one row group)."""

    def __init__(self, partition: int, max_inflated: int = DEFAULT_MAX_INFLATED):
        self.partition = partition
        self.max_inflated = max_inflated  # bytes a batch's records may inflate to
        self._reset()

    def _reset(self) -> None:
        self.offsets: list[int] = []
        self.timestamps: list[int] = []
        self.keys: list = []
        self.values: list = []
        self.header_offsets: list[int] = [0]
        self.header_keys: list[str] = []
        self.header_values: list = []
        self.attributes: list[int] = []
        self.batch_offsets: list[int] = []
        self.producer_ids: list[int] = []
        self.producer_epochs: list[int] = []
        self.base_sequences: list[int] = []
        self.record_bytes = 0  # key + value + header bytes: the row group size estimate
        self.wal_bytes = 0  # bytes of the batches as stored in the WAL
        self.start: int | None = None
        self.end: int | None = None
        self.min_ts: int | None = None
        self.max_ts: int | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def add_batches(self, data, base_offset: int) -> int:
        """Add every batch of data (whole v2 batches), the first at base_offset; return the next offset."""
        view = memoryview(data)
        pos = 0
        total = len(view)
        offset = base_offset
        while pos < total:
            if total - pos < HEADER_SIZE:
                raise RecordDecodeError(f"truncated record batch at byte {pos}")
            h = read_header(view, pos)
            size = h.size
            if h.magic != 2 or pos + size > total:
                raise RecordDecodeError(f"bad record batch at byte {pos}")
            raw = decompress(h.compression, view[pos + HEADER_SIZE : pos + size], self.max_inflated)
            self._add_records(raw, h, offset)
            self.wal_bytes += size
            pos += size
            offset += h.record_count
        return offset

    def _add_records(self, buf: bytes, h, base_offset: int) -> None:
        # The hot loop of compaction: one-byte varints (most lengths, deltas and counts) are decoded inline.
        count = h.record_count
        append_time = h.max_timestamp if h.attributes & TIMESTAMP_TYPE_LOG_APPEND else None
        base_ts = h.base_timestamp
        offsets, timestamps, keys, values = self.offsets, self.timestamps, self.keys, self.values
        hoff, hkeys, hvals = self.header_offsets, self.header_keys, self.header_values
        first_row = len(timestamps)
        varint = _varint
        size = len(buf)
        pos = 0
        nbytes = 0
        try:
            for _ in range(count):
                b = buf[pos]
                if b < 0x80:
                    length = (b >> 1) ^ -(b & 1)
                    pos += 1
                else:
                    length, pos = varint(buf, pos)
                end = pos + length
                if length < 0 or end > size:
                    raise RecordDecodeError("record length runs past the records")
                b = buf[pos + 1]  # after the record attributes (unused in v2)
                if b < 0x80:
                    ts_delta = (b >> 1) ^ -(b & 1)
                    pos += 2
                else:
                    ts_delta, pos = varint(buf, pos + 1)
                b = buf[pos]
                if b < 0x80:
                    offset_delta = (b >> 1) ^ -(b & 1)
                    pos += 1
                else:
                    offset_delta, pos = varint(buf, pos)
                b = buf[pos]
                if b < 0x80:
                    n = (b >> 1) ^ -(b & 1)
                    pos += 1
                else:
                    n, pos = varint(buf, pos)
                if n < 0:
                    keys.append(None)
                else:
                    keys.append(buf[pos : pos + n])
                    pos += n
                    nbytes += n
                b = buf[pos]
                if b < 0x80:
                    n = (b >> 1) ^ -(b & 1)
                    pos += 1
                else:
                    n, pos = varint(buf, pos)
                if n < 0:
                    values.append(None)
                else:
                    values.append(buf[pos : pos + n])
                    pos += n
                    nbytes += n
                b = buf[pos]
                if b == 0:
                    pos += 1
                else:
                    nh, pos = varint(buf, pos)
                    for _h in range(nh):
                        n, pos = varint(buf, pos)
                        if n < 0:
                            raise RecordDecodeError("record header with a null key")
                        hkeys.append(buf[pos : pos + n].decode("utf-8", "replace"))
                        pos += n
                        nbytes += n
                        n, pos = varint(buf, pos)
                        if n < 0:
                            hvals.append(None)
                        else:
                            hvals.append(buf[pos : pos + n])
                            pos += n
                            nbytes += n
                if pos != end:
                    raise RecordDecodeError("record length does not match its fields")
                offsets.append(base_offset + offset_delta)
                timestamps.append(base_ts + ts_delta)
                hoff.append(len(hkeys))
        except IndexError:
            raise RecordDecodeError("records are truncated") from None
        if pos != size:
            raise RecordDecodeError(f"{size - pos} bytes after the last of {count} records")
        if append_time is not None:
            timestamps[first_row:] = [append_time] * count
        if count:
            batch_ts = timestamps[first_row:]
            min_ts, max_ts = min(batch_ts), max(batch_ts)
            self.min_ts = min_ts if self.min_ts is None else min(self.min_ts, min_ts)
            self.max_ts = max_ts if self.max_ts is None else max(self.max_ts, max_ts)
        self.attributes.extend([h.attributes] * count)
        self.batch_offsets.extend([base_offset] * count)
        self.producer_ids.extend([h.producer_id] * count)
        self.producer_epochs.extend([h.producer_epoch] * count)
        self.base_sequences.extend([h.base_sequence] * count)
        self.record_bytes += nbytes + 24 * count
        if self.start is None:
            self.start = base_offset
        self.end = base_offset + h.last_offset_delta + 1

    def build(self) -> tuple[pa.Table, dict]:
        """The rows as a table in the topic schema, and the row group's summary; then start afresh."""
        n = len(self.offsets)
        headers = pa.LargeListArray.from_arrays(
            pa.array(self.header_offsets, pa.int64()),
            pa.StructArray.from_arrays(
                [pa.array(self.header_keys, _HEADER_KEY.type), pa.array(self.header_values, _HEADER_VALUE.type)],
                fields=[_HEADER_KEY, _HEADER_VALUE],
            ),
            type=_TYPES[S.HEADERS],
        )
        columns = {
            S.PARTITION: [self.partition] * n,
            S.OFFSET: self.offsets,
            S.TIMESTAMP: [t * S.MICROS_PER_MS for t in self.timestamps],
            S.KEY: self.keys,
            S.VALUE: self.values,
            S.ATTRIBUTES: self.attributes,
            S.BATCH_OFFSET: self.batch_offsets,
            S.PRODUCER_ID: self.producer_ids,
            S.PRODUCER_EPOCH: self.producer_epochs,
            S.BASE_SEQUENCE: self.base_sequences,
        }
        arrays = [headers if f.name == S.HEADERS else pa.array(columns[f.name], f.type) for f in S.ARROW_SCHEMA]
        table = pa.Table.from_arrays(arrays, schema=S.ARROW_SCHEMA)
        info = {"start": self.start, "end": self.end, "wal_bytes": self.wal_bytes,
                "min_ts": self.min_ts if self.min_ts is not None else -1,
                "max_ts": self.max_ts if self.max_ts is not None else -1, "rows": n}
        self._reset()
        return table, info
