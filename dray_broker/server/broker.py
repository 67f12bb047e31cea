"""The broker: opens the stores, starts the data plane and the services request handlers use (server/services.py),
and serves Kafka connections through the dispatcher (server/dispatch.py, over the route table server/routes.py).

Everything start() starts goes on an exit stack, so that stop() stops it in reverse order (draining the connections
before the registration goes and the stores close), and a start that fails half-way stops what it had started."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from typing import Any, Coroutine

from dray_broker.auth.acl_api import AclService
from dray_broker.auth.acl_store import AclStore
from dray_broker.auth.acls import Authorizer
from dray_broker.auth.enforce import Enforcer
from dray_broker.auth.credential_store import ScramCredentialStore
from dray_broker.cluster_identity import ensure_cluster_identity
from dray_broker.config import Settings
from dray_broker.faults import FAULTS
from dray_broker.fetch.compacted import CompactedReader
from dray_broker.fetch.reader import PartitionReader
from dray_broker.groups.coordinator import GroupCoordinator, config_from_settings, consumer_config_from_settings
from dray_broker.index.offsets import IndexEntry, IndexWatch, OffsetIndex, PartitionRef
from dray_broker.metadata import MetadataStore, open_metadata_store
from dray_broker.objectstore import open_object_store
from dray_broker.observability.http import HttpEndpoint
from dray_broker.observability.instrumented import timed_metadata_store, timed_object_store
from dray_broker.observability.metrics import BrokerMetrics, CacheCollector
from dray_broker.produce.producers import ProducerStates, batch_headers
from dray_broker.produce.wal_writer import WalWriter
from dray_broker.routing.registry import BrokerInfo, BrokerRegistry, allocate_broker_id
from dray_broker.server import allocator
from dray_broker.server.broker_dir import broker_id_of, lock_data_dir
from dray_broker.server.authentication import Authenticator, FailedLogins, sasl_settings
from dray_broker.server.connection import Connection
from dray_broker.server.dispatch import Dispatcher
from dray_broker.server.handling import NoService
from dray_broker.server.listeners import Listener
from dray_broker.server.tls import HANDSHAKE_TIMEOUT_S, ServerTls
from dray_broker.server.request_budget import RequestBudget
from dray_broker.server.routes import ROUTES
from dray_broker.server.services import (
    AdminService,
    ClusterView,
    FetchService,
    GroupService,
    ProduceService,
    UserService,
)
from dray_broker.topics.catalog import TopicCatalog
from dray_broker.version import VERSION

log = logging.getLogger(__name__)

# How long a draining broker waits for answers to requests already read (long polls end sooner: see fetch).
DRAIN_TIMEOUT_S = 10.0
DRAIN_REPORT_S = 1.0  # while draining, say what it waits for this often
# Compaction lag gauges cover at most this many partitions (one metadata read each per scrape).
MAX_LAG_PARTITIONS = 1000
# Connections are swept (idle receive buffers given back, stalled frames closed) this often; freed memory is
# handed back to the system every TRIM_EVERY sweeps.
SWEEP_S = 1.0
TRIM_EVERY = 5


class Broker:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = BrokerMetrics()
        self.faults = FAULTS
        self.faults.load()  # DRAY_FAULTS: a malformed one stops the broker here, not at its first produce
        self.request_budget = RequestBudget(settings.queued_max_request_bytes)
        self.metrics.request_bytes.set_function(lambda: self.request_budget.used)
        self.metrics.connections_waiting.set_function(lambda: self.request_budget.waiting)
        self.connections: set[Connection] = set()
        self.cluster_id = ""
        self.broker_id = -1
        self.listeners: list[Listener] = []  # the Kafka listeners, once bound (ports known)
        self.tls: ServerTls | None = None  # the ssl and sasl_ssl listeners' certificates, if there are such
        self.port = -1  # the first listener's bound port, once started
        self._dispatcher: Dispatcher | None = None  # once every service it routes to has started
        self._authenticator: Authenticator | None = None
        self._stack = contextlib.AsyncExitStack()  # what start() started, stopped in reverse order

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        if s.tls_cert is not None and s.tls_key is not None:  # first: unusable files stop the broker at once
            self.tls = ServerTls(s.tls_cert, s.tls_key, s.tls_ca, s.tls_principal_mapping_rules)
            if s.tls_check_ms:
                _run_until_stopped(stack, self.tls.watch(s.tls_check_ms / 1000), "tls-watch")
        data_dir = lock_data_dir(s.data_dir, s.listen)
        if data_dir is not None:
            stack.callback(data_dir.unlock)
        metadata = timed_metadata_store(
            await open_metadata_store(s.metadata_url, session_timeout_ms=s.session_timeout_ms), self.metrics)
        stack.push_async_callback(metadata.close)
        objects = timed_object_store(open_object_store(s.object_store_url), self.metrics)
        stack.push_async_callback(objects.close)
        self.cluster_id = await ensure_cluster_identity(metadata, objects)
        self.broker_id, known_id = await broker_id_of(
            data_dir, s.broker_id, self.cluster_id, allocate=lambda: allocate_broker_id(metadata))

        # The data plane: topics, the offset index, the reader (with its cache) and the WAL writer.
        index = OffsetIndex(metadata)
        topics = TopicCatalog(metadata)
        await topics.start()
        stack.push_async_callback(topics.stop)
        reader = PartitionReader(objects, index, s.fetch_cache_bytes, load_compacted=CompactedReader(objects).load)
        self.metrics.registry.register(CacheCollector(reader.chunks))
        wal_writer = WalWriter(objects, index, broker_id=self.broker_id, flush_ms=s.flush_ms,
                               flush_bytes=s.flush_bytes, on_commit=reader.committed, metrics=self.metrics,
                               faults=self.faults)
        producers = ProducerStates(metadata, index, functools.partial(_batch_headers, reader), reader.cached_log_end,
                                   session_timeout_ms=s.session_timeout_ms, broker_id=self.broker_id,
                                   expiration_ms=s.producer_id_expiration_ms)
        await producers.start()
        # Pushed before the drain: the producers' reservations stop only after every request read is answered.
        stack.push_async_callback(producers.stop)
        index_watch = await index.watch()
        _run_until_stopped(stack, _follow_index(index_watch, reader), "index-watch")
        _run_until_stopped(stack, self._sweep(), "connection-sweep")

        # Bound now (the registration says the ports), serving only once everything below has started.
        servers = []
        for listener in s.listeners:
            tls = self.tls.context if listener.tls and self.tls is not None else None
            server = await asyncio.get_running_loop().create_server(
                functools.partial(self._new_connection, listener), listener.host, listener.port, reuse_address=True,
                ssl=tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if tls else None, start_serving=False)
            stack.callback(server.close)
            servers.append(server)
            self.listeners.append(listener.bound(server.sockets[0].getsockname()[1]))
        self.port = self.listeners[0].port
        endpoints = tuple((bound.name, bound.advertised_host, bound.advertised_port) for bound in self.listeners)
        registry = BrokerRegistry(metadata, BrokerInfo(self.broker_id, endpoints[0][1], endpoints[0][2], s.zone,
                                                       endpoints))
        # A restarted broker with a known id waits for its dead predecessor's registration to expire.
        await registry.start(wait_for_id_s=s.session_timeout_ms / 1000 + 2 if known_id else 0)
        stack.push_async_callback(registry.stop)
        # Stopping drains before the registration goes: requests already read are answered (and acked) first.
        stack.push_async_callback(self._drain, wal_writer)
        # The cluster's ACLs, followed from the metadata store; enforced only with --acls.
        acl_store = None
        enforcer = None
        authorizer = None
        if s.acls:
            authorizer = Authorizer(s.super_user_list, s.allow_everyone_if_no_acl_found)
            acl_store = AclStore(metadata, authorizer)
            await acl_store.start()
            stack.push_async_callback(acl_store.stop)
            enforcer = Enforcer(authorizer, topics, (r.key for r in ROUTES))
            log.info("authorizer on: %d ACLs, super users %s", len(authorizer), ", ".join(s.super_user_list) or "none")

        # After registering: the coordinator picks groups by the live brokers and takes over dead ones' leases.
        # With the authorizer, a KIP-848 member's regex matches only the topics it may describe.
        coordinator = GroupCoordinator(
            metadata, topics, registry, self.broker_id, config_from_settings(s),
            consumer_config_from_settings(s, authorizer.may_describe_topic if authorizer is not None else None))
        await coordinator.start()
        # Parked JoinGroup/SyncGroup requests get NOT_COORDINATOR and the leases go, so another broker takes over.
        stack.push_async_callback(coordinator.stop)

        cluster = ClusterView(self.cluster_id, self.broker_id, registry, topics, s.auto_create_topics,
                              s.default_partitions, s.enforce_owner)
        credentials = ScramCredentialStore(metadata)
        self._authenticator = Authenticator(
            sasl_settings(s, credentials, self.cluster_id), ROUTES, self.metrics,
            FailedLogins(s.sasl_failed_login_limit, s.sasl_failed_login_window_ms), s.max_request_bytes,
            s.connection_failed_authentication_delay_ms)
        self._dispatcher = Dispatcher(ROUTES, [
            ROUTES,
            NoService(),
            cluster,
            ProduceService(cluster, topics, wal_writer, producers, metadata, self.metrics, self.faults),
            FetchService(cluster, topics, reader, index),
            AdminService(cluster, topics, reader, index, s),
            GroupService(coordinator, topics),
            UserService(credentials),
            AclService(acl_store),
        ], self.metrics, self._authenticator, enforcer)

        if s.http_listen:
            http_host, http_port = s.http_listen.rsplit(":", 1)
            http = HttpEndpoint(http_host, int(http_port), self.metrics, metadata, objects, registry,
                                functools.partial(_refresh_gauges, self.metrics, metadata, topics, index, reader))
            log.info("metrics and health on http://%s:%d (/metrics /healthz /readyz)", http_host, await http.start())
            stack.push_async_callback(http.stop)
        for server in servers:
            await server.start_serving()
            stack.callback(server.close)  # the first thing stop() does: accept no more connections
        # What exists now (modules, settings, services) lives as long as the broker: the cycle collector need not
        # scan it again in each full collection, whose pause is the broker's worst produce latency.
        gc.freeze()
        log.info("dray %s broker %d ready on %s (advertised %s, zone %s, cluster %s, metadata %s, objects %s)",
                 VERSION, self.broker_id, ", ".join(map(str, self.listeners)),
                 ", ".join(str(bound.advertised()) for bound in self.listeners), s.zone, self.cluster_id,
                 s.metadata_url, s.object_store_url)

    async def stop(self) -> None:
        """Stop accepting, drain (commit and ack what is buffered), then stop everything in reverse order."""
        await self._stack.aclose()
        log.info("dray broker %d stopped", self.broker_id)

    async def _drain(self, wal_writer: WalWriter) -> None:
        """Stop reading requests, answer those read, then close the connections. Shutdown is bounded (an
        orchestrator kills a broker that takes too long): what the stores do not commit in time is answered with
        an error or not at all, never acked, so producers retry it elsewhere."""
        drained = asyncio.ensure_future(
            asyncio.gather(wal_writer.close(), *(c.drain() for c in list(self.connections))))
        waited = 0.0
        while not drained.done() and waited < DRAIN_TIMEOUT_S:
            step = min(DRAIN_REPORT_S, DRAIN_TIMEOUT_S - waited)
            await asyncio.wait({drained}, timeout=step)
            waited += step
            if not drained.done() and waited < DRAIN_TIMEOUT_S:
                log.info("draining: waiting for %s (at most %.0f s more)", self._undrained(wal_writer),
                         DRAIN_TIMEOUT_S - waited)
        if not drained.done():
            log.warning("after %.0f s, still waiting for %s; closing anyway", DRAIN_TIMEOUT_S,
                        self._undrained(wal_writer))
            drained.cancel()
        (outcome,) = await asyncio.gather(drained, return_exceptions=True)
        if isinstance(outcome, Exception):
            log.error("draining failed: %r", outcome)
        for c in list(self.connections):
            c.close("broker shutting down")

    def _undrained(self, wal_writer: WalWriter) -> str:
        flushes = wal_writer.flushes_in_flight
        waiting = sum(1 for c in self.connections if c.unanswered)
        return (f"{flushes} WAL flush{'es' if flushes != 1 else ''} in flight and {waiting} "
                f"connection{'s' if waiting != 1 else ''} with unanswered requests")

    # --- connections ------------------------------------------------------------------------------------------

    def _new_connection(self, listener: Listener) -> Connection:
        assert self._dispatcher is not None, "connections are accepted once the broker has started"
        conn = Connection(self._dispatcher.dispatch, self.settings.max_request_bytes, self._connection_closed,
                          self.request_budget, listener=self._bound(listener),
                          identify=self.tls.principal if listener.tls and self.tls is not None else None,
                          on_open=self._connection_opened)
        if conn.listener.sasl:  # the login comes first (server/authentication.py)
            assert self._authenticator is not None
            self._authenticator.attach(conn)
        return conn

    def _connection_opened(self, conn: Connection) -> None:
        # (A TLS client is counted once its handshake is done: one that fails it never opens, nor closes.)
        self.connections.add(conn)
        self.metrics.connections.inc()

    def reload_tls(self) -> None:
        """SIGHUP: load the TLS files again (new handshakes use them; open connections keep theirs)."""
        if self.tls is not None:
            self.tls.reload("SIGHUP")

    def _bound(self, listener: Listener) -> Listener:
        """The bound listener (port known) of a configured one."""
        return next(bound for bound in self.listeners if bound.protocol == listener.protocol)

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


def _run_until_stopped(stack: contextlib.AsyncExitStack, coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run coro in a task that stopping the broker cancels."""
    task = asyncio.create_task(coro, name=name)
    stack.callback(task.cancel)


