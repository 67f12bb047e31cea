"""The one table of Kafka APIs this broker implements, and the ApiVersions answer built from it.

Only APIs with a handler are advertised. Version floors follow Kafka 4 (KIP-896), except Produce, taken from v0 as
Kafka 4.1 does again for old clients (their message sets are up-converted to v2 batches, as Kafka 3 did)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ApiSpec:
    key: int
    name: str
    min_version: int
    max_version: int


PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
SASL_HANDSHAKE = 17
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
DELETE_RECORDS = 21
INIT_PRODUCER_ID = 22
OFFSET_FOR_LEADER_EPOCH = 23
ADD_PARTITIONS_TO_TXN = 24
ADD_OFFSETS_TO_TXN = 25
END_TXN = 26
WRITE_TXN_MARKERS = 27
TXN_OFFSET_COMMIT = 28
DESCRIBE_CONFIGS = 32
ALTER_CONFIGS = 33
CREATE_PARTITIONS = 37
DELETE_GROUPS = 42
INCREMENTAL_ALTER_CONFIGS = 44
OFFSET_DELETE = 47
DESCRIBE_CLUSTER = 60
DESCRIBE_TRANSACTIONS = 65
LIST_TRANSACTIONS = 66
CONSUMER_GROUP_HEARTBEAT = 68
CONSUMER_GROUP_DESCRIBE = 69

# Every API this broker can answer, with the versions it answers. A handler must exist for each.
IMPLEMENTED: dict[int, ApiSpec] = {
    s.key: s
    for s in [
        ApiSpec(PRODUCE, "Produce", 0, 13),  # v0-v2 (dropped by Kafka 4) for old clients: produce/legacy_request.py
        ApiSpec(FETCH, "Fetch", 4, 18),
        ApiSpec(LIST_OFFSETS, "ListOffsets", 1, 11),
        ApiSpec(METADATA, "Metadata", 0, 13),
        ApiSpec(API_VERSIONS, "ApiVersions", 0, 4),
        ApiSpec(CREATE_TOPICS, "CreateTopics", 2, 7),
        ApiSpec(DELETE_TOPICS, "DeleteTopics", 1, 6),
        ApiSpec(DESCRIBE_CONFIGS, "DescribeConfigs", 1, 4),
        ApiSpec(ALTER_CONFIGS, "AlterConfigs", 0, 2),
        ApiSpec(INCREMENTAL_ALTER_CONFIGS, "IncrementalAlterConfigs", 0, 1),
        ApiSpec(CREATE_PARTITIONS, "CreatePartitions", 0, 3),
        ApiSpec(DESCRIBE_CLUSTER, "DescribeCluster", 0, 2),
        # Consumer groups (classic protocol): dray_broker/groups.
        ApiSpec(OFFSET_COMMIT, "OffsetCommit", 2, 10),
        ApiSpec(OFFSET_FETCH, "OffsetFetch", 1, 10),
        ApiSpec(FIND_COORDINATOR, "FindCoordinator", 0, 6),
        ApiSpec(JOIN_GROUP, "JoinGroup", 0, 9),
        ApiSpec(HEARTBEAT, "Heartbeat", 0, 4),
        ApiSpec(LEAVE_GROUP, "LeaveGroup", 0, 5),
        ApiSpec(SYNC_GROUP, "SyncGroup", 0, 5),
        ApiSpec(DESCRIBE_GROUPS, "DescribeGroups", 0, 6),
        ApiSpec(LIST_GROUPS, "ListGroups", 0, 5),
        ApiSpec(DELETE_GROUPS, "DeleteGroups", 0, 2),
        ApiSpec(OFFSET_DELETE, "OffsetDelete", 0, 0),
        ApiSpec(CONSUMER_GROUP_HEARTBEAT, "ConsumerGroupHeartbeat", 0, 1),
        ApiSpec(CONSUMER_GROUP_DESCRIBE, "ConsumerGroupDescribe", 0, 1),
        ApiSpec(INIT_PRODUCER_ID, "InitProducerId", 0, 6),
    ]
}

# Transaction APIs: not advertised (transactions are deferred); if a client calls them anyway it gets an error.
TRANSACTION_APIS = frozenset(
    {ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN, WRITE_TXN_MARKERS, TXN_OFFSET_COMMIT,
     DESCRIBE_TRANSACTIONS, LIST_TRANSACTIONS}
)


def advertised(handled: set[int]) -> list[ApiSpec]:
    """The ApiVersions list: the implemented APIs that have a handler, by key."""
    return [IMPLEMENTED[k] for k in sorted(handled) if k in IMPLEMENTED]


def supports(api_key: int, version: int, handled: set[int]) -> bool:
    spec = IMPLEMENTED.get(api_key)
    return spec is not None and api_key in handled and spec.min_version <= version <= spec.max_version


def name(api_key: int) -> str:
    spec = IMPLEMENTED.get(api_key)
    return spec.name if spec is not None else f"api-{api_key}"
