"""The DescribeCluster API (v0-2): the live brokers, the cluster id and a controller id.

Dray has no controller: any broker can do any metadata change through the metadata store. Clients still want a
controller id (admin clients send CreateTopics and friends to it), so we name the lowest live broker id, which
every broker computes alike from the registry. No broker is ever fenced (a dead broker's ephemeral key is gone).
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from dray_broker.protocol.codec import Request, make, response_module
from dray_broker.routing.zones import brokers_for
from dray_broker.server.handling import RequestContext, Response
from dray_broker.server.services import ClusterView

ENDPOINT_BROKERS = 1
ENDPOINT_CONTROLLERS = 2
UNKNOWN_AUTHORIZED_OPERATIONS = -2147483648
# Without an authorizer Kafka grants every operation a cluster supports: ALTER(7), CREATE(5), CLUSTER_ACTION(9),
# DESCRIBE(8), DESCRIBE_CONFIGS(10), ALTER_CONFIGS(11), IDEMPOTENT_WRITE(12). Dray has no authorization yet.
CLUSTER_OPERATIONS = sum(1 << op for op in (5, 7, 8, 9, 10, 11, 12))


async def handle_describe_cluster(cluster: ClusterView, ctx: RequestContext, req: Request) -> Response:
    body = req.body
    M = response_module(req.api_key, req.version)
    endpoint_type = getattr(body, "endpoint_type", ENDPOINT_BROKERS)
    if endpoint_type != ENDPOINT_BROKERS:
        # As a Kafka broker listener does: controllers are described by controllers only (and we have none).
        return Response(make(
            M.DescribeClusterResponse, throttle_time=0, error_code=ErrorCode.unsupported_endpoint_type,
            error_message=f"endpoint type {endpoint_type} is not supported: Dray has brokers only",
            endpoint_type=endpoint_type, cluster_id=cluster.cluster_id, controller_id=-1, brokers=(),
            cluster_authorized_operations=UNKNOWN_AUTHORIZED_OPERATIONS))
    # As a Kafka broker: the brokers with the listener this client connected on, at that listener's endpoints.
    brokers = brokers_for(cluster.registry.live(), None, ctx.listener)
    operations = CLUSTER_OPERATIONS if body.include_cluster_authorized_operations else UNKNOWN_AUTHORIZED_OPERATIONS
    return Response(make(
        M.DescribeClusterResponse, throttle_time=0, error_code=ErrorCode.none, error_message=None,
        endpoint_type=ENDPOINT_BROKERS, cluster_id=cluster.cluster_id,
        controller_id=min(b.id for b in brokers) if brokers else -1,
        brokers=tuple(make(M.DescribeClusterBroker, broker_id=b.id, host=b.host, port=b.port, rack=b.zone,
                           is_fenced=False) for b in brokers),
        cluster_authorized_operations=operations,
    ))
