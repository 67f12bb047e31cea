"""The one route table: every Kafka API this broker answers, with its versions, its handler and the service that
handler is given, whether it defers its answers (pipelining), and the ACL checks it needs (auth/api_checks.py). The
dispatcher (server/dispatch.py) serves from it and ApiVersions answers from it (server/api_versions.py).

Versions follow Kafka 4 (KIP-896 floors), except Produce, taken from v0 as Kafka 4.1 does again for old clients
(their message sets are up-converted to v2 batches, as Kafka 3 did). The transaction APIs are routes that are not
advertised: a client that sends one anyway gets an error response (protocol/rejections.py), not a closed connection.
"""

from __future__ import annotations

from dray_broker.auth.acl_api import AclService, handle_create_acls, handle_delete_acls, handle_describe_acls
from dray_broker.auth.scram_api import handle_alter_user_scram_credentials, handle_describe_user_scram_credentials
from dray_broker.fetch.handler import handle_fetch
from dray_broker.fetch.list_offsets import handle_list_offsets
from dray_broker.groups import handlers as groups
from dray_broker.produce.handler import decode_produce_request, handle_init_producer_id, handle_produce
from dray_broker.protocol import apis
from dray_broker.protocol.rejections import handle_transaction_api
from dray_broker.routing.cluster_api import handle_describe_cluster
from dray_broker.routing.metadata_api import handle_metadata
from dray_broker.server.api_versions import handle_api_versions
from dray_broker.server.authentication import handle_sasl_authenticate, handle_sasl_handshake
from dray_broker.server.handling import NoService, RouteTable, deferred_route, route
from dray_broker.server.services import (
    AdminService,
    ClusterView,
    FetchService,
    GroupService,
    ProduceService,
    UserService,
)
from dray_broker.topics import handlers as topics
from dray_broker.topics.delete_records import handle_delete_records

