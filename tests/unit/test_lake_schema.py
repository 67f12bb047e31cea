"""The topic table's columns have one definition: the Arrow schema the pipeline writes and the fetch path reads is
the Iceberg schema the tables are created with, and the broker gets it without importing pyiceberg."""

from __future__ import annotations

import subprocess
import sys

from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import assign_fresh_schema_ids

from dray_broker import lake_schema


def test_the_arrow_schema_is_the_iceberg_schema():
    schema = lake_schema.iceberg_schema()
    assert schema_to_pyarrow(schema, include_field_ids=True).equals(lake_schema.ARROW_SCHEMA, check_metadata=True)
    # Field ids as pyiceberg assigns them on create_table, which the data files are written with.
    assert assign_fresh_schema_ids(schema) == schema
    assert [f.name for f in lake_schema.ARROW_SCHEMA] == [c.name for c in lake_schema.COLUMNS]
    assert set(lake_schema.BATCH_COLUMNS) == {c.name for c in lake_schema.COLUMNS} - {lake_schema.PARTITION}


def test_the_broker_does_not_import_pyiceberg():
    code = ("import sys, dray_broker.server.broker, dray_broker.fetch.compacted; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyiceberg'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
