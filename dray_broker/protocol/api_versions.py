"""The ApiVersions API, answered from the one table in protocol/apis.py."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from dray_broker.protocol import apis
from dray_broker.protocol.codec import encode_response, make, response_module


def api_versions_response(version: int, handled: set[int], error: ErrorCode = ErrorCode.none):
    M = response_module(apis.API_VERSIONS, version)
    return make(
        M.ApiVersionsResponse, error_code=error, throttle_time=0,
        api_keys=tuple(make(M.ApiVersion, api_key=s.key, min_version=s.min_version, max_version=s.max_version)
                       for s in apis.advertised(handled)),
    )


def unsupported_api_versions_frame(correlation_id: int, handled: set[int]) -> list:
    """A client asked ApiVersions with a version we lack: answer v0 with UNSUPPORTED_VERSION and our ranges, as
    Kafka does, so that the client retries with a version in range."""
    response = api_versions_response(0, handled, ErrorCode.unsupported_version)
    return encode_response(apis.API_VERSIONS, 0, correlation_id, response)
