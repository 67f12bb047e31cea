"""Prometheus metrics of one broker, on their own registry (so that tests and several brokers in one process
never share counters)."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)


class ApiMetrics(NamedTuple):
    """One API's labelled children, looked up once (labels() costs a lock and a dict lookup per call)."""

    requests: Counter
    errors: Counter
    seconds: Histogram


class BrokerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("dray_requests", "Kafka requests handled", ["api"], registry=r)
        self.request_errors = Counter("dray_request_errors", "Kafka requests that failed inside the broker",
                                      ["api"], registry=r)
        self.request_seconds = Histogram("dray_request_seconds", "time from a request's arrival to its response",
                                         ["api"], buckets=LATENCY_BUCKETS, registry=r)
        self.produce_ack_seconds = Histogram("dray_produce_ack_seconds",
                                             "time from a produce request to its ack (WAL durable, index committed)",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.produce_conversions = Counter("dray_produce_message_conversions",
                                           "legacy message sets (magic 0/1, Produce v0-v2) up-converted to v2 "
                                           "batches (Kafka's ProduceMessageConversionsPerSec)", registry=r)
        self.produce_recompressions = Counter("dray_produce_recompressions",
                                              "produced record sets recompressed to their topic's compression.type",
                                              registry=r)
        self.wal_flush_bytes = Histogram("dray_wal_flush_bytes", "bytes per WAL object", buckets=SIZE_BUCKETS,
                                         registry=r)
        self.wal_flush_seconds = Histogram("dray_wal_flush_seconds", "time to write a WAL object and index it",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.store_seconds = Histogram("dray_store_seconds", "object and metadata store call latency",
                                       ["store", "op"], buckets=LATENCY_BUCKETS, registry=r)
        self.store_errors = Counter("dray_store_errors", "object and metadata store calls that failed",
                                    ["store", "op"], registry=r)
        self.connections = Gauge("dray_connections", "open client connections", registry=r)
        self.session_generation = Gauge("dray_metadata_session_generation",
                                        "metadata session generation (1 + sessions lost and renewed)", registry=r)
        self.session_alive = Gauge("dray_metadata_session_alive", "1 while the metadata session is alive",
                                   registry=r)
        self.request_bytes = Gauge("dray_request_bytes", "bytes of requests being received or waiting for their "
                                   "answers (bounded by queued_max_request_bytes)",
                                   registry=r)
        self.connections_waiting = Gauge("dray_connections_waiting_for_request_bytes", "connections that stopped "
                                         "reading until requests in flight give bytes back", registry=r)
        self.sasl_logins = Counter("dray_sasl_logins", "successful SASL logins (reauthentication: KIP-368 "
                                   "re-authentications of a connection)", ["mechanism", "reauthentication"],
                                   registry=r)
        self.sasl_failed_logins = Counter("dray_sasl_failed_logins", "SASL logins that failed (the connection was "
                                          "closed)", ["mechanism", "reason"], registry=r)
        self.compaction_lag = Gauge("dray_compaction_lag_offsets",
                                    "offsets above the compacted watermark, per partition this broker served",
                                    ["topic", "partition"], registry=r)

        self._apis: dict[str, ApiMetrics] = {}

    def api(self, name: str) -> ApiMetrics:
        m = self._apis.get(name)
        if m is None:
            m = self._apis[name] = ApiMetrics(self.requests.labels(name), self.request_errors.labels(name),
                                              self.request_seconds.labels(name))
        return m


class CacheCollector:
    """Exports a cache's own hit and miss counts (kept as plain ints on the fetch path)."""

    def __init__(self, cache):
        self.cache = cache

    def collect(self):
        family = CounterMetricFamily("dray_fetch_cache_lookups", "fetch chunk cache lookups", labels=["result"])
        family.add_metric(["hit"], self.cache.hits)
        family.add_metric(["miss"], self.cache.misses)
        yield family
