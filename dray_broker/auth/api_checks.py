"""Which ACL operations each Kafka API needs, as Kafka 4's broker checks them (KafkaApis, ControllerApis, AclApis,
ConfigHelper, AuthHelper, DescribeTopicPartitionsRequestHandler; read in Kafka 4.2's source), as data for the
dispatch table (DESIGN.md section 10: every request is authorized by the route table, before its handler runs).

Each API maps to ApiChecks: a tuple of Check and the authorized-operations fields its response can carry (KIP-430).
A Check says: the `operation` on resources of `resource_type` named by `source`, with what effect (`scope`) and which
error (`error`) when denied, under which condition (`when`, "" = always), unless one of `unless` is allowed (then
the check passes for every resource; e.g. CREATE on the cluster lets one create any topic).

`source` names the resources:
- CLUSTER: the cluster resource (name `kafka-cluster`);
- ANY_RESOURCE: some resource of the type (Authorizer.authorize_by_resource_type);
- a kio field path of the request ("group_id", "topics[].name"; "[]" walks an array), several alternatives separated
  by " | " when versions differ (e.g. topic names and, from some version, topic ids to resolve to names);
- "response:<path>": resources the response would list (the handler's result is filtered).

`scope` says what a denial does:
- REQUEST: every named resource must be allowed, or the whole request answers `error`;
- EACH: a denied resource gets `error` in its own entry (for a topic: each of its partitions), the others go on;
- FILTER: a denied resource is left out as if it did not exist (Kafka never reveals what one may not describe).

APIs with an empty tuple need no permission (ApiVersions, SASL, telemetry; DescribeCluster only hides the cluster's
authorized operations). Share groups, streams groups and inter-broker/controller APIs (LeaderAndIsr, Vote, ...) are
left out: Dray has none of them and answers them with no handler.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from dray_broker.auth.acls import Operation as Op
from dray_broker.auth.acls import ResourceType as R

CLUSTER = "<cluster>"
ANY_RESOURCE = "<any>"


class Scope(enum.Enum):
    REQUEST = "request"
    EACH = "each"
    FILTER = "filter"


@dataclass(frozen=True, slots=True)
class Check:
    operation: Op
    resource_type: R
    source: str
    scope: Scope
    error: ErrorCode = ErrorCode.none
    when: str = ""
    unless: tuple[Check, ...] = ()


@dataclass(frozen=True, slots=True)
class ApiChecks:
    name: str
    checks: tuple[Check, ...]
    # The response's authorized-operations fields: (resource type, field path in the response, how it is filled).
    authorized_operations: tuple[tuple[R, str, str], ...] = ()


_TOPIC_DENIED = ErrorCode.topic_authorization_failed
_GROUP_DENIED = ErrorCode.group_authorization_failed
_CLUSTER_DENIED = ErrorCode.cluster_authorization_failed
_TXN_DENIED = ErrorCode.transactional_id_authorization_failed


def _cluster(op: Op, error: ErrorCode = _CLUSTER_DENIED, when: str = "", unless: tuple[Check, ...] = ()) -> Check:
    return Check(op, R.CLUSTER, CLUSTER, Scope.REQUEST, error, when, unless)


def _group(op: Op, source: str = "group_id", scope: Scope = Scope.REQUEST, when: str = "") -> Check:
    return Check(op, R.GROUP, source, scope, _GROUP_DENIED if scope is not Scope.FILTER else ErrorCode.none, when)


def _topics(op: Op, source: str = "topics[].name", scope: Scope = Scope.EACH, when: str = "",
            unless: tuple[Check, ...] = ()) -> Check:
    return Check(op, R.TOPIC, source, scope, _TOPIC_DENIED if scope is not Scope.FILTER else ErrorCode.none, when,
                 unless)


def _txn(op: Op = Op.WRITE, source: str = "transactional_id", when: str = "") -> Check:
    return Check(op, R.TRANSACTIONAL_ID, source, Scope.REQUEST, _TXN_DENIED, when)


def _config_checks(op: Op) -> tuple[Check, ...]:
    """DescribeConfigs / AlterConfigs / IncrementalAlterConfigs: per resource, by its config resource type."""
    return (
        Check(op, R.TOPIC, "resources[].resource_name", Scope.EACH, _TOPIC_DENIED, "resource_type TOPIC (2)"),
        Check(op, R.CLUSTER, CLUSTER, Scope.EACH, _CLUSTER_DENIED,
              "resource_type BROKER (4), BROKER_LOGGER (8) or CLIENT_METRICS (16), for each such resource"),
        Check(op, R.GROUP, "resources[].resource_name", Scope.EACH, _GROUP_DENIED, "resource_type GROUP (32)"),
    )


_CLUSTER_OPERATIONS = (R.CLUSTER, "cluster_authorized_operations",
                       "when include_cluster_authorized_operations: the allowed cluster operations if DESCRIBE on "
                       "the cluster is allowed, else 0")

API_CHECKS: dict[int, ApiChecks] = {
    0: ApiChecks("Produce", (
        _txn(when="the request carries transactional batches (denied or no transactional_id: the whole request)"),
        _topics(Op.WRITE, "topic_data[].name | topic_data[].topic_id"),
    )),
    1: ApiChecks("Fetch", (
        _topics(Op.READ, "topics[].topic | topics[].topic_id", when="a consumer fetch (replica id < 0)"),
        Check(Op.CLUSTER_ACTION, R.CLUSTER, CLUSTER, Scope.REQUEST, _TOPIC_DENIED,
              "a follower fetch (replica_id / replica_state.replica_id >= 0): denied, every partition answers "
              "TOPIC_AUTHORIZATION_FAILED"),
    )),
    2: ApiChecks("ListOffsets", (_topics(Op.DESCRIBE),)),
    3: ApiChecks("Metadata", (
        _topics(Op.DESCRIBE, "topics[].name | topics[].topic_id",
                when="topics listed (a denied topic id answers without its name)"),
        _topics(Op.DESCRIBE, "response:topics[].name", Scope.FILTER, when="all topics (topics is null)"),
        _topics(Op.CREATE, "topics[].name", when="a listed topic does not exist and allow_auto_topic_creation",
                unless=(_cluster(Op.CREATE),)),
    ), authorized_operations=(
        (R.TOPIC, "topics[].topic_authorized_operations", "when include_topic_authorized_operations"),
        _CLUSTER_OPERATIONS,
    )),
    8: ApiChecks("OffsetCommit", (_group(Op.READ), _topics(Op.READ, "topics[].name | topics[].topic_id"))),
    9: ApiChecks("OffsetFetch", (
        _group(Op.DESCRIBE, "group_id | groups[].group_id", Scope.EACH,
               when="v0-7: the one group (REQUEST); v8+: each group gets the error"),
        _topics(Op.DESCRIBE, "topics[].name | groups[].topics[].name | groups[].topics[].topic_id",
                when="topics listed"),
        _topics(Op.DESCRIBE, "response:topics[].name | response:groups[].topics[].name", Scope.FILTER,
                when="all topics of the group (topics is null)"),
    )),
    10: ApiChecks("FindCoordinator", (
        _group(Op.DESCRIBE, "key | coordinator_keys[]", Scope.EACH, when="key_type GROUP (0); v0-3: the one key"),
        Check(Op.DESCRIBE, R.TRANSACTIONAL_ID, "key | coordinator_keys[]", Scope.EACH, _TXN_DENIED,
              "key_type TRANSACTION (1); v0-3: the one key"),
        _cluster(Op.CLUSTER_ACTION, when="key_type SHARE (2)"),
    )),
    11: ApiChecks("JoinGroup", (_group(Op.READ),)),
    12: ApiChecks("Heartbeat", (_group(Op.READ),)),
    13: ApiChecks("LeaveGroup", (_group(Op.READ),)),
    14: ApiChecks("SyncGroup", (_group(Op.READ),)),
    15: ApiChecks("DescribeGroups", (_group(Op.DESCRIBE, "groups[]", Scope.EACH),), authorized_operations=(
        (R.GROUP, "groups[].authorized_operations", "when include_authorized_operations"),)),
    16: ApiChecks("ListGroups", (
        Check(Op.DESCRIBE, R.GROUP, "response:groups[].group_id", Scope.FILTER, unless=(_cluster(Op.DESCRIBE),)),
    )),
    17: ApiChecks("SaslHandshake", ()),
    18: ApiChecks("ApiVersions", ()),
    19: ApiChecks("CreateTopics", (
        _topics(Op.CREATE, unless=(_cluster(Op.CREATE),)),
        _topics(Op.DESCRIBE_CONFIGS,
                when="v5+: a created topic's configs are answered only with DESCRIBE_CONFIGS on it; otherwise "
                     "topic_config_error_code is TOPIC_AUTHORIZATION_FAILED and the topic is still created"),
    )),
    20: ApiChecks("DeleteTopics", (
        _topics(Op.DESCRIBE, "topic_names[] | topics[].name | topics[].topic_id", unless=(_cluster(Op.DELETE),)),
        _topics(Op.DELETE, "topic_names[] | topics[].name | topics[].topic_id", unless=(_cluster(Op.DELETE),)),
    )),
    21: ApiChecks("DeleteRecords", (_topics(Op.DELETE),)),
    22: ApiChecks("InitProducerId", (
        _txn(when="transactional_id is not null"),
        _txn(Op.TWO_PHASE_COMMIT, when="transactional_id is not null and enable2_pc"),
        _cluster(Op.IDEMPOTENT_WRITE, when="transactional_id is null (an idempotent producer)",
                 unless=(Check(Op.WRITE, R.TOPIC, ANY_RESOURCE, Scope.REQUEST),)),
    )),
    23: ApiChecks("OffsetForLeaderEpoch", (_topics(Op.DESCRIBE, "topics[].topic", unless=(
        _cluster(Op.CLUSTER_ACTION),)),)),
    24: ApiChecks("AddPartitionsToTxn", (
        _txn(source="v3_and_below_transactional_id", when="v0-3"),
        _topics(Op.WRITE, "v3_and_below_topics[].name", when="v0-3"),
        _cluster(Op.CLUSTER_ACTION, when="v4+ (broker to broker)"),
    )),
    25: ApiChecks("AddOffsetsToTxn", (_txn(), _group(Op.READ))),
    26: ApiChecks("EndTxn", (_txn(),)),
    27: ApiChecks("WriteTxnMarkers", (_cluster(Op.CLUSTER_ACTION, unless=(_cluster(Op.ALTER),)),)),
    28: ApiChecks("TxnOffsetCommit", (_txn(), _group(Op.READ), _topics(Op.READ))),
    29: ApiChecks("DescribeAcls", (_cluster(Op.DESCRIBE),)),
    30: ApiChecks("CreateAcls", (_cluster(Op.ALTER),)),
    31: ApiChecks("DeleteAcls", (_cluster(Op.ALTER),)),
    32: ApiChecks("DescribeConfigs", _config_checks(Op.DESCRIBE_CONFIGS)),
    33: ApiChecks("AlterConfigs", _config_checks(Op.ALTER_CONFIGS)),
    34: ApiChecks("AlterReplicaLogDirs", (_cluster(Op.ALTER),)),
    35: ApiChecks("DescribeLogDirs", (_cluster(Op.DESCRIBE),)),
    36: ApiChecks("SaslAuthenticate", ()),
    37: ApiChecks("CreatePartitions", (_topics(Op.ALTER),)),
    38: ApiChecks("CreateDelegationToken", (
        Check(Op.CREATE_TOKENS, R.USER, "owner_principal_type:owner_principal_name", Scope.REQUEST,
              ErrorCode.delegation_token_authorization_failed, "the owner is not the requester"),
    )),
    41: ApiChecks("DescribeDelegationToken", (
        Check(Op.DESCRIBE, R.DELEGATION_TOKEN, "response:tokens[].token_id", Scope.FILTER,
              when="a token the requester does not own and whose owner it may not DESCRIBE_TOKENS"),
        Check(Op.DESCRIBE_TOKENS, R.USER, "response:tokens[].principal_type:tokens[].principal_name", Scope.FILTER,
              when="a token the requester does not own"),
    )),
    42: ApiChecks("DeleteGroups", (_group(Op.DELETE, "groups_names[]", Scope.EACH),)),
    43: ApiChecks("ElectLeaders", (_cluster(Op.ALTER),)),
    44: ApiChecks("IncrementalAlterConfigs", _config_checks(Op.ALTER_CONFIGS)),
    45: ApiChecks("AlterPartitionReassignments", (_cluster(Op.ALTER),)),
    46: ApiChecks("ListPartitionReassignments", (_cluster(Op.DESCRIBE),)),
    47: ApiChecks("OffsetDelete", (_group(Op.DELETE), _topics(Op.READ))),
    48: ApiChecks("DescribeClientQuotas", (_cluster(Op.DESCRIBE_CONFIGS),)),
    49: ApiChecks("AlterClientQuotas", (_cluster(Op.ALTER_CONFIGS),)),
    50: ApiChecks("DescribeUserScramCredentials", (_cluster(Op.DESCRIBE),)),
    51: ApiChecks("AlterUserScramCredentials", (_cluster(Op.ALTER),)),
    55: ApiChecks("DescribeQuorum", (_cluster(Op.DESCRIBE),)),
    57: ApiChecks("UpdateFeatures", (_cluster(Op.ALTER),)),
    60: ApiChecks("DescribeCluster", (), authorized_operations=(_CLUSTER_OPERATIONS,)),
    61: ApiChecks("DescribeProducers", (_topics(Op.READ),)),
    64: ApiChecks("UnregisterBroker", (_cluster(Op.ALTER),)),
    65: ApiChecks("DescribeTransactions", (
        Check(Op.DESCRIBE, R.TRANSACTIONAL_ID, "transactional_ids[]", Scope.EACH, _TXN_DENIED),
        _topics(Op.DESCRIBE, "response:transaction_states[].topics[].topic", Scope.FILTER),
    )),
    66: ApiChecks("ListTransactions", (
        Check(Op.DESCRIBE, R.TRANSACTIONAL_ID, "response:transaction_states[].transactional_id", Scope.FILTER),
    )),
    68: ApiChecks("ConsumerGroupHeartbeat", (
        _group(Op.READ),
        _topics(Op.DESCRIBE, "subscribed_topic_names[]", Scope.REQUEST,
                when="subscribed_topic_names is not empty: one denied topic fails the heartbeat"),
        _topics(Op.DESCRIBE, "subscribed_topic_regex", Scope.FILTER,
                when="topics matched by the regex: only those the member may DESCRIBE are subscribed"),
    )),
    69: ApiChecks("ConsumerGroupDescribe", (
        _group(Op.DESCRIBE, "group_ids[]", Scope.EACH),
        _topics(Op.DESCRIBE, "response:groups[].members[].assignment.topic_partitions[].topic_name | "
                             "response:groups[].members[].target_assignment.topic_partitions[].topic_name",
                when="a group with a denied topic in an assignment answers TOPIC_AUTHORIZATION_FAILED and no "
                     "members"),
    ), authorized_operations=(
        (R.GROUP, "groups[].authorized_operations", "when include_authorized_operations"),)),
    71: ApiChecks("GetTelemetrySubscriptions", ()),
    72: ApiChecks("PushTelemetry", ()),
    74: ApiChecks("ListConfigResources", (_cluster(Op.DESCRIBE_CONFIGS),)),
    75: ApiChecks("DescribeTopicPartitions", (
        _topics(Op.DESCRIBE, when="topics listed"),
        _topics(Op.DESCRIBE, "response:topics[].name", Scope.FILTER, when="all topics (topics is empty)"),
    ), authorized_operations=((R.TOPIC, "topics[].topic_authorized_operations", "always"),)),
}
