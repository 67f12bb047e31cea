"""The DeleteRecords API (v0-2): move partitions' log start offsets forward, as Kafka's ReplicaManager.deleteRecords.

Per partition, the requested offset becomes the log start offset (it never moves back: a lower one answers the
current log start). -1 means the high watermark (the log end: every acknowledged record is committed). Answers, as
Kafka does:
- an offset past the log end, or negative other than -1: OFFSET_OUT_OF_RANGE;
- an unknown topic or partition: UNKNOWN_TOPIC_OR_PARTITION; a partition another broker owns (owners enforced):
  NOT_LEADER_OR_FOLLOWER;
- a topic whose cleanup.policy does not include delete (compact only): POLICY_VIOLATION, since deleting would
  drop the latest value of keys a compacted topic promises to keep.
The log start is one CAS'd key of the offset index (durable in the metadata store, both backends). From then on
fetches below it answer OFFSET_OUT_OF_RANGE and ListOffsets EARLIEST answers it, on every broker; the pipelines'
retention job drops the table's data files below it, and WAL GC the WAL below it (dray_pipelines/gc.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kio.schema.errors import ErrorCode

from dray_broker.protocol.codec import Request, make, response_module
from dray_broker.server.handling import RequestContext, Response
from dray_broker.server.services import AdminService
from dray_broker.topics.catalog import Topic

log = logging.getLogger(__name__)

HIGH_WATERMARK = -1


async def handle_delete_records(admin: AdminService, ctx: RequestContext, req: Request) -> Response:
    M = response_module(req.api_key, req.version)
    topics = []
    for t in req.body.topics:
        topic = await admin.topics.get(t.name)
        results = await asyncio.gather(*(_partition(admin, ctx, topic, p) for p in t.partitions))
        topics.append(make(M.DeleteRecordsTopicResult, name=t.name, partitions=tuple(
            make(M.DeleteRecordsPartitionResult, partition_index=p.partition_index, low_watermark=low, error_code=error)
            for p, (error, low) in zip(t.partitions, results))))
    return Response(make(M.DeleteRecordsResponse, throttle_time=0, topics=tuple(topics)))


async def _partition(admin: AdminService, ctx: RequestContext, topic: Topic | None, p: Any) -> tuple[ErrorCode, int]:
    """(error, low watermark) for one partition."""
    if topic is None or not 0 <= p.partition_index < topic.partitions:
        return ErrorCode.unknown_topic_or_partition, -1
    if admin.cluster.other_owner(topic.id, p.partition_index, ctx.client_id, ctx.listener) is not None:
        return ErrorCode.not_leader_or_follower, -1
    if "delete" not in topic.cleanup_policies:
        return ErrorCode.policy_violation, -1
    ref = topic.partition(p.partition_index)
    try:
        log_end = await admin.reader.log_end_offset(ref, fresh=True)
        offset = log_end if p.offset == HIGH_WATERMARK else p.offset
        if not 0 <= offset <= log_end:
            return ErrorCode.offset_out_of_range, -1
        start = await admin.index.advance_log_start_offset(ref, offset)
    except Exception:
        log.exception("DeleteRecords %s-%d to %d failed", topic.name, p.partition_index, p.offset)
        return ErrorCode.unknown_server_error, -1
    admin.reader.log_start_moved(ref, start)
    return ErrorCode.none, start
