"""Metrics, health endpoints and structured logs of a running broker."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.brokers import BrokerProcess, free_port


def _http_base(broker: BrokerProcess) -> str:
    match = re.search(r"metrics and health on (http://[0-9.]+:\d+)", broker.log())
    assert match, broker.log()
    return match.group(1)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def observed_broker(tmp_path):
    b = BrokerProcess(tmp_path, extra_args=["--http-listen", "127.0.0.1:0", "--log-json"]).start()
    yield b
    b.stop()


def test_metrics_health_and_json_logs(observed_broker, topic_name):
    base = _http_base(observed_broker)
    assert _get(base + "/healthz") == (200, "ok\n")
    assert _get(base + "/readyz") == (200, "ready\n")
    producer = Producer({"bootstrap.servers": observed_broker.bootstrap, "client.id": "obs-test", "log_level": 3})
    for i in range(500):
        producer.produce(topic_name, value=b"x" * 100, key=b"%d" % i)
    assert producer.flush(15) == 0
    consumer = Consumer({"bootstrap.servers": observed_broker.bootstrap, "group.id": "obs", "log_level": 3})
    consumer.assign([TopicPartition(topic_name, 0, 0)])
    got = 0
    deadline = time.monotonic() + 15
    while got < 500 and time.monotonic() < deadline:
        got += sum(1 for m in consumer.consume(500, 0.5) if m.error() is None)
    assert got == 500

    status, text = _get(base + "/metrics")
    assert status == 200
    m = _samples(text)
    assert m[("dray_requests_total", (("api", "Produce"),))] >= 1
    assert m[("dray_requests_total", (("api", "Fetch"),))] >= 1
    assert m[("dray_request_seconds_count", (("api", "Metadata"),))] >= 1
    assert m[("dray_produce_ack_seconds_count", ())] >= 1
    assert m[("dray_wal_flush_bytes_sum", ())] >= 500 * 100
    assert m[("dray_wal_flush_seconds_count", ())] >= 1
    assert m[("dray_store_seconds_count", (("op", "put"), ("store", "object")))] >= 1
    assert m[("dray_store_seconds_count", (("op", "put_sequential"), ("store", "metadata")))] >= 1
    assert m[("dray_connections", ())] >= 2
    hits = m[("dray_fetch_cache_lookups_total", (("result", "hit"),))]
    misses = m[("dray_fetch_cache_lookups_total", (("result", "miss"),))]
    assert hits >= 1 and misses >= 0
    assert m[("dray_compaction_lag_offsets", (("partition", "0"), ("topic", topic_name)))] == 500
    assert m[("dray_produce_message_conversions_total", ())] == 0
    consumer.close()

    # An old producer's message sets are up-converted, and counted.
    old = Producer({"bootstrap.servers": observed_broker.bootstrap, "api.version.request": False,
                    "broker.version.fallback": "0.9.0", "linger.ms": 50, "log_level": 3})
    for i in range(10):
        old.produce(topic_name, value=b"old", partition=0)
    assert old.flush(15) == 0
    conversions = _samples(_get(base + "/metrics")[1])[("dray_produce_message_conversions_total", ())]
    assert 1 <= conversions <= 10

    # Every log line is one JSON object; lines written while handling a request carry its client id.
    lines = [json.loads(line) for line in observed_broker.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    created = [line for line in lines if line["msg"].startswith(f"created topic {topic_name}")]
    assert created and created[0]["client_id"] == "obs-test" and created[0]["correlation_id"] >= 0


def test_readyz_reports_an_unreachable_object_store(tmp_path):
    dead = f"s3://bucket/x?endpoint=http://127.0.0.1:{free_port()}&access_key_id=a&secret_access_key=b"
    b = BrokerProcess(tmp_path, object_store=dead, extra_args=["--http-listen", "127.0.0.1:0"]).start()
    try:
        status, text = _get(_http_base(b) + "/readyz")
        assert status == 503 and "object store" in text, text
        assert _get(_http_base(b) + "/healthz")[0] == 200
    finally:
        b.stop()
