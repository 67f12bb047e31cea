"""End to end with a real broker process and real clients: produce, compact through the Dagster definitions (in
process), query with DuckDB, read back from Parquet, collect the WAL; a consumer during swaps; retention."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import replace

import pyarrow as pa
import pytest

from dray_pipelines import sql
from dray_pipelines.runner import Runner
from tests.integration import clients
from tests.integration.brokers import BrokerProcess
from tests.pipelines.conftest import lake_settings
from tests.pipelines.helpers import log_state, table_rows

N_RECORDS = 100_000
PARTITIONS = 4
# (client, codec): every codec, snappy twice: librdkafka writes raw blocks, kafka-python xerial framing.
PRODUCERS = [("confluent", "none"), ("confluent", "gzip"), ("confluent", "snappy"), ("confluent", "lz4"),
             ("confluent", "zstd"), ("kafka-python", "snappy")]


def create_topic(bootstrap: str, name: str, partitions: int, configs: dict[str, str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1, config=configs)])[name].result(15)


def wal_objects(data_dir) -> list[str]:
    wal = data_dir / "objects" / "wal"
    return sorted(os.listdir(wal)) if wal.exists() else []


def produce_all(bootstrap: str, topic: str, records: list[clients.Rec]) -> list[clients.Rec]:
    chunk = (len(records) + len(PRODUCERS) - 1) // len(PRODUCERS)
    acked = []
    for i, (client, codec) in enumerate(PRODUCERS):
        part = records[i * chunk:(i + 1) * chunk]
        acked += clients.produce(client, bootstrap, topic, part, codec=codec, timeout=60)
    clients.assert_offsets_as_kafka(acked)
    return acked


def checksum(con, relation: str) -> tuple:
    return con.execute(f'SELECT count(*), sum(hash(partition, "offset", key, value)) FROM {relation}').fetchone()


@pytest.fixture
def lake_broker(tmp_path):
    b = BrokerProcess(tmp_path / "data").start()
    yield b
    b.stop()


def test_produce_compact_query_consume_collect(lake_broker, dagster_instance, clock):
    data_dir = lake_broker.data_dir
    settings = lake_settings(data_dir, wal_gc_grace_ms=2000, row_group_bytes=1 << 20)
    topic = "e2e.orders"
    create_topic(lake_broker.bootstrap, topic, PARTITIONS, {"retention.ms": "-1"})
    acked = produce_all(lake_broker.bootstrap, topic, clients.make_records(N_RECORDS, PARTITIONS, seed=11))
    assert wal_objects(data_dir)

    runner = Runner(settings, instance=dagster_instance)
    result = runner.run_all(force=True)
    assert not result.failed, result.failed
    assert sorted(r.partition for r in result.runs if r.job == "compaction") == [f"{topic}-{p}" for p in range(4)]
    for p in range(PARTITIONS):
        state = asyncio.run(log_state(settings, topic, p))
        assert state.watermark == state.committed == state.log_end == sum(1 for r in acked if r.partition == p)

    # DuckDB sees exactly the produced records: count and a checksum over partition, offset, key, value.
    con = sql.connect(settings)
    expected = pa.table({
        "partition": pa.array([r.partition for r in acked], pa.int32()),
        "offset": pa.array([r.offset for r in acked], pa.int64()),
        "key": pa.array([r.key for r in acked], pa.binary()),
        "value": pa.array([r.value for r in acked], pa.binary()),
    })
    con.register("expected", expected)
    assert checksum(con, sql.quote(topic)) == checksum(con, "expected")
    assert con.execute(f'SELECT count(DISTINCT (partition, "offset")) FROM {sql.quote(topic)}').fetchone()[0] == N_RECORDS
    con.close()
    # ... and every field: keys, values, headers (order and duplicates), timestamps.
    rows = table_rows(settings, topic)
    assert rows == sorted(((r.partition, r.offset, r.timestamp, r.key, r.value, r.headers) for r in acked),
                          key=lambda r: (r[0], r[1]))

    # The WAL objects go once the grace period has passed.
    clock.advance(2100)
    assert not runner.run_sensor("wal_gc_sensor", repeat=True).failed
    assert wal_objects(data_dir) == []

    # A fresh broker (nothing cached) serves every offset from Parquet; consumers from 0 cannot tell.
    lake_broker.stop()
    lake_broker.start()
    clients.read_back("confluent", lake_broker.bootstrap, topic, acked, timeout=60)
    clients.read_back("kafka-python", lake_broker.bootstrap, topic, acked, timeout=120)
    # ListOffsets by timestamp searches the compacted batches too.
    from confluent_kafka import Consumer, TopicPartition

    target = [r for r in acked if r.partition == 2][777]
    c = Consumer({"bootstrap.servers": lake_broker.bootstrap, "group.id": "e2e-times"})
    try:
        found = c.offsets_for_times([TopicPartition(topic, 2, target.timestamp)], timeout=15)
        assert found[0].offset == target.offset
    finally:
        c.close()

    # Produce more: the new records are served from the WAL above the watermark, the old ones from Parquet.
    more = [replace(r, offset=-1) for r in clients.make_records(500, PARTITIONS, seed=12)]
    acked2 = clients.produce("confluent", lake_broker.bootstrap, topic, more, codec="lz4")
    clients.read_back("aiokafka", lake_broker.bootstrap, topic, acked + acked2, timeout=60)


def test_consumer_during_swaps_sees_every_offset_once(tmp_path, dagster_instance):
    """Consumers read the partition over and over from offset 0 while compaction runs swap after swap and WAL GC
    deletes what was swapped (grace 0); every pass reads every offset exactly once, with the same records."""
    broker = BrokerProcess(tmp_path / "data", extra_args=["--fetch-cache-bytes", "200000"]).start()
    try:
        settings = lake_settings(broker.data_dir, wal_gc_grace_ms=0, compact_max_bytes=150_000,
                                 row_group_bytes=16_000)
        topic = "swapping"
        create_topic(broker.bootstrap, topic, 1, {"retention.ms": "-1"})
        records = clients.make_records(4000, 1, seed=5)
        acked = []
        for i in range(0, len(records), 500):  # many WAL objects, so that there are many ranges to swap
            acked += clients.produce("confluent", broker.bootstrap, topic, records[i:i + 500],
                                     codec=("zstd", "none", "gzip")[i // 500 % 3])
        broker.stop()
        broker.start()  # empty caches: reads go to the index, then to WAL or Parquet
        want = sorted((r.offset, r.key, r.value, r.headers, r.timestamp) for r in acked)
        stop = threading.Event()
        passes: list[int] = []
        errors: list[str] = []

        def consume_forever(client: str) -> None:
            while not stop.is_set():
                try:
                    got = clients.consume(client, broker.bootstrap, topic, {0: len(acked)}, timeout=60)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{client}: {e!r}")
                    return
                seen = sorted((r.offset, r.key, r.value, r.headers, r.timestamp) for r in got)
                if seen != want:
                    errors.append(f"{client}: a pass read {len(got)} records, not exactly the {len(want)} produced")
                    return
                passes.append(1)

        threads = [threading.Thread(target=consume_forever, args=(c,)) for c in ("confluent", "aiokafka")]
        for t in threads:
            t.start()
        runner = Runner(settings, instance=dagster_instance)
        swaps = 0
        while True:
            result = runner.run_sensor("compaction_sensor", force=True)
            assert not result.failed
            if not result.runs:
                break
            swaps += len(result.runs)
            assert not runner.run_sensor("wal_gc_sensor").failed
        deadline = time.monotonic() + 60
        start = len(passes)
        while len(passes) < start + 2 and not errors and time.monotonic() < deadline:
            time.sleep(0.2)  # at least two passes entirely after the last swap
        stop.set()
        for t in threads:
            t.join(90)
        assert not errors, errors
        assert swaps >= 3 and len(passes) >= 2
        assert wal_objects(broker.data_dir) == []
    finally:
        broker.stop()


def test_retention_moves_the_log_start(tmp_path, dagster_instance):
    broker = BrokerProcess(tmp_path / "data").start()
    try:
        settings = lake_settings(broker.data_dir, wal_gc_grace_ms=0, compact_max_bytes=30_000,
                                 row_group_bytes=8_000)
        topic = "retained"
        create_topic(broker.bootstrap, topic, 1, {"retention.bytes": "40000"})
        now = int(time.time() * 1000)
        records = [replace(r, timestamp=now) for r in clients.make_records(3000, 1, seed=3)]
        acked = []
        for i in range(0, len(records), 300):
            acked += clients.produce("confluent", broker.bootstrap, topic, records[i:i + 300])
        runner = Runner(settings, instance=dagster_instance)
        # Compact part of the log (two runs), so that retention drops Parquet files and WAL entries alike.
        for _ in range(2):
            assert not runner.run_sensor("compaction_sensor", force=True).failed
        before = asyncio.run(log_state(settings, topic, 0))
        assert 0 < before.watermark < before.log_end and before.log_start == 0

        result = runner.run_sensor("retention_sensor")
        assert [r.job for r in result.runs] == ["retention"] and not result.failed
        after = asyncio.run(log_state(settings, topic, 0))
        assert after.log_start > 0 and after.log_end == before.log_end
        # what is left is about retention.bytes of WAL data (whole units dropped, Kafka's rule)
        kept = [r for r in acked if r.offset >= after.log_start]
        assert kept and len(kept) < len(acked)

        # ListOffsets(earliest) follows the log start; a consumer from 0 is reset there.
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "retention-test",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
                if low == after.log_start:
                    break
                time.sleep(0.5)
            assert (low, high) == (after.log_start, after.log_end)
        finally:
            c.close()
        clients.read_back("confluent", broker.bootstrap, topic, kept, start={0: after.log_start}, timeout=60)
        # The table no longer holds whole files below the log start; what it holds starts at a file boundary.
        rows = table_rows(settings, topic)
        if after.log_start <= after.watermark:
            assert rows and rows[0][1] <= after.log_start
        assert not runner.run_sensor("wal_gc_sensor", repeat=True).failed
        assert not runner.run_sensor("retention_sensor").runs  # nothing more to drop: no new run
    finally:
        broker.stop()
