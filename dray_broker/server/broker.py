"""The broker: opens the stores, wires the data plane together, and serves Kafka connections."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from typing import Any, Awaitable, Callable

from dray_broker.cluster_identity import ensure_cluster_identity
from dray_broker.config import Settings
from dray_broker.faults import FAULTS
from dray_broker.fetch.compacted import CompactedReader
from dray_broker.fetch.handler import handle_fetch
from dray_broker.fetch.reader import PartitionReader
from dray_broker.groups.coordinator import GroupCoordinator
from dray_broker.index.offsets import IndexWatch, OffsetIndex, PartitionRef
from dray_broker.logs import request_context
from dray_broker.metadata import MetadataStore, open_metadata_store
from dray_broker.objectstore import ObjectStore, open_object_store
from dray_broker.observability.http import HttpEndpoint
from dray_broker.observability.instrumented import timed_metadata_store, timed_object_store
from dray_broker.observability.metrics import ApiMetrics, BrokerMetrics, CacheCollector
from dray_broker.produce.handler import handle_init_producer_id, handle_produce
from dray_broker.produce.legacy_request import decode_legacy_produce_request
from dray_broker.produce.producers import ProducerStates, batch_headers
from dray_broker.produce.wal_writer import WalWriter
from dray_broker.protocol import apis
from dray_broker.protocol.api_versions import api_versions_response, unsupported_api_versions_frame
from dray_broker.protocol.codec import (
    Request,
    UnsupportedVersionError,
    decode_request,
    encode_response,
    peek_header,
)
from dray_broker.routing.metadata_api import handle_metadata
from dray_broker.routing.registry import BrokerInfo, BrokerRegistry, allocate_broker_id
from dray_broker.server import allocator
from dray_broker.server.broker_dir import BrokerDir, broker_id_of, lock_data_dir
from dray_broker.server.connection import NO_RESPONSE, Connection
from dray_broker.server.request_budget import RequestBudget
from dray_broker.topics.catalog import TopicCatalog
from dray_broker.version import VERSION

log = logging.getLogger(__name__)

Handler = Callable[["Broker", Request], Awaitable[Any]]
# How long a draining broker waits for answers to requests already read (long polls end sooner: see fetch).
DRAIN_TIMEOUT_S = 10.0
DRAIN_REPORT_S = 1.0  # while draining, say what it waits for this often
# Compaction lag gauges cover at most this many partitions (one metadata read each per scrape).
MAX_LAG_PARTITIONS = 1000
# Connections are swept (idle receive buffers given back, stalled frames closed) this often; freed memory is
# handed back to the system every TRIM_EVERY sweeps.
SWEEP_S = 1.0
TRIM_EVERY = 5


def default_handlers() -> dict[int, Handler]:
    """API key -> handler. Each concern's package exposes its handlers in a HANDLERS dict."""
    from dray_broker.groups import handlers as group_handlers
    from dray_broker.topics import handlers as topic_handlers

    handlers: dict[int, Handler] = {
        apis.API_VERSIONS: handle_api_versions,
        apis.METADATA: handle_metadata,
        apis.PRODUCE: handle_produce,
        apis.FETCH: handle_fetch,
        apis.INIT_PRODUCER_ID: handle_init_producer_id,
    }
    handlers.update(topic_handlers.HANDLERS)
    handlers.update(group_handlers.HANDLERS)
    return handlers


async def handle_api_versions(broker: "Broker", req: Request):
    return api_versions_response(req.version, broker.handled)


