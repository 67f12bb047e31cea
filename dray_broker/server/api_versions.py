"""The ApiVersions API, answered from the route table (server/routes.py): the advertised routes and their versions."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from dray_broker.protocol import apis
from dray_broker.protocol.codec import Request, encode_response, make, response_module
from dray_broker.server.handling import RequestContext, Response, RouteTable


async def handle_api_versions(routes: RouteTable, ctx: RequestContext, req: Request) -> Response:
    return Response(api_versions_response(routes, req.version))


def api_versions_response(routes: RouteTable, version: int, error: ErrorCode = ErrorCode.none) -> Any:
    M = response_module(apis.API_VERSIONS, version)
    return make(
        M.ApiVersionsResponse, error_code=error, throttle_time=0,
        api_keys=tuple(make(M.ApiVersion, api_key=r.key, min_version=r.min_version, max_version=r.max_version)
                       for r in routes.advertised()),
    )


def unsupported_api_versions_frame(routes: RouteTable, correlation_id: int) -> list[bytes]:
    """A client asked ApiVersions with a version we lack: answer v0 with UNSUPPORTED_VERSION and our ranges, as
    Kafka does, so that the client retries with a version in range."""
    response = api_versions_response(routes, 0, ErrorCode.unsupported_version)
    return encode_response(apis.API_VERSIONS, 0, correlation_id, response)
