"""Reads compacted offsets back from Parquet: the loader PartitionReader calls for index entries whose location is
a ParquetLocation (DESIGN.md section 5: "Parquet ranges are rebuilt into batches").

The lakehouse pipeline (dray_pipelines) writes one row group per Parquet index entry, each made of whole record
batches as the producers sent them, with the batch fields in columns (dray_broker/lake_schema.py). The loader reads
the file's footer (cached) and that row group only, through the broker's object store when the file is inside it
(the default warehouse is `iceberg/` in the object store) or else through pyarrow's filesystems, and rebuilds v2
record batches with the original offsets, timestamps, keys, values, headers, batch attributes and producer fields.
A consumer reading from offset 0 cannot tell WAL from Parquet. By default each batch is compressed again with the
codec it arrived with.

What a row group inflates to is in the footer: one larger than max_row_group_bytes (the pipeline writes about
8 MiB of records per row group) is refused before any of it is read or decompressed.

Index entry (pq-<end>) extra fields written by the pipeline:
    key     object store key of the file (absent: read `path` through pyarrow.fs)
    rg      row group index
    footer  [start, end) byte range of the Parquet footer
    size    file size in bytes
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import OrderedDict
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dray_broker.fetch.cache import LoadedRange
from dray_broker.index.offsets import IndexEntry, ParquetLocation
from dray_broker.lake_schema import (
    ATTRIBUTES,
    BASE_SEQUENCE,
    BATCH_COLUMNS,
    BATCH_OFFSET,
    HEADER_KEY,
    HEADER_VALUE,
    HEADERS,
    KEY,
    MICROS_PER_MS,
    OFFSET,
    PRODUCER_EPOCH,
    PRODUCER_ID,
    TIMESTAMP,
    VALUE,
)
from dray_broker.objectstore import ObjectStore
from dray_broker.records.batch import TIMESTAMP_TYPE_LOG_APPEND
from dray_broker.records.encode import encode_batch

log = logging.getLogger(__name__)

READ_COLUMNS = list(BATCH_COLUMNS)

ORIGINAL = "original"
GZIP_LEVEL = 1
MAX_ROW_GROUP_BYTES = 256 * 1024 * 1024  # uncompressed
_FOOTER_READ = 64 * 1024
_CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


class CompactedDataError(Exception):
    """A Parquet entry does not hold what the index says."""


def batches_from_table(table: pa.Table, start: int, end: int, codec: int | None = None,
                       gzip_level: int | None = GZIP_LEVEL, *, cleaned: bool = False) -> LoadedRange:
    """Record batches for the rows of table with start <= offset < end (rows in offset order), one batch per
    original batch (rows sharing batch_offset). codec None = each batch's original codec. gzip is written at a
    low level (any level decodes the same; level 6 would make gzip fetches from Parquet several times slower).

    cleaned: the rows are what the cleaner of a compacted topic kept, with holes. The batches still tile [start,
    end): each keeps its original base offset (the first one starts at start) and reaches to the next one's
    (lastOffsetDelta past its last record, as Kafka's cleaner writes them), so that consumers step over the
    holes; a range with no row left is one empty batch."""
    offsets = table.column(OFFSET).to_pylist()
    if cleaned:
        if not offsets or offsets[0] >= end or offsets[-1] < start:
            return _empty_range(start, end)
    elif not offsets or offsets[0] > start or offsets[-1] < end - 1:
        have = f"[{offsets[0]}, {offsets[-1] + 1})" if offsets else "nothing"
        raise CompactedDataError(f"row group holds {have}, the index entry [{start}, {end})")
    timestamps = pc.cast(table.column(TIMESTAMP), pa.int64()).to_pylist()
    keys = table.column(KEY).to_pylist()
    values = table.column(VALUE).to_pylist()
    headers = _headers(table.column(HEADERS))
    attributes = table.column(ATTRIBUTES).to_pylist()
    batch_offsets = table.column(BATCH_OFFSET).to_pylist()
    producer_ids = table.column(PRODUCER_ID).to_pylist()
    producer_epochs = table.column(PRODUCER_EPOCH).to_pylist()
    base_sequences = table.column(BASE_SEQUENCE).to_pylist()

    out = bytearray()
    batch_records: list[int] = []
    batch_sizes: list[int] = []
    n = len(offsets)
    i = 0
    while i < n and offsets[i] < start:
        i += 1
    while i < n and offsets[i] < end:
        j = i + 1
        b = batch_offsets[i]
        while j < n and batch_offsets[j] == b and offsets[j] < end:
            j += 1
        # Where this batch starts and the next one (or the range's end): whole spans, holes included.
        if cleaned:
            first = start if not batch_records else max(b, start)
            following = max(batch_offsets[j], start) if j < n and offsets[j] < end else end
        else:
            # A batch cut by the range (only when an entry starts or ends inside a batch) starts at its first row.
            first = offsets[i]
            following = offsets[j - 1] + 1
        ts = [t // MICROS_PER_MS for t in timestamps[i:j]]
        attrs = attributes[i]
        max_ts = max(ts)
        if attrs & TIMESTAMP_TYPE_LOG_APPEND:
            base_ts = max_ts
            deltas = [0] * (j - i)
        else:
            base_ts = ts[0]
            deltas = [t - base_ts for t in ts]
        records = [(offsets[k] - first, deltas[k - i], keys[k], values[k], headers[k]) for k in range(i, j)]
        seq = base_sequences[i]
        if seq >= 0 and first != b:
            seq += first - b
        batch = encode_batch(
            records, base_offset=first, base_timestamp=base_ts, max_timestamp=max_ts,
            attributes=attrs, producer_id=producer_ids[i], producer_epoch=producer_epochs[i], base_sequence=seq,
            compression=codec, compression_level=gzip_level if (attrs & 7 if codec is None else codec) == 1 else None,
            last_offset_delta=following - first - 1,
        )
        out += batch
        batch_records.append(following - first)
        batch_sizes.append(len(batch))
        i = j
    if sum(batch_records) != end - start:
        raise CompactedDataError(f"rows cover {sum(batch_records)} offsets of [{start}, {end})")
    return LoadedRange(out, tuple(batch_records), tuple(batch_sizes))


def _empty_range(start: int, end: int) -> LoadedRange:
    """[start, end) of a compacted topic whose records the cleaner all removed: one batch without records, which
    consumers step over (its lastOffsetDelta reaches the end)."""
    batch = encode_batch([], base_offset=start, base_timestamp=-1, max_timestamp=-1, last_offset_delta=end - start - 1)
    return LoadedRange(bytearray(batch), (end - start,), (len(batch),))


def _headers(column: pa.ChunkedArray) -> list:
    """Per row, a list of (key, value) header pairs, without building a dict per header."""
    out: list = []
    for chunk in column.chunks:
        offsets = chunk.offsets.to_pylist()
        flat = chunk.values
        hkeys = flat.field(HEADER_KEY).to_pylist()
        hvalues = flat.field(HEADER_VALUE).to_pylist()
        pairs = list(zip(hkeys, hvalues))
        out.extend(pairs[offsets[r]:offsets[r + 1]] if offsets[r + 1] > offsets[r] else () for r in range(len(chunk)))
    return out


class _SparseFile(io.RawIOBase):
    """A read-only file of known size of which only some byte ranges were fetched (footer, one row group)."""

    def __init__(self, size: int):
        self.size = size
        self.ranges: list[tuple[int, bytes]] = []
        self.pos = 0

    def add(self, start: int, data: bytes) -> None:
        self.ranges.append((start, data))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        for start, data in self.ranges:
            if start <= self.pos and self.pos + n <= start + len(data):
                out = data[self.pos - start : self.pos - start + n]
                self.pos += n
                return out
        raise OSError(f"bytes [{self.pos}, {self.pos + n}) were not fetched")

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def row_group_byte_range(metadata: pq.FileMetaData, index: int) -> tuple[int, int]:
    """[start, end) bytes of the file holding row group index (all its column chunks)."""
    rg = metadata.row_group(index)
    lo, hi = None, 0
    for c in range(rg.num_columns):
        col = rg.column(c)
        start = col.data_page_offset
        if col.has_dictionary_page and col.dictionary_page_offset:
            start = min(start, col.dictionary_page_offset)
        lo = start if lo is None else min(lo, start)
        hi = max(hi, start + col.total_compressed_size)
    return lo or 0, hi


class CompactedReader:
    """The broker's RangeLoader for Parquet index entries: `PartitionReader(..., load_compacted=reader.load)`."""

    def __init__(self, objects: ObjectStore, *, codec: str = ORIGINAL, footer_cache: int = 256,
                 max_row_group_bytes: int = MAX_ROW_GROUP_BYTES):
        self.objects = objects
        self.max_row_group_bytes = max_row_group_bytes
        self.codec = None if codec == ORIGINAL else _CODECS[codec]
        self._footers: OrderedDict[str, pq.FileMetaData] = OrderedDict()
        self._footer_cache = footer_cache

    async def load(self, entry: IndexEntry) -> LoadedRange:
        loc = entry.location
        if not isinstance(loc, ParquetLocation):
            raise TypeError(f"{entry.key} is not a Parquet entry")
        extra = loc.extra or {}
        if extra.get("empty"):
            return _empty_range(entry.start, entry.end)  # the cleaner removed every record of the range
        key = extra.get("key")
        if key is None:
            table = await asyncio.to_thread(_read_row_group_fs, loc.path, extra.get("rg", 0), self.max_row_group_bytes)
        else:
            table = await self._read_row_group(loc.path, key, extra)
        return await asyncio.to_thread(batches_from_table, table, entry.start, entry.end, self.codec,
                                       cleaned=bool(extra.get("cleaned")))

    async def _size(self, key: str) -> int:
        info = await self.objects.head(key)
        if info is None:
            raise CompactedDataError(f"compacted file {key} is missing")
        return info.size

    async def _read_row_group(self, path: str, key: str, extra: dict) -> pa.Table:
        size = extra.get("size")
        index = extra.get("rg", 0)
        metadata = self._footers.get(path)
        if metadata is not None:
            self._footers.move_to_end(path)
        else:
            if size is None:
                size = await self._size(key)
            # pyarrow reads the last 64 KiB first, then the rest of a larger footer: fetch both at once.
            lo = max(0, min((extra.get("footer") or (size, size))[0], size - _FOOTER_READ))
            sparse = _SparseFile(size)
            sparse.add(lo, await self.objects.get(key, lo, size))
            metadata = await asyncio.to_thread(pq.read_metadata, pa.PythonFile(sparse, mode="r"))
            self._footers[path] = metadata
            while len(self._footers) > self._footer_cache:
                self._footers.popitem(last=False)
        size = size or await self._size(key)
        _check_row_group_size(path, metadata, index, self.max_row_group_bytes)
        lo, hi = row_group_byte_range(metadata, index)
        sparse = _SparseFile(size)
        sparse.add(lo, await self.objects.get(key, lo, hi))
        return await asyncio.to_thread(_read_sparse, sparse, metadata, index)


def _read_sparse(sparse: _SparseFile, metadata: pq.FileMetaData, index: int) -> pa.Table:
    f = pq.ParquetFile(pa.PythonFile(sparse, mode="r"), metadata=metadata, pre_buffer=False)
    return f.read_row_group(index, columns=READ_COLUMNS)


def _check_row_group_size(path: str, metadata: pq.FileMetaData, index: int, limit: int) -> None:
    if index >= metadata.num_row_groups:
        raise CompactedDataError(f"{path} has {metadata.num_row_groups} row groups, the index entry names #{index}")
    size = metadata.row_group(index).total_byte_size
    if size > limit:
        raise CompactedDataError(f"row group {index} of {path} inflates to {size} bytes, more than {limit}")


def _read_row_group_fs(path: str, index: int, limit: int) -> pa.Table:
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    with fs.open_input_file(inner) as f:
        parquet = pq.ParquetFile(f)
        _check_row_group_size(path, parquet.metadata, index, limit)
        return parquet.read_row_group(index, columns=READ_COLUMNS)

