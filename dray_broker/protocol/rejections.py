"""Answers for the transaction APIs, which Dray does not implement yet (DESIGN.md section 3: transactions are
rejected with the proper error codes).

They are not advertised in ApiVersions, so well-behaved clients never send them: librdkafka and the Java client
refuse to start a transactional producer against a broker that lacks them. A client that sends one anyway gets a
well-formed response of the version it asked for, with every error code set, instead of a closed connection
(which clients retry, and which reads as a broker fault).

Which error (Kafka's codes, chosen for what clients do with them):
- AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit: TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53).
  Every client treats it as fatal for the transactional producer, so the application gets one clear error
  instead of a retry loop; the retriable candidates (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE) would loop
  until a timeout, and UNSUPPORTED_VERSION reads as a protocol bug. It is also what our Produce handler answers
  for transactional batches, and what Redpanda answers when its transactions are disabled.
- DescribeTransactions: TRANSACTIONAL_ID_NOT_FOUND (105) per id, the truth: no transactional id exists here.
- ListTransactions: no error and an empty list, the truth as well (unknown state filters are reported back, as
  Kafka does).
- WriteTxnMarkers: CLUSTER_AUTHORIZATION_FAILED (31). It is an inter-broker API (transaction coordinator to
  partition leaders) and Kafka answers that to any caller not allowed CLUSTER_ACTION; here nobody is.

The response is built by walking the version's response dataclass: error codes get the code, error messages a
message, arrays echo the requested elements (topics, partitions, transactional ids, markers) and their
identifying fields (names, indexes, ids), everything else takes its schema default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType

from dray_broker.protocol import apis
from dray_broker.protocol.codec import Request, response_module
from dray_broker.protocol.kio_shim import (
    EntityField,
    EntityTupleField,
    PrimitiveTupleField,
    classify_field,
    implicit_default,
    is_optional,
    kafka_type,
)
from dray_broker.server.handling import NoService, RequestContext, Response

MESSAGE = "transactions are not supported by this broker (Dray)"

ERRORS: dict[int, ErrorCode] = {
    apis.ADD_PARTITIONS_TO_TXN: ErrorCode.transactional_id_authorization_failed,
    apis.ADD_OFFSETS_TO_TXN: ErrorCode.transactional_id_authorization_failed,
    apis.END_TXN: ErrorCode.transactional_id_authorization_failed,
    apis.TXN_OFFSET_COMMIT: ErrorCode.transactional_id_authorization_failed,
    apis.DESCRIBE_TRANSACTIONS: ErrorCode.transactional_id_not_found,
    apis.LIST_TRANSACTIONS: ErrorCode.none,
    apis.WRITE_TXN_MARKERS: ErrorCode.cluster_authorization_failed,
}

# Kafka's transaction states (TransactionState.java), for ListTransactions' unknown_state_filters.
TRANSACTION_STATES = frozenset({"Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit",
                                "CompleteAbort", "Dead", "PrepareEpochFence"})

# A response array and the request array it answers, where their names differ.
_LIST_SOURCES: dict[str, tuple[str, ...]] = {
    "results_by_topic_v3_and_below": ("v3_and_below_topics",),
    "results_by_transaction": ("transactions",),
    "topic_results": ("topics",),
    "results_by_partition": ("partitions",),
    "partitions": ("partitions", "partition_indexes"),
    "transaction_states": ("transactional_ids",),
    "results": ("creations",),  # CreateAcls
    "filter_results": ("filters",),  # DeleteAcls
}
_INT_TYPES = frozenset({"int8", "int16", "int32", "int64"})


async def handle_transaction_api(_: NoService, ctx: RequestContext, req: Request) -> Response:
    """An error response of the requested version for any transaction API (see the module docstring)."""
    code = ERRORS[req.api_key]
    response = error_response(response_class(req.api_key, req.version), req.body, code, MESSAGE if code != ErrorCode.none else None)
    if req.api_key == apis.LIST_TRANSACTIONS and hasattr(response, "unknown_state_filters"):
        unknown = tuple(s for s in (getattr(req.body, "state_filters", None) or ()) if s not in TRANSACTION_STATES)
        response = dataclasses.replace(response, unknown_state_filters=unknown)
    return Response(response)


def response_class(api_key: int, version: int) -> type:
    """The top-level response dataclass of an API version."""
    M = response_module(api_key, version)
    return next(v for v in vars(M).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
                and getattr(v, "__type__", None) is EntityType.response)


def error_response(cls: type, request: Any, code: ErrorCode, message: str | None) -> Any:
    return _build(cls, request, code, message, top=True)


def error_entry(cls: type, request_item: Any, code: ErrorCode, message: str | None = None) -> Any:
    """One entry of a response array (a topic, a group, a resource) answering `request_item` with `code`: its
    identifying fields echoed, its nested arrays (partitions) echoed with the code too."""
    return _build(cls, request_item, code, message)


def _build(cls: type, source: Any, code: ErrorCode, message: str | None, *, top: bool = False) -> Any:
    values: dict[str, Any] = {}
    scalar_used = False
    for f in dataclasses.fields(cls):
        kind = classify_field(f)
        wire = kafka_type(f)
        if wire == "error_code":
            values[f.name] = code
        elif f.name == "error_message":
            values[f.name] = message
        elif isinstance(kind, EntityTupleField):
            values[f.name] = tuple(_build(kind.type_, item, code, message) for item in _source_list(source, f.name))
        elif isinstance(kind, PrimitiveTupleField):
            values[f.name] = ()
        elif isinstance(kind, EntityField):
            values[f.name] = _build(kind.type_, None, code, message)
        else:
            echoed: Any = _MISSING
            if not top and source is not None and not dataclasses.is_dataclass(source):
                # An element given as a bare value (a partition index, a transactional id): it fills the first
                # field of its kind.
                if not scalar_used and _fits(source, wire):
                    echoed, scalar_used = source, True
            elif not top and source is not None:
                for name in (f.name, "v3_and_below_" + f.name):
                    if hasattr(source, name):
                        echoed = getattr(source, name)
                        break
            values[f.name] = echoed if echoed is not _MISSING else _default(f, kind)
    return cls(**values)


_MISSING = object()


def _fits(value: Any, wire: str) -> bool:
    if isinstance(value, bool):
        return wire == "bool"
    if isinstance(value, int):
        return wire in _INT_TYPES
    if isinstance(value, str):
        return wire == "string"
    return False


def _source_list(source: Any, name: str) -> tuple[Any, ...]:
    if source is None or not dataclasses.is_dataclass(source):
        return ()
    for candidate in (name, *_LIST_SOURCES.get(name, ())):
        value = getattr(source, candidate, None)
        if isinstance(value, tuple):
            return value
    return ()


def _default(f: dataclasses.Field[Any], kind: Any) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if is_optional(f):
        return None
    if kafka_type(f) == "bool":
        return False
    return implicit_default(kind.type_)
