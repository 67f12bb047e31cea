"""The Produce and InitProducerId APIs: validate each partition's batches, deduplicate idempotent ones, hand
them to the WAL writer, answer when committed."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from kio.schema.errors import ErrorCode

from dray_broker.produce.legacy_request import decode_legacy_produce_request
from dray_broker.produce.producers import ProduceRejected, allocate_producer_id
from dray_broker.produce.response import PartitionResult, TopicResult, encode_produce_response
from dray_broker.produce.wal_writer import FlushError
from dray_broker.protocol.codec import Request, decode_request, make, peek_header, response_module
from dray_broker.records.batch import InvalidBatchError, validate_batches
from dray_broker.records.decode import RecordDecodeError
from dray_broker.records.keys import keyless_record
from dray_broker.records.legacy import up_convert
from dray_broker.records.recompress import TOPIC_CODECS, needs_recompression, recompress
from dray_broker.server.handling import (
    NO_RESPONSE,
    Answer,
    Deferred,
    HandlerResult,
    NoResponse,
    RequestContext,
    Response,
)
from dray_broker.server.services import ProduceService
from dray_broker.topics.catalog import Topic

log = logging.getLogger(__name__)

TRANSACTIONS_UNSUPPORTED = "transactions are not supported by this broker"
_MAGIC_AT = 16
# A partition's outcome: (partition index, an ErrorCode or the future of its base offset, error message)
Outcome = tuple[int, ErrorCode | asyncio.Future[int], str | None]


def decode_produce_request(frame: bytes) -> Request:
    """v0-v2 by hand (kio has no schema for them), later versions by kio."""
    _, version, _ = peek_header(frame)
    return decode_legacy_produce_request(frame) if version < 3 else decode_request(frame)


async def handle_produce(service: ProduceService, ctx: RequestContext, req: Request) -> HandlerResult:
    """Validate and buffer every partition's batches now, in request order (so offsets follow it); answer once
    they are committed, later (Deferred), or never for acks=0."""
    started = time.perf_counter()
    body = req.body
    acks = body.acks
    pending: list[tuple[Any, list[Outcome]]] = []  # per topic: its request entry and its partitions' outcomes
    for topic_data in body.topic_data:
        name = getattr(topic_data, "name", None)  # v0-v12
        topic = await service.topics.get(name) if name is not None else service.topics.by_id(topic_data.topic_id)
        parts: list[Outcome] = []
        for pd in topic_data.partition_data:
            if body.transactional_id is not None:
                parts.append((pd.index, ErrorCode.transactional_id_authorization_failed, TRANSACTIONS_UNSUPPORTED))
            elif ctx.denied_topics and (name or (topic.name if topic else None)) in ctx.denied_topics:
                parts.append((pd.index, ErrorCode.topic_authorization_failed, "not authorized to write the topic"))
            elif acks not in (-1, 0, 1):
                parts.append((pd.index, ErrorCode.invalid_required_acks, f"acks must be -1, 0 or 1, not {acks}"))
            elif topic is None:
                parts.append((pd.index, ErrorCode.unknown_topic_id if name is None else ErrorCode.unknown_topic_or_partition,
                              "unknown topic"))
            elif not 0 <= pd.index < topic.partitions:
                parts.append((pd.index, ErrorCode.unknown_topic_or_partition, f"topic {topic.name} has no partition {pd.index}"))
            elif (leader := service.cluster.other_owner(topic.id, pd.index, ctx.client_id, ctx.listener)) is not None:
                parts.append((pd.index, ErrorCode.not_leader_or_follower, f"partition {pd.index} is served by "
                              f"broker {leader.id}"))
            elif pd.records is None:
                parts.append((pd.index, ErrorCode.corrupt_message, "no records"))
            else:
                parts.append((pd.index, *_append(service, topic, pd.index, pd.records, req.version)))
        pending.append((topic_data, parts))

    if acks == 0:
        appended = [outcome for _, parts in pending for _, outcome, _ in parts if isinstance(outcome, asyncio.Future)]
        return Deferred(_unacknowledged(appended)) if appended else NO_RESPONSE
    return Deferred(_respond(service, req, pending, started))


def _append(service: ProduceService, topic: Topic, index: int, records: bytes | memoryview,
            version: int) -> tuple[ErrorCode | asyncio.Future[int], str | None]:
    max_bytes = topic.int_config("max.message.bytes")
    try:
        if version < 3 and _is_legacy(records):
            records = up_convert(records, now_ms=int(time.time() * 1000), max_bytes=max_bytes)
            service.metrics.produce_conversions.inc()
        summary = validate_batches(records, max_bytes)
        codec = TOPIC_CODECS[topic.config("compression.type")]
        if codec is not None and needs_recompression(records, codec):
            records = recompress(records, codec)
            service.metrics.produce_recompressions.inc()
            summary = validate_batches(records, max_bytes)  # as Kafka, the size limit holds for what is stored
        if topic.compacted and (delta := keyless_record(records, max_bytes)) is not None:
            return ErrorCode.invalid_record, (f"compacted topic {topic.name} cannot accept a record without a key "
                                              f"(record {delta} of the batch)")
    except InvalidBatchError as e:
        return ErrorCode(e.kafka_error), str(e)
    except (RecordDecodeError, IndexError) as e:
        return ErrorCode.corrupt_message, str(e) or "records are truncated"
    if summary.is_transactional:
        return ErrorCode.transactional_id_authorization_failed, TRANSACTIONS_UNSUPPORTED
    ref = topic.partition(index)
    if summary.producer_id < 0:
        return service.wal_writer.append(ref, records, summary), None
    # Idempotent: reserved (deduplicated) first, then appended; the connection does not wait for either.
    return service.producers.submit(
        ref, summary, lambda guard, after: service.wal_writer.append(ref, records, summary, guard=guard, after=after),
    ), None


def _is_legacy(records: bytes | memoryview) -> bool:
    """Magic 0 or 1: a message set of an old client (Produce v0-v2), which Kafka up-converted to v2 batches as
    this broker does. The magic byte is at the same place in every format."""
    return len(records) > _MAGIC_AT and records[_MAGIC_AT] < 2


async def _unacknowledged(appended: list[asyncio.Future[int]]) -> NoResponse:
    """acks=0: no answer, but the request (its bytes are the batches being written) stays in the request budget
    until its batches are committed or failed."""
    for future in appended:
        try:
            await future
        except Exception as e:
            log.warning("acks=0 produce lost: %s", e)
    return NO_RESPONSE


async def _respond(service: ProduceService, req: Request, pending: list[tuple[Any, list[Outcome]]],
                   started: float) -> Answer:
    topics: list[TopicResult] = []
    for topic_data, parts in pending:
        results: list[PartitionResult] = []
        for index, outcome, message in parts:
            base_offset = -1
            if isinstance(outcome, asyncio.Future):
                try:
                    base_offset = await outcome
                    error, message = ErrorCode.none, None
                except FlushError as e:
                    error, message = ErrorCode.kafka_storage_error, str(e)
                except ProduceRejected as e:
                    error, message = e.error, str(e)
                except Exception as e:  # every outcome is taken, so that none is left with an unread error
                    log.exception("produce to partition %d failed", index)
                    error, message = ErrorCode.unknown_server_error, repr(e)
            else:
                error = outcome
            results.append((index, error, base_offset, message))
        topics.append((getattr(topic_data, "name", None), getattr(topic_data, "topic_id", None), results))
    service.metrics.produce_ack_seconds.observe(time.perf_counter() - started)
    if service.faults.fire("drop-produce-response"):
        raise ConnectionResetError("fault injection: produce committed, response dropped")
    return Response(encode_produce_response(req.version, topics))


async def handle_init_producer_id(service: ProduceService, ctx: RequestContext, req: Request) -> Response:
    """A new producer id (epoch 0) for an idempotent producer; transactional ids are refused."""
    M = response_module(req.api_key, req.version)
    if req.body.transactional_id is not None:
        return Response(make(M.InitProducerIdResponse, throttle_time=0,
                             error_code=ErrorCode.transactional_id_authorization_failed, producer_id=-1,
                             producer_epoch=-1))
    producer_id = await allocate_producer_id(service.metadata)
    return Response(make(M.InitProducerIdResponse, throttle_time=0, error_code=ErrorCode.none,
                         producer_id=producer_id, producer_epoch=0))
