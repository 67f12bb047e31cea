"""The route table (server/routes.py) and the dispatcher (server/dispatch.py), in process: every route's versions are
ones the codec can decode and answer, ApiVersions lists what the table advertises, and the dispatcher holds
handlers to their routes (a Deferred only from a deferred route, a service for every route)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer

from dray_broker.observability.metrics import BrokerMetrics
from dray_broker.protocol import apis
from dray_broker.protocol.codec import ChunkWriter, Request, make
from dray_broker.server.api_versions import handle_api_versions
from dray_broker.server.connection import Connection
from dray_broker.server.dispatch import Dispatcher
from dray_broker.server.handling import (
    NO_RESPONSE,
    Deferred,
    HandlerResult,
    NoService,
    RequestContext,
    Response,
    RouteTable,
    deferred_route,
    route,
)
from dray_broker.server.request_budget import RequestBudget
from dray_broker.server.routes import ROUTES


def test_every_route_is_decodable_and_answerable_in_all_its_versions():
    for r in ROUTES:
        for version in range(r.min_version, r.max_version + 1):
            if r.key == apis.PRODUCE and version < 3:
                continue  # decoded and answered by hand (produce/legacy_request.py, produce/response.py)
            assert load_request_schema(r.key, version) and load_response_schema(r.key, version), (r.name, version)


def test_transaction_apis_are_routes_but_not_advertised():
    advertised = {r.key for r in ROUTES.advertised()}
    routed = {r.key for r in ROUTES}
    assert apis.TRANSACTION_APIS <= routed and not apis.TRANSACTION_APIS & advertised
    assert advertised == routed - apis.TRANSACTION_APIS
    assert {r.key for r in ROUTES if r.deferred} == {apis.PRODUCE, apis.JOIN_GROUP, apis.SYNC_GROUP}


# --- the dispatcher ---------------------------------------------------------------------------------------------


def _frame(api_key: int, version: int, correlation_id: int, **fields) -> bytes:
    req_cls = load_request_schema(api_key, version)
    header_cls = req_cls.__header_schema__
    out = ChunkWriter()
    entity_writer(header_cls)(out, header_cls(request_api_key=api_key, request_api_version=version,
                                              correlation_id=correlation_id, client_id="routes-test"))
    entity_writer(req_cls)(out, make(req_cls, **fields))
    return b"".join(out)


def _response(api_key: int, version: int, chunks: list[bytes]):
    frame = b"".join(chunks)
    (size,) = struct.unpack_from(">i", frame)
    assert size == len(frame) - 4
    resp_cls = load_response_schema(api_key, version)
    header, n = entity_reader(resp_cls.__header_schema__)(frame, 4)
    response, _ = entity_reader(resp_cls)(frame, 4 + n)
    return header.correlation_id, response


def _connection() -> Connection:
    """A connection as the dispatcher sees it (no socket: what it is told to close, it records)."""
    return Connection(lambda frame, conn: asyncio.sleep(0), 1 << 20, lambda conn: None, RequestBudget(1 << 20))


API_VERSIONS_V3 = dict(client_software_name="t", client_software_version="1")
# Two of the broker's routes, whose handlers need no store: ApiVersions (over this table) and EndTxn (rejected).
TABLE = RouteTable([r for r in ROUTES if r.key in (apis.API_VERSIONS, apis.END_TXN)])


async def test_api_versions_answers_from_the_table_and_unadvertised_routes_answer_too():
    dispatcher = Dispatcher(TABLE, [TABLE, NoService()], BrokerMetrics())
    answer = await dispatcher.dispatch(_frame(apis.API_VERSIONS, 3, 7, **API_VERSIONS_V3), _connection())
    assert isinstance(answer, list)
    correlation_id, response = _response(apis.API_VERSIONS, 3, answer)
    assert correlation_id == 7 and response.error_code == ErrorCode.none
    assert [(k.api_key, k.min_version, k.max_version) for k in response.api_keys] == [(apis.API_VERSIONS, 0, 4)]
    end_txn = _frame(apis.END_TXN, 3, 8, transactional_id="t", producer_id=5, producer_epoch=0, committed=True)
    answer = await dispatcher.dispatch(end_txn, _connection())
    assert isinstance(answer, list)
    correlation_id, response = _response(apis.END_TXN, 3, answer)
    assert correlation_id == 8 and response.error_code == ErrorCode.transactional_id_authorization_failed


async def test_api_versions_of_an_unknown_version_gets_v0_with_the_ranges_and_other_apis_close():
    dispatcher = Dispatcher(TABLE, [TABLE, NoService()], BrokerMetrics())
    frame = _frame(apis.API_VERSIONS, 3, 9, **API_VERSIONS_V3)
    newer = frame[:2] + struct.pack(">h", 99) + frame[4:]
    answer = await dispatcher.dispatch(newer, _connection())
    assert isinstance(answer, list)
    correlation_id, response = _response(apis.API_VERSIONS, 0, answer)
    assert correlation_id == 9 and response.error_code == ErrorCode.unsupported_version
    assert [k.api_key for k in response.api_keys] == [apis.API_VERSIONS]
    # An API that has no route, and a routed API at a version outside its range: the connection is closed.
    for key, version in ((apis.DELETE_RECORDS, 2), (apis.END_TXN, 6)):
        conn = _connection()
        assert await dispatcher.dispatch(struct.pack(">hhi", key, version, 9) + b"\x00" * 8, conn) is NO_RESPONSE
        assert conn._closing


class Probe:
    """A service for test routes: what its handlers were given."""

    def __init__(self) -> None:
        self.contexts: list[RequestContext] = []


async def handle_probe(probe: Probe, ctx: RequestContext, req: Request) -> HandlerResult:
    probe.contexts.append(ctx)

    async def later() -> Response:
        return Response(make(load_response_schema(req.api_key, req.version), error_code=ErrorCode.none,
                             throttle_time=0, api_keys=()))

    return Deferred(later())


async def test_a_deferred_answer_comes_from_deferred_routes_only():
    probe = Probe()
    frame = _frame(apis.API_VERSIONS, 3, 11, **API_VERSIONS_V3)
    deferring = RouteTable([deferred_route(apis.API_VERSIONS, "ApiVersions", (0, 4), Probe, handle_probe)])
    answer = await Dispatcher(deferring, [probe], BrokerMetrics()).dispatch(frame, _connection())
    assert isinstance(answer, Deferred)
    chunks = await answer.answer
    assert isinstance(chunks, list) and _response(apis.API_VERSIONS, 3, chunks)[0] == 11
    assert probe.contexts == [RequestContext("routes-test", "")]
    # The same handler on a route that is not deferred (mypy refuses this table; the dispatcher refuses the answer).
    immediate = RouteTable([route(apis.API_VERSIONS, "ApiVersions", (0, 4), Probe,
                                  handle_probe)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not deferred"):
        await Dispatcher(immediate, [probe], BrokerMetrics()).dispatch(frame, _connection())


def test_every_route_needs_its_service():
    table = RouteTable([route(apis.API_VERSIONS, "ApiVersions", (0, 4), RouteTable, handle_api_versions)])
    with pytest.raises(ValueError, match="no RouteTable for the ApiVersions route"):
        Dispatcher(table, [NoService()], BrokerMetrics())
