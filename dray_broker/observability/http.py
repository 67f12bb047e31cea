"""The broker's HTTP endpoint: /metrics (Prometheus text), /healthz (the process serves), /readyz (the
metadata store and the object store answer)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

READY_CHECK_TIMEOUT_S = 3.0


class HttpEndpoint:
    def __init__(self, broker, host: str, port: int):
        self.broker = broker
        self.host = host
        self.port = port
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
        self.port = site._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.broker.refresh_gauges()
        body = generate_latest(self.broker.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = []
        checks = {
            "metadata store": self.broker.metadata.get("/dray/cluster"),
            "object store": self.broker.objects.head("wal/.readyz"),
        }
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check, READY_CHECK_TIMEOUT_S)
            except Exception as e:  # any failure means not ready; say which and why
                problems.append(f"{name}: {e!r}")
        if problems:
            return web.Response(status=503, text="not ready\n" + "\n".join(problems) + "\n")
        return web.Response(text="ready\n")