class Broker:
    def __init__(self, settings: Settings, handlers: dict[int, Handler] | None = None):
        self.settings = settings
        self.handlers = handlers if handlers is not None else default_handlers()
        self.handled = set(self.handlers)
        self.faults = FAULTS
        self.faults.load()  # DRAY_FAULTS: a malformed one stops the broker here, not at its first produce
        self.metadata: MetadataStore | None = None
        self.objects: ObjectStore | None = None
        self.connections: set[Connection] = set()
        self.request_budget = RequestBudget(settings.queued_max_request_bytes)
        self._server: asyncio.Server | None = None
        self._index_watch_task: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None
        self.cluster_id = ""
        self.broker_id = -1
        self.dir: BrokerDir | None = None
        self.groups: GroupCoordinator | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.dir = lock_data_dir(s.data_dir, s.listen)
        self.metrics = BrokerMetrics()
        self.metrics.request_bytes.set_function(lambda: self.request_budget.used)
        self.metrics.connections_waiting.set_function(lambda: self.request_budget.waiting)
        self.metadata = timed_metadata_store(
            await open_metadata_store(s.metadata_url, session_timeout_ms=s.session_timeout_ms), self.metrics)
        self.objects = timed_object_store(open_object_store(s.object_store_url), self.metrics)
        self.cluster_id = await ensure_cluster_identity(self.metadata, self.objects)
        self.broker_id, known_id = await broker_id_of(
            self.dir, s.broker_id, self.cluster_id, allocate=lambda: allocate_broker_id(self.metadata))
        self.index = OffsetIndex(self.metadata)
        self.topics = TopicCatalog(self.metadata)
        await self.topics.start()
        self.groups = GroupCoordinator(self)
        self.reader = PartitionReader(self.objects, self.index, s.fetch_cache_bytes,
                                      load_compacted=CompactedReader(self.objects).load)
        self.wal_writer = WalWriter(
            self.objects, self.index, broker_id=self.broker_id, flush_ms=s.flush_ms, flush_bytes=s.flush_bytes,
            on_commit=self.reader.committed, metrics=self.metrics,
        )
        self.metrics.registry.register(CacheCollector(self.reader.chunks))
        self.producers = ProducerStates(self.metadata, self.index, self._batch_headers,
                                        expiration_ms=s.producer_id_expiration_ms)
        index_watch = await self.index.watch()
        self._index_watch_task = asyncio.create_task(self._follow_index(index_watch), name="index-watch")
        self._sweep_task = asyncio.create_task(self._sweep(), name="connection-sweep")
        host, port = s.listen.rsplit(":", 1)
        self._server = await asyncio.get_running_loop().create_server(
            self._new_connection,
            host, int(port), reuse_address=True,
        )
        bound_port = self._server.sockets[0].getsockname()[1]
        adv_host, adv_port = s.advertised
        self.registry = BrokerRegistry(self.metadata, BrokerInfo(self.broker_id, adv_host, adv_port or bound_port, s.zone))
        # A restarted broker with a known id waits for its dead predecessor's registration to expire.
        await self.registry.start(wait_for_id_s=s.session_timeout_ms / 1000 + 2 if known_id else 0)
        # After registering: the coordinator picks groups by the live brokers and takes over dead ones' leases.
        await self.groups.start()
        self.port = bound_port
        self.http = None
        if s.http_listen:
            http_host, http_port = s.http_listen.rsplit(":", 1)
            self.http = HttpEndpoint(self, http_host, int(http_port))
            log.info("metrics and health on http://%s:%d (/metrics /healthz /readyz)", http_host,
                     await self.http.start())
        log.info("dray %s broker %d ready on %s:%d (advertised %s:%d, zone %s, cluster %s, metadata %s, objects %s)",
                 VERSION, self.broker_id, host, bound_port, adv_host, adv_port or bound_port, s.zone, self.cluster_id,
                 s.metadata_url, s.object_store_url)

    def _new_connection(self) -> Connection:
        conn = Connection(self.handle_frame, self.settings.max_request_bytes, self._connection_closed,
                          self.request_budget)
        self.connections.add(conn)
        self.metrics.connections.inc()
        return conn

    def _connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.metrics.connections.dec()

    async def _sweep(self) -> None:
        sweeps = 0
        while True:
            await asyncio.sleep(SWEEP_S)
            for conn in list(self.connections):
                conn.sweep()
            sweeps += 1
            if sweeps % TRIM_EVERY == 0:
                allocator.release_free_memory()

    async def refresh_gauges(self) -> None:
        """Gauges computed at scrape time: the metadata session, compaction lag of the partitions this broker has
        served."""
        self.metrics.session_generation.set(self.metadata.session.generation)
        self.metrics.session_alive.set(1 if self.metadata.session.alive else 0)
        self.metrics.compaction_lag.clear()
        for ref, log_end in list(self.reader.log_ends().items())[:MAX_LAG_PARTITIONS]:
            topic = self.topics.by_id(ref.topic_id)
            if topic is not None:
                watermark, _ = await self.index.compacted_watermark(ref)
                self.metrics.compaction_lag.labels(topic.name, str(ref.partition)).set(max(log_end - watermark, 0))

    async def stop(self) -> None:
        """Drain: stop accepting, commit and ack what is buffered, then close everything."""
        if self._server is not None:
            self._server.close()
        if self.http is not None:
            await self.http.stop()
        # Parked JoinGroup/SyncGroup requests get NOT_COORDINATOR and the leases go, so another broker takes over.
        await self.groups.stop()
        # Shutdown is bounded (an orchestrator kills a broker that takes too long): what the stores do not commit
        # in time is answered with an error or not at all, never acked, so producers retry it elsewhere.
        drained = asyncio.ensure_future(
            asyncio.gather(self.wal_writer.close(), *(c.drain() for c in list(self.connections))))
        waited = 0.0
        while not drained.done() and waited < DRAIN_TIMEOUT_S:
            step = min(DRAIN_REPORT_S, DRAIN_TIMEOUT_S - waited)
            await asyncio.wait({drained}, timeout=step)
            waited += step
            if not drained.done() and waited < DRAIN_TIMEOUT_S:
                log.info("draining: waiting for %s (at most %.0f s more)", self._undrained(), DRAIN_TIMEOUT_S - waited)
        if not drained.done():
            log.warning("after %.0f s, still waiting for %s; closing anyway", DRAIN_TIMEOUT_S, self._undrained())
            drained.cancel()
        (outcome,) = await asyncio.gather(drained, return_exceptions=True)
        if isinstance(outcome, Exception):
            log.error("draining failed: %r", outcome)
        for c in list(self.connections):
            c.close("broker shutting down")
        if self._index_watch_task:
            self._index_watch_task.cancel()
        if self._sweep_task:
            self._sweep_task.cancel()
        await self.registry.stop()
        await self.topics.stop()
        await self.objects.close()
        await self.metadata.close()
        if self.dir is not None:
            self.dir.unlock()
        log.info("dray broker %d stopped", self.broker_id)

    def _undrained(self) -> str:
        flushes = self.wal_writer.flushes_in_flight
        waiting = sum(1 for c in self.connections if c.unanswered)
        return (f"{flushes} WAL flush{'es' if flushes != 1 else ''} in flight and {waiting} "
                f"connection{'s' if waiting != 1 else ''} with unanswered requests")

    async def _batch_headers(self, p: PartitionRef, entry) -> list[tuple[int, int, int, int]]:
        return batch_headers((await self.reader.load(entry)).data)

    async def _follow_index(self, watch: IndexWatch) -> None:
        """Index changes from every broker: move log ends and wake long-polling fetches."""
        try:
            async for change in watch:
                if change.log_end is not None:
                    self.reader.index_changed(change.partition, change.log_end)
        except asyncio.CancelledError:
            await watch.aclose()
            raise
        except Exception:
            log.exception("index watch failed")

    # --- requests ---------------------------------------------------------------------------------------------

    async def handle_frame(self, frame: bytes, conn: Connection):
        api_key, version, correlation_id = peek_header(frame)
        if api_key == apis.API_VERSIONS and not apis.supports(api_key, version, self.handled):
            return unsupported_api_versions_frame(correlation_id, self.handled)
        # Transaction APIs are not advertised, but a client that sends one anyway gets an error response from
        # its handler (protocol/rejections.py) rather than a closed connection.
        if not apis.supports(api_key, version, self.handled) and not (
            api_key in apis.TRANSACTION_APIS and api_key in self.handled
        ):
            conn.close(f"API key {api_key} version {version} is not supported")
            return NO_RESPONSE
        try:
            if api_key == apis.PRODUCE and version < 3:
                req = decode_legacy_produce_request(frame)
            else:
                req = decode_request(frame)
        except UnsupportedVersionError as e:
            conn.close(str(e))
            return NO_RESPONSE
        conn.client_id = req.client_id
        if api_key == apis.JOIN_GROUP:
            req = dataclasses.replace(req, client_host=conn.host)
        request_context.set((req.client_id, correlation_id))
        metrics = self.metrics.api(apis.name(api_key))
        metrics.requests.inc()
        started = time.perf_counter()
        try:
            result = await self.handlers[api_key](self, req)
        except Exception:
            metrics.errors.inc()
            raise
        if result is NO_RESPONSE:
            return NO_RESPONSE
        if inspect.isawaitable(result):
            return self._encode_later(req, metrics, started, result)
        metrics.seconds.observe(time.perf_counter() - started)
        return encode_response(api_key, version, correlation_id, result)

    async def _encode_later(self, req: Request, metrics: ApiMetrics, started: float, pending) -> list | None:
        try:
            response = await pending
            if response is NO_RESPONSE:  # acks=0: nothing to answer once its batches are committed
                return NO_RESPONSE
        except ConnectionResetError as e:
            log.warning("dropping the connection: %s", e)
            return None
        except Exception:
            metrics.errors.inc()
            log.exception("request %d v%d from %s failed", req.api_key, req.version, req.client_id)
            return None
        metrics.seconds.observe(time.perf_counter() - started)
        return encode_response(req.api_key, req.version, req.correlation_id, response)
