"""The pyiceberg internal dray_pipelines/iceberg_shim.py borrows, checked against the pinned pyiceberg: an upgrade
that moves or changes it fails here, by name, instead of in a compaction run."""

import pyarrow as pa
import pyarrow.parquet as pq

from dray_pipelines.iceberg_shim import writer_options
from dray_pipelines.tables import TABLE_PROPERTIES

TABLE = pa.table({"offset": pa.array(range(1000), pa.int64()), "value": pa.array([b"v" * 100] * 1000)})


def test_writer_options_follow_the_table_properties():
    options = writer_options(TABLE_PROPERTIES)
    assert options["compression"] == "zstd"
    assert set(options) == {"compression", "compression_level", "data_page_size", "dictionary_pagesize_limit",
                            "write_batch_size"}
    assert writer_options({"write.parquet.compression-codec": "uncompressed"})["compression"] == "none"
    assert writer_options({**TABLE_PROPERTIES, "write.parquet.compression-level": "7"})["compression_level"] == 7
    assert writer_options({"write.parquet.page-size-bytes": "65536"})["data_page_size"] == 65536


def test_pyarrow_writes_a_file_with_them(tmp_path):
    path = tmp_path / "whole.parquet"
    with pq.ParquetWriter(path, TABLE.schema, **writer_options(TABLE_PROPERTIES)) as writer:
        writer.write_table(TABLE, row_group_size=400)
    metadata = pq.read_metadata(path)
    assert (metadata.num_rows, metadata.num_row_groups) == (1000, 3)
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_table(path).equals(TABLE)
