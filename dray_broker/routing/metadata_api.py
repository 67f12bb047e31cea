"""The Metadata API: topics, partitions and the brokers a client should talk to."""

from __future__ import annotations

import logging
import uuid

from kio.schema.errors import ErrorCode

from dray_broker.protocol.codec import NULL_UUID, Request, make, response_module
from dray_broker.routing.zones import brokers_for
from dray_broker.server.handling import RequestContext, Response
from dray_broker.server.services import ClusterView
from dray_broker.topics.catalog import Topic, TopicError

log = logging.getLogger(__name__)

UNKNOWN_AUTHORIZED_OPERATIONS = -2147483648


async def handle_metadata(cluster: ClusterView, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    brokers = brokers_for(cluster.registry.live(), ctx.client_id, ctx.listener)
    auto_create = cluster.auto_create_topics and getattr(body, "allow_auto_topic_creation", True)

    requested: list[tuple[str | None, uuid.UUID | None]]
    if body.topics is None or (req.version == 0 and not body.topics):
        # v0 uses an empty list for "all topics"; later versions use null.
        requested = [(t.name, None) for t in cluster.topics.all()]
    else:
        requested = [(getattr(t, "name", None), getattr(t, "topic_id", None)) for t in body.topics]

    topics = []
    for name, topic_id in requested:
        topic: Topic | None = None
        error = ErrorCode.none
        if name is None and topic_id not in (None, NULL_UUID):
            topic = cluster.topics.by_id(topic_id)
            if topic is None:
                error = ErrorCode.unknown_topic_id
        elif name is not None:
            topic = await cluster.topics.get(name)
            if topic is None and auto_create:
                try:
                    topic = await cluster.topics.create(name, cluster.default_partitions)
                except TopicError as e:
                    if e.kafka_error == 36:  # created meanwhile by someone else
                        topic = await cluster.topics.get(name)
                    else:
                        error = ErrorCode(e.kafka_error)
            if topic is None and error == ErrorCode.none:
                error = ErrorCode.unknown_topic_or_partition
        else:
            error = ErrorCode.invalid_topic_exception
        partitions = []
        if topic is not None:
            for i in range(topic.partitions):
                leader = cluster.registry.leader(topic.id, i, brokers)
                partitions.append(make(
                    M.MetadataResponsePartition, error_code=ErrorCode.none, partition_index=i, leader_id=leader.id,
                    leader_epoch=0, replica_nodes=(leader.id,), isr_nodes=(leader.id,), offline_replicas=(),
                ))
        topics.append(make(
            M.MetadataResponseTopic, error_code=error, name=topic.name if topic else name,
            topic_id=topic.id if topic else (topic_id or NULL_UUID), is_internal=False,
            partitions=tuple(partitions), topic_authorized_operations=UNKNOWN_AUTHORIZED_OPERATIONS,
        ))
    return Response(make(
        M.MetadataResponse, throttle_time=0, error_code=ErrorCode.none,
        brokers=tuple(make(M.MetadataResponseBroker, node_id=b.id, host=b.host, port=b.port, rack=b.zone) for b in brokers),
        cluster_id=cluster.cluster_id, controller_id=brokers[0].id, topics=tuple(topics),
        cluster_authorized_operations=UNKNOWN_AUTHORIZED_OPERATIONS,
    ))