ROUTES = RouteTable([
    route(apis.API_VERSIONS, "ApiVersions", (0, 4), RouteTable, handle_api_versions),
    route(apis.METADATA, "Metadata", (0, 13), ClusterView, handle_metadata),
    route(apis.DESCRIBE_CLUSTER, "DescribeCluster", (0, 2), ClusterView, handle_describe_cluster),
    # The data plane. Produce v0-v2 (dropped by Kafka 4) are decoded by hand: produce/legacy_request.py.
    deferred_route(apis.PRODUCE, "Produce", (0, 13), ProduceService, handle_produce, decode=decode_produce_request),
    route(apis.INIT_PRODUCER_ID, "InitProducerId", (0, 6), ProduceService, handle_init_producer_id),
    route(apis.FETCH, "Fetch", (4, 18), FetchService, handle_fetch),
    route(apis.LIST_OFFSETS, "ListOffsets", (1, 11), FetchService, handle_list_offsets),
    # Topics and configs.
    route(apis.CREATE_TOPICS, "CreateTopics", (2, 7), AdminService, topics.handle_create_topics),
    route(apis.DELETE_TOPICS, "DeleteTopics", (1, 6), AdminService, topics.handle_delete_topics),
    route(apis.DELETE_RECORDS, "DeleteRecords", (0, 2), AdminService, handle_delete_records),
    route(apis.CREATE_PARTITIONS, "CreatePartitions", (0, 3), AdminService, topics.handle_create_partitions),
    route(apis.DESCRIBE_CONFIGS, "DescribeConfigs", (1, 4), AdminService, topics.handle_describe_configs),
    route(apis.ALTER_CONFIGS, "AlterConfigs", (0, 2), AdminService, topics.handle_alter_configs),
    route(apis.INCREMENTAL_ALTER_CONFIGS, "IncrementalAlterConfigs", (0, 1), AdminService,
          topics.handle_incremental_alter_configs),
    # Consumer groups: the classic protocol, whose JoinGroup and SyncGroup wait at barriers (deferred), KIP-848's,
    # and committed offsets.
    route(apis.FIND_COORDINATOR, "FindCoordinator", (0, 6), GroupService, groups.handle_find_coordinator),
    deferred_route(apis.JOIN_GROUP, "JoinGroup", (0, 9), GroupService, groups.handle_join_group),
    deferred_route(apis.SYNC_GROUP, "SyncGroup", (0, 5), GroupService, groups.handle_sync_group),
    route(apis.HEARTBEAT, "Heartbeat", (0, 4), GroupService, groups.handle_heartbeat),
    route(apis.LEAVE_GROUP, "LeaveGroup", (0, 5), GroupService, groups.handle_leave_group),
    route(apis.OFFSET_COMMIT, "OffsetCommit", (2, 10), GroupService, groups.handle_offset_commit),
    route(apis.OFFSET_FETCH, "OffsetFetch", (1, 10), GroupService, groups.handle_offset_fetch),
    route(apis.OFFSET_DELETE, "OffsetDelete", (0, 0), GroupService, groups.handle_offset_delete),
    route(apis.DESCRIBE_GROUPS, "DescribeGroups", (0, 6), GroupService, groups.handle_describe_groups),
    route(apis.LIST_GROUPS, "ListGroups", (0, 5), GroupService, groups.handle_list_groups),
    route(apis.DELETE_GROUPS, "DeleteGroups", (0, 2), GroupService, groups.handle_delete_groups),
    route(apis.CONSUMER_GROUP_HEARTBEAT, "ConsumerGroupHeartbeat", (0, 1), GroupService,
          groups.handle_consumer_group_heartbeat),
    route(apis.CONSUMER_GROUP_DESCRIBE, "ConsumerGroupDescribe", (0, 1), GroupService,
          groups.handle_consumer_group_describe),
    # ACLs (answered SECURITY_DISABLED without --acls).
    route(apis.DESCRIBE_ACLS, "DescribeAcls", (1, 3), AclService, handle_describe_acls),
    route(apis.CREATE_ACLS, "CreateAcls", (1, 3), AclService, handle_create_acls),
    route(apis.DELETE_ACLS, "DeleteAcls", (1, 3), AclService, handle_delete_acls),
    # Authentication: on a SASL listener server/authentication.py serves the login before any route; these routes
    # answer the SASL APIs elsewhere (ILLEGAL_SASL_STATE). SCRAM credentials are managed over the Kafka API.
    route(apis.SASL_HANDSHAKE, "SaslHandshake", (0, 1), NoService, handle_sasl_handshake),
    route(apis.SASL_AUTHENTICATE, "SaslAuthenticate", (0, 2), NoService, handle_sasl_authenticate),
    route(apis.DESCRIBE_USER_SCRAM_CREDENTIALS, "DescribeUserScramCredentials", (0, 0), UserService,
          handle_describe_user_scram_credentials),
    route(apis.ALTER_USER_SCRAM_CREDENTIALS, "AlterUserScramCredentials", (0, 0), UserService,
          handle_alter_user_scram_credentials),
    # Transactions are not supported: answered with errors, not advertised (the versions kio decodes).
    route(apis.ADD_PARTITIONS_TO_TXN, "AddPartitionsToTxn", (0, 5), NoService, handle_transaction_api,
          advertised=False),
    route(apis.ADD_OFFSETS_TO_TXN, "AddOffsetsToTxn", (0, 4), NoService, handle_transaction_api, advertised=False),
    route(apis.END_TXN, "EndTxn", (0, 5), NoService, handle_transaction_api, advertised=False),
    route(apis.WRITE_TXN_MARKERS, "WriteTxnMarkers", (1, 2), NoService, handle_transaction_api, advertised=False),
    route(apis.TXN_OFFSET_COMMIT, "TxnOffsetCommit", (0, 5), NoService, handle_transaction_api, advertised=False),
    route(apis.DESCRIBE_TRANSACTIONS, "DescribeTransactions", (0, 0), NoService, handle_transaction_api,
          advertised=False),
    route(apis.LIST_TRANSACTIONS, "ListTransactions", (0, 2), NoService, handle_transaction_api, advertised=False),
])
