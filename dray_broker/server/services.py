"""The services request handlers are given (server/routes.py says which handler gets which): each one names the
collaborators its handlers use, so that a handler reaches nothing else. The broker builds them once it has started
what they hold (server/broker.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from dray_broker.auth.credential_store import ScramCredentialStore
from dray_broker.config import Settings
from dray_broker.faults import Faults
from dray_broker.fetch.reader import PartitionReader
from dray_broker.groups.coordinator import GroupCoordinator
from dray_broker.index.offsets import OffsetIndex
from dray_broker.metadata import MetadataStore
from dray_broker.observability.metrics import BrokerMetrics
from dray_broker.produce.producers import ProducerStates
from dray_broker.produce.wal_writer import WalWriter
from dray_broker.routing.registry import BrokerInfo, BrokerRegistry
from dray_broker.routing.zones import owner
from dray_broker.topics.catalog import TopicCatalog


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The cluster as clients see it: its id, the live brokers (registry, zones), which broker should serve which
    partition, and the topics (Metadata creates unknown ones when auto_create_topics)."""

    cluster_id: str
    broker_id: int
    registry: BrokerRegistry
    topics: TopicCatalog
    auto_create_topics: bool
    default_partitions: int
    enforce_owner: bool  # answer NOT_LEADER_OR_FOLLOWER for partitions another broker owns

    def other_owner(self, topic_id: uuid.UUID, partition: int, client_id: str | None,
                    listener: str) -> BrokerInfo | None:
        """The broker this client (connected on that listener) must use for the partition instead of this one
        (owners enforced), else None."""
        if not self.enforce_owner:
            return None
        leader = owner(self.registry, topic_id, partition, client_id, listener)
        return leader if leader.id != self.broker_id else None


@dataclass(frozen=True, slots=True)
class ProduceService:
    """Produce and InitProducerId: batches go to the WAL writer (idempotent ones through the producer states)."""

    cluster: ClusterView
    topics: TopicCatalog
    wal_writer: WalWriter
    producers: ProducerStates
    metadata: MetadataStore  # producer ids are allocated there
    metrics: BrokerMetrics
    faults: Faults


@dataclass(frozen=True, slots=True)
class FetchService:
    """Fetch and ListOffsets: reads through the partition reader (cached) and the offset index."""

    cluster: ClusterView
    topics: TopicCatalog
    reader: PartitionReader
    index: OffsetIndex


@dataclass(frozen=True, slots=True)
class AdminService:
    """Topic and config admin: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs, AlterConfigs,
    IncrementalAlterConfigs; and DeleteRecords, which moves log start offsets in the offset index."""

    cluster: ClusterView
    topics: TopicCatalog
    reader: PartitionReader  # a deleted topic's cached ranges and log ends are dropped
    index: OffsetIndex
    settings: Settings  # described as the broker's configs


@dataclass(frozen=True, slots=True)
class GroupService:
    """Consumer group APIs: the group coordinator, and the topics (names <-> ids)."""

    coordinator: GroupCoordinator
    topics: TopicCatalog


@dataclass(frozen=True, slots=True)
class UserService:
    """SCRAM credential management (DescribeUserScramCredentials, AlterUserScramCredentials): the store every broker
    reads logins from."""

    credentials: ScramCredentialStore
