"""The Fetch API: read each partition from its offset, long-poll until min_bytes or max_wait."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kio.schema.errors import ErrorCode

from dray_broker.fetch.reader import OffsetOutOfRange
from dray_broker.fetch.response import PartitionResult, TopicResult, encode_fetch_response
from dray_broker.index.offsets import PartitionRef
from dray_broker.protocol.codec import Request, ms
from dray_broker.server.handling import RequestContext, Response
from dray_broker.server.services import FetchService
from dray_broker.topics.catalog import Topic

# What a fetch asks for, resolved once: (topic request entry, its topic or None, [(partition request entry, its
# PartitionRef, None if the topic has no such partition)])
Wanted = list[tuple[Any, Topic | None, list[tuple[Any, PartitionRef | None]]]]


async def handle_fetch(service: FetchService, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    deadline = time.monotonic() + max(ms(body.max_wait), 0) / 1000
    min_bytes = body.min_bytes
    max_bytes = getattr(body, "max_bytes", 0x7FFFFFFF)

    wanted: Wanted = []
    for t in body.topics:
        name = getattr(t, "topic", None)  # v4-v12
        topic = await service.topics.get(name) if name is not None else service.topics.by_id(t.topic_id)
        wanted.append((t, topic, [(p, topic.partition(p.partition) if topic and 0 <= p.partition < topic.partitions else None)
                                  for p in t.partitions]))

    while True:
        events = [service.reader.signals.event(ref) for _, _, parts in wanted for _, ref in parts if ref is not None]
        topics, total, any_error = await _read_all(service, wanted, max_bytes, ctx.client_id, ctx.listener,
                                                   ctx.denied_topics)
        remaining = deadline - time.monotonic()
        if total >= min_bytes or any_error or remaining <= 0 or not events:
            break
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if time.monotonic() >= deadline and not any(e.is_set() for e in events):
            break
    return Response(encode_fetch_response(req.version, topics))


async def _read_all(service: FetchService, wanted: Wanted, max_bytes: int, client_id: str | None, listener: str,
                    denied: frozenset[str]) -> tuple[list[TopicResult], int, bool]:
    topics: list[TopicResult] = []
    total = 0
    any_error = False
    for t, topic, parts in wanted:
        partitions: list[PartitionResult] = []
        for p, ref in parts:
            error = ErrorCode.none
            records: list[memoryview] | tuple[()] = ()
            hw = lso = -1
            if denied and (getattr(t, "topic", None) or (topic.name if topic else None)) in denied:
                error = ErrorCode.topic_authorization_failed
            elif topic is None:
                error = ErrorCode.unknown_topic_id if getattr(t, "topic", None) is None else ErrorCode.unknown_topic_or_partition
            elif ref is None:
                error = ErrorCode.unknown_topic_or_partition
            elif service.cluster.other_owner(topic.id, p.partition, client_id, listener) is not None:
                error = ErrorCode.not_leader_or_follower
            else:
                # As Kafka: the response's and the partition's byte limits hold for every partition except the
                # first one with data, which gets its first batch whole however large (so consumers progress).
                budget = min(p.partition_max_bytes, max(max_bytes - total, 0))
                try:
                    result = await service.reader.read(ref, p.fetch_offset, budget, min_one=total == 0)
                    records, hw, lso = result.pieces, result.high_watermark, result.log_start_offset
                    total += result.size
                except OffsetOutOfRange:
                    error = ErrorCode.offset_out_of_range
                    hw = await service.reader.log_end_offset(ref)
                    lso = await service.reader.log_start_offset(ref)
            any_error = any_error or error != ErrorCode.none
            partitions.append((p.partition, error, hw, lso, records))
        topics.append((getattr(t, "topic", None), getattr(t, "topic_id", None), partitions))
    return topics, total, any_error
