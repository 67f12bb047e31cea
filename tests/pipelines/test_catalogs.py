"""The non-default Iceberg catalogs against real servers: the SQL catalog on PostgreSQL and an Iceberg REST catalog.

Each runs the pipeline as a user does (`dray compact --all --catalog URL`, twice, so the second run commits to an
existing table), then checks that table, index and log agree and that `dray sql --catalog URL` sees every record.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.pipelines.conftest import lake_settings
from tests.pipelines.helpers import assert_agree, read_log, write_log
from tests.pipelines.test_cli import dray
from tests.rest_catalog_service import start_rest_catalog
from tests.services import start_postgres


@pytest.fixture(scope="module")
def postgres_url():
    server = start_postgres()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def rest_catalog_url(tmp_path_factory):
    # Dray names each table's location; the server's own warehouse only holds what it would place itself.
    server = start_rest_catalog(str(tmp_path_factory.mktemp("rest-warehouse")))
    yield server.url
    server.stop()


@pytest.fixture(params=["postgresql", "rest"])
def catalog_url(request):
    return request.getfixturevalue({"postgresql": "postgres_url", "rest": "rest_catalog_url"}[request.param])


def test_compact_and_query_through_catalog(tmp_path, catalog_url):
    data = tmp_path / "data"
    settings = lake_settings(data, catalog=catalog_url)
    topic = f"cat-{uuid.uuid4().hex[:8]}"
    flags = ["--data-dir", str(data), "--catalog", catalog_url]

    written = asyncio.run(write_log(settings, topic, 2, batches=4, records_per_batch=25))
    done = dray("compact", "--all", "--grace-ms", "0", *flags)
    assert done.returncode == 0 and "FAILED" not in done.stdout, done.stdout + done.stderr
    more = asyncio.run(write_log(settings, topic, 2, batches=2, records_per_batch=25, seed=1))
    done = dray("compact", "--all", "--grace-ms", "0", *flags)
    assert done.returncode == 0 and "FAILED" not in done.stdout, done.stdout + done.stderr

    assert not (data / "catalog.db").exists()  # the default SQLite catalog was not used
    total = {p: written[p] + more[p] for p in written}
    assert_agree(settings, topic, {p: asyncio.run(read_log(settings, topic, p)) for p in total},
                 fully_compacted=True)
    done = dray("sql", *flags, "--format", "json",
                f'SELECT partition, count(*) AS n, count(DISTINCT "offset") AS offsets FROM "{topic}" '
                "GROUP BY ALL ORDER BY 1")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows == [{"partition": p, "n": n, "offsets": n} for p, n in sorted(total.items())]
