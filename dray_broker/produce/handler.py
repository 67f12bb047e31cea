"""The Produce API: validate each partition's batches, hand them to the WAL writer, answer when committed."""

from __future__ import annotations

import asyncio
import logging

from kio.schema.errors import ErrorCode

from dray_broker.produce.wal_writer import FlushError
from dray_broker.protocol.codec import Request, make, response_module
from dray_broker.records.batch import InvalidBatchError, validate_batches
from dray_broker.server.connection import NO_RESPONSE

log = logging.getLogger(__name__)


async def handle_produce(broker, req: Request):
    body = req.body
    M = response_module(req.api_key, req.version)
    acks = body.acks
    # (topic key for the response, partition index, immediate error or pending future, error message)
    pending: list[tuple[object, list]] = []
    for topic_data in body.topic_data:
        name = getattr(topic_data, "name", None)
        topic_id = getattr(topic_data, "topic_id", None)
        topic = await broker.topics.get(name) if name is not None else broker.topics.by_id(topic_id)
        parts = []
        for pd in topic_data.partition_data:
            if body.transactional_id is not None:
                parts.append((pd.index, ErrorCode.transactional_id_authorization_failed,
                              "transactions are not supported by this broker"))
            elif acks not in (-1, 0, 1):
                parts.append((pd.index, ErrorCode.invalid_required_acks, f"acks must be -1, 0 or 1, not {acks}"))
            elif topic is None:
                parts.append((pd.index, ErrorCode.unknown_topic_id if name is None else ErrorCode.unknown_topic_or_partition,
                              "unknown topic"))
            elif not 0 <= pd.index < topic.partitions:
                parts.append((pd.index, ErrorCode.unknown_topic_or_partition, f"topic {topic.name} has no partition {pd.index}"))
            elif pd.records is None:
                parts.append((pd.index, ErrorCode.corrupt_message, "no records"))
            else:
                try:
                    summary = validate_batches(pd.records, topic.int_config("max.message.bytes"))
                    if summary.is_transactional:
                        raise InvalidBatchError("transactional batches are not supported", ErrorCode.transactional_id_authorization_failed)
                except InvalidBatchError as e:
                    parts.append((pd.index, ErrorCode(e.kafka_error), str(e)))
                    continue
                parts.append((pd.index, broker.wal_writer.append(topic.partition(pd.index), pd.records, summary), None))
        pending.append((topic_data, parts))

    if acks == 0:
        for _, parts in pending:
            for _, outcome, _ in parts:
                if isinstance(outcome, asyncio.Future):
                    outcome.add_done_callback(_log_unacked_failure)
        return NO_RESPONSE
    return _respond(broker, req, M, pending)


def _log_unacked_failure(future: asyncio.Future) -> None:
    if future.exception() is not None:
        log.warning("acks=0 produce lost to a failed flush: %s", future.exception())


async def _respond(broker, req: Request, M, pending):
    topics = []
    for topic_data, parts in pending:
        responses = []
        for index, outcome, message in parts:
            base_offset = -1
            if isinstance(outcome, asyncio.Future):
                try:
                    base_offset = await outcome
                    error, message = ErrorCode.none, None
                except FlushError as e:
                    error, message = ErrorCode.kafka_storage_error, str(e)
            else:
                error = outcome
            responses.append(make(
                M.PartitionProduceResponse, index=index, error_code=error, base_offset=base_offset,
                log_append_time=None, log_start_offset=-1, record_errors=(), error_message=message,
            ))
        topics.append(make(M.TopicProduceResponse, name=getattr(topic_data, "name", None),
                           topic_id=getattr(topic_data, "topic_id", None), partition_responses=tuple(responses)))
    return make(M.ProduceResponse, responses=tuple(topics), throttle_time=0)
