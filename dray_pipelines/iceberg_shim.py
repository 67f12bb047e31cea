"""The one place the pipelines reach into pyiceberg's private API.

tables.DataFileWriter writes a data file row group by row group, with the row groups' offset ranges in the footer;
pyiceberg's public writers write whole files and cannot add that key. It uses pyarrow's ParquetWriter directly, with
the options pyiceberg's own writer derives from the table's write.parquet.* properties (codec, level, page sizes):

    writer_options(table_properties)  pyiceberg.io.pyarrow._get_parquet_writer_kwargs

tests/unit/test_iceberg_shim.py checks it against the pinned pyiceberg and fails loudly when an upgrade moves or
changes it.
"""

from __future__ import annotations

from typing import Any, Mapping

from pyiceberg.io.pyarrow import _get_parquet_writer_kwargs


def writer_options(table_properties: Mapping[str, str]) -> dict[str, Any]:
    """pyarrow.parquet.ParquetWriter keyword arguments for a table with these properties."""
    return _get_parquet_writer_kwargs(dict(table_properties))