async def _refresh_gauges(metrics: BrokerMetrics, metadata: MetadataStore, topics: TopicCatalog, index: OffsetIndex,
                          reader: PartitionReader) -> None:
    """Gauges computed at scrape time: the metadata session, compaction lag of the partitions this broker has
    served."""
    metrics.session_generation.set(metadata.session.generation)
    metrics.session_alive.set(1 if metadata.session.alive else 0)
    metrics.compaction_lag.clear()
    for ref, log_end in list(reader.log_ends().items())[:MAX_LAG_PARTITIONS]:
        topic = topics.by_id(ref.topic_id)
        if topic is not None:
            watermark, _ = await index.compacted_watermark(ref)
            metrics.compaction_lag.labels(topic.name, str(ref.partition)).set(max(log_end - watermark, 0))


async def _batch_headers(reader: PartitionReader, p: PartitionRef,
                         entry: IndexEntry) -> list[tuple[int, int, int, int]]:
    return batch_headers((await reader.load(entry)).data)


async def _follow_index(watch: IndexWatch, reader: PartitionReader) -> None:
    """Index changes from every broker: move log ends and wake long-polling fetches."""
    try:
        async for change in watch:
            if change.log_end is not None:
                reader.index_changed(change.partition, change.log_end)
            elif change.log_start:
                reader.log_start_changed(change.partition)
            elif change.watermark:
                reader.watermark_changed(change.partition)
    except asyncio.CancelledError:
        await watch.aclose()
        raise
    except Exception:
        log.exception("index watch failed")
