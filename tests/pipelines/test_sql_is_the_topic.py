"""`dray sql` (dray_pipelines.sql) sees what consumers see: at every stage of compaction, while compaction swaps
concurrently, and after the topic is deleted and created again. A real Kafka client produces and consumes against a
broker on each backend; the SQL counts per partition are the counts the consumer reads (and its high watermark
agrees), and the records are the same."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest

from dray_pipelines import sql
from dray_pipelines.runner import Runner
from tests.integration import clients
from tests.integration.brokers import BrokerProcess
from tests.pipelines.helpers import log_state

PARTITIONS = 3


@pytest.fixture
def lake_broker(backend_settings):
    b = BrokerProcess(backend_settings.data_dir, metadata=backend_settings.metadata,
                      object_store=backend_settings.object_store).start()
    yield b
    b.stop()


def sql_view(settings, topic: str) -> tuple[dict[int, int], dict[int, int], list[tuple]]:
    """(count per partition, first offset per partition, sorted (partition, offset, key, value)) through the view."""
    con = sql.connect(settings, [topic])
    try:
        name = sql.quote(topic)
        counts = dict(con.execute(f"SELECT partition, count(*) FROM {name} GROUP BY ALL").fetchall())
        firsts = dict(con.execute(f'SELECT partition, min("offset") FROM {name} GROUP BY ALL').fetchall())
        rows = con.execute(f'SELECT partition, "offset", key, value FROM {name} ORDER BY 1, 2').fetchall()
        return counts, firsts, rows
    finally:
        con.close()


def assert_sql_is_the_topic(settings, bootstrap: str, topic: str, acked: list[clients.Rec]) -> None:
    counts, firsts, rows = sql_view(settings, topic)
    # No duplicates across the Iceberg/WAL boundary: every (partition, offset) once.
    assert len({(r[0], r[1]) for r in rows}) == len(rows)
    # The consumer reads exactly as many records from the log start (and its high watermark is start + count).
    read = clients.consume("confluent", bootstrap, topic, {p: counts.get(p, 0) for p in range(PARTITIONS)},
                           start={p: firsts.get(p, 0) for p in range(PARTITIONS)}, timeout=60)
    assert rows == sorted((r.partition, r.offset, r.key, r.value) for r in read)
    assert rows == sorted((r.partition, r.offset, r.key, r.value) for r in acked)


def produce(bootstrap: str, topic: str, n: int, seed: int, pieces: int = 1) -> list[clients.Rec]:
    """n records in pieces separate produce calls (so separate WAL entries: compaction units)."""
    records = [replace(r, offset=-1) for r in clients.make_records(n, PARTITIONS, seed=seed)]
    step = -(-n // pieces)
    return [r for i in range(0, n, step)
            for r in clients.produce("confluent", bootstrap, topic, records[i:i + step], codec="lz4", timeout=60)]


def test_sql_counts_equal_consumer_counts_at_every_stage(lake_broker, backend_settings):
    from confluent_kafka.admin import AdminClient, NewTopic
    from dagster import DagsterInstance

    settings = backend_settings.model_copy(update={"compact_max_bytes": 1, "row_group_bytes": 8_000})
    bootstrap = lake_broker.bootstrap
    topic = "sql.orders"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(15)
    # An instance of its own: the other backend's run of this test made runs with the same run keys.
    instance = DagsterInstance.ephemeral()
    runner = Runner(settings, instance=instance)

    # Nothing compacted: everything comes from the WAL.
    acked = produce(bootstrap, topic, 900, seed=1, pieces=6)
    assert_sql_is_the_topic(settings, bootstrap, topic, acked)

    # Partly compacted (one run per partition, one WAL entry each: compact_max_bytes is 1), then more produced on top.
    assert not runner.run_sensor("compaction_sensor", force=True).failed
    state = asyncio.run(log_state(settings, topic, 0))
    assert 0 < state.committed < state.log_end
    acked += produce(bootstrap, topic, 300, seed=2, pieces=2)
    assert_sql_is_the_topic(settings, bootstrap, topic, acked)

    # Compaction swapping (and collecting the WAL it swapped, grace 0) while SQL reads: each read is whole.
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def query_forever() -> None:
        want = len(acked)
        while not stop.is_set():
            try:
                counts, _, rows = sql_view(settings, topic)
            except Exception as e:  # noqa: BLE001
                problems.append(repr(e))
                return
            if sum(counts.values()) != want or len({(r[0], r[1]) for r in rows}) != want:
                problems.append(f"a read saw {sum(counts.values())} rows, {len(set(rows))} distinct, not {want}")
                return
            reads[0] += 1

    thread = threading.Thread(target=query_forever)
    thread.start()
    try:
        while True:
            result = runner.run_sensor("compaction_sensor", force=True)
            assert not result.failed
            assert not runner.run_sensor("wal_gc_sensor").failed
            if not result.runs:
                break
    finally:
        stop.set()
        thread.join(120)
    assert not problems, problems
    assert reads[0] >= 1
    state = asyncio.run(log_state(settings, topic, 0))
    assert state.committed == state.watermark == state.log_end
    assert_sql_is_the_topic(settings, bootstrap, topic, acked)

    # Deleted and created again: the old topic's rows never show under the name (its table is still there: the
    # deleted-topics GC has not run).
    admin.delete_topics([topic])[topic].result(15)
    counts, _, _ = sql_view(settings, topic) if _has_view(settings, topic) else ({}, {}, [])
    assert counts == {}
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(15)
    again = produce(bootstrap, topic, 6, seed=3)
    assert_sql_is_the_topic(settings, bootstrap, topic, again)
    assert not runner.run_sensor("compaction_sensor", force=True).failed
    assert_sql_is_the_topic(settings, bootstrap, topic, again)
    instance.dispose()


def _has_view(settings, topic: str) -> bool:
    con = sql.connect(settings, [topic])
    try:
        return bool(con.execute("SELECT 1 FROM duckdb_views() WHERE view_name = ?", [topic]).fetchall())
    finally:
        con.close()


def test_a_pinned_snapshot_and_the_log_above_it_stay_whole_across_a_swap(settings, dagster_instance):
    """The race `dray sql` must survive, made to happen: a snapshot is pinned, then compaction commits and swaps the
    rest and WAL GC (grace 0) deletes every WAL object; the log above the pinned snapshot, read afterwards, comes from
    Parquet, and snapshot + log hold every offset exactly once."""
    from dray_broker.fetch.compacted import CompactedReader
    from dray_broker.fetch.reader import PartitionReader
    from dray_pipelines import tail
    from dray_pipelines.lake import open_lake
    from tests.pipelines.helpers import read_log, write_log

    written = asyncio.run(write_log(settings, "pinned", 1, batches=6, records_per_batch=50, flushes_per_partition=6))
    expected = [r[0] for r in asyncio.run(read_log(settings, "pinned", 0))]
    assert len(expected) == written[0] == 300
    runner = Runner(settings.model_copy(update={"compact_max_bytes": 1}), instance=dagster_instance)
    assert not runner.run_sensor("compaction_sensor", force=True).failed  # one WAL entry compacted

    async def pin_then_race():
        async with open_lake(settings) as lake:
            topic = await lake.topic("pinned")
            table = tail.topic_table(lake, topic)
            committed = tail.snapshot_committed(table)[0]
            assert 0 < committed < 300
            pinned = [r["offset"] for r in table.scan().to_arrow().to_pylist()]
            # Meanwhile: the rest is compacted and swapped, and the WAL collected.
            await asyncio.to_thread(lambda: runner.run_sensor("compaction_sensor", force=True, repeat=True))
            await asyncio.to_thread(lambda: runner.run_sensor("wal_gc_sensor", repeat=True))
            state = await lake.state(topic, 0)
            assert state.watermark == 300 and not state.uncompacted
            reader = PartitionReader(lake.objects, lake.index, 1 << 20,
                                     load_compacted=CompactedReader(lake.objects, codec="none").load)
            _, rows = await tail.partition_tail(reader, topic, 0, committed)
            return pinned, rows.column("offset").to_pylist()

    pinned, above = asyncio.run(pin_then_race())
    assert sorted(pinned + above) == expected == list(range(300))
    assert not list((settings.data_dir / "objects" / "wal").iterdir())  # it really read Parquet
