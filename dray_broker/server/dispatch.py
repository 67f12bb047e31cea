"""From a request frame to its answer: find the API's route (server/routes.py), decode the request, call the
route's handler with its service and the request context, and encode what it returns. The connection
(server/connection.py) writes the answers, in request order.

Authorization (DESIGN.md invariant 10) happens here, between decoding and the handler: with --acls the Enforcer
(auth/enforce.py) applies the checks each route's API needs (auth/api_checks.py), answering a denied request itself
or handing the handler the request without the resources it may not touch, and completing the handler's answer.
Without --acls there is no Enforcer and no per-request work.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from dray_broker.auth.enforce import Enforcer, Finish
from dray_broker.logs import request_context
from dray_broker.observability.metrics import ApiMetrics, BrokerMetrics
from dray_broker.protocol import apis
from dray_broker.protocol.codec import Request, UnsupportedVersionError, encode_response, peek_header
from dray_broker.server.api_versions import unsupported_api_versions_frame
from dray_broker.server.authentication import PROCEED, Authenticator
from dray_broker.server.connection import Connection, FrameAnswer, Written
from dray_broker.server.handling import (
    NO_RESPONSE,
    Answer,
    Deferred,
    HandlerResult,
    NoResponse,
    RequestContext,
    Response,
    Route,
    RouteTable,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Bound:
    """A route with its handler bound to the broker's instance of the route's service."""

    route: Route[Any]
    call: Callable[[RequestContext, Request], Awaitable[HandlerResult]]
    metrics: ApiMetrics


class Dispatcher:
    def __init__(self, routes: RouteTable, services: Iterable[object], metrics: BrokerMetrics,
                 authenticator: Authenticator | None = None, enforcer: Enforcer | None = None):
        """services: one instance of each service type the routes name (a missing one fails here, not when a
        request comes). authenticator: for the connections of SASL listeners. enforcer: the authorizer's checks
        (--acls), or None."""
        self.authenticator = authenticator
        by_type = {type(s): s for s in services}
        self.routes = routes
        self._enforcer = enforcer
        self._bound: dict[int, _Bound] = {}
        for r in routes:
            if r.service not in by_type:
                raise ValueError(f"no {r.service.__name__} for the {r.name} route")
            self._bound[r.key] = _Bound(r, functools.partial(r.handler, by_type[r.service]), metrics.api(r.name))

    async def dispatch(self, frame: bytes, conn: Connection) -> FrameAnswer:
        if conn.sasl is not None:  # a SASL listener's connection: the login first (server/authentication.py)
            assert self.authenticator is not None
            answer = await self.authenticator.gate(frame, conn)
            if answer is not PROCEED:
                return answer  # type: ignore[return-value]
        api_key, version, correlation_id = peek_header(frame)
        bound = self._bound.get(api_key)
        if bound is None or not bound.route.accepts(version):
            if api_key == apis.API_VERSIONS:
                return unsupported_api_versions_frame(self.routes, correlation_id)
            conn.close(f"API key {api_key} version {version} is not supported")
            return NO_RESPONSE
        route = bound.route
        try:
            req = route.decode(frame)
        except UnsupportedVersionError as e:
            conn.close(str(e))
            return NO_RESPONSE
        conn.client_id = req.client_id
        request_context.set((req.client_id, correlation_id))
        ctx = RequestContext(req.client_id, conn.host, conn.principal, conn.listener.name)
        metrics = bound.metrics
        metrics.requests.inc()
        started = time.perf_counter()
        finish = None
        if self._enforcer is not None:
            verdict = self._enforcer.check(ctx, req)
            if isinstance(verdict, Response):
                metrics.seconds.observe(time.perf_counter() - started)
                return encode_response(api_key, version, correlation_id, verdict.body)
            req, finish = verdict
        try:
            result = await bound.call(ctx, req)
        except Exception:
            metrics.errors.inc()
            raise
        if isinstance(result, Response):
            if finish is not None:
                result = Response(finish(result.body))
            metrics.seconds.observe(time.perf_counter() - started)
            return encode_response(api_key, version, correlation_id, result.body)
        if isinstance(result, Deferred):
            if not route.deferred:
                if asyncio.iscoroutine(result.answer):
                    result.answer.close()  # never to be awaited
                raise TypeError(f"the {route.name} handler deferred its answer, but its route is not deferred")
            return Deferred(self._answer_later(req, metrics, started, result.answer, finish))
        return NO_RESPONSE

    async def _answer_later(self, req: Request, metrics: ApiMetrics, started: float,
                            answer: Awaitable[Answer], finish: Finish | None = None) -> Written:
        try:
            response = await answer
        except ConnectionResetError as e:
            log.warning("dropping the connection: %s", e)
            return None
        except Exception:
            metrics.errors.inc()
            log.exception("request %d v%d from %s failed", req.api_key, req.version, req.client_id)
            return None
        if isinstance(response, NoResponse):  # acks=0: nothing to answer once its batches are committed
            return NO_RESPONSE
        metrics.seconds.observe(time.perf_counter() - started)
        body = response.body if finish is None else finish(response.body)
        return encode_response(req.api_key, req.version, req.correlation_id, body)
