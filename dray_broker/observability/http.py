"""The broker's HTTP endpoint: /metrics (Prometheus text), /healthz (the process serves), /readyz (the
metadata store and the object store answer, and the broker is registered in a live metadata session: not while a
lost session is being renewed)."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dray_broker.keyspace import CLUSTER_ID
from dray_broker.metadata import MetadataStore
from dray_broker.objectstore import ObjectStore
from dray_broker.observability.metrics import BrokerMetrics
from dray_broker.routing.registry import BrokerRegistry

log = logging.getLogger(__name__)

READY_CHECK_TIMEOUT_S = 3.0


class HttpEndpoint:
    def __init__(self, host: str, port: int, metrics: BrokerMetrics, metadata: MetadataStore, objects: ObjectStore,
                 registry: BrokerRegistry, refresh_gauges: Callable[[], Awaitable[None]]):
        """refresh_gauges: sets the gauges computed at scrape time."""
        self.host = host
        self.port = port
        self.metrics = metrics
        self.metadata = metadata
        self.objects = objects
        self.registry = registry
        self.refresh_gauges = refresh_gauges
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the bound port (port 0 asks the system for a free one)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.refresh_gauges()
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        session = self.metadata.session
        if not session.alive:  # known at once: no need to wait for the store checks
            return _not_ready([f"metadata session: generation {session.generation} expired, not renewed yet"])
        if not self.registry.ready:
            return _not_ready([f"broker registration: not registered in metadata session generation "
                               f"{session.generation} yet"])
        checks = {
            "metadata store": self.metadata.get(CLUSTER_ID),
            "object store": self.objects.head("wal/.readyz"),
        }
        results = await asyncio.gather(*(asyncio.wait_for(c, READY_CHECK_TIMEOUT_S) for c in checks.values()),
                                       return_exceptions=True)
        # any failure means not ready; say which and why
        problems = [f"{name}: {r!r}" for name, r in zip(checks, results) if isinstance(r, BaseException)]
        if problems:
            return _not_ready(problems)
        return web.Response(text="ready\n")


def _not_ready(problems: list[str]) -> web.Response:
    return web.Response(status=503, text="not ready\n" + "\n".join(problems) + "\n")
