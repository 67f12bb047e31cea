"""Topics in the metadata store, cached by every broker and kept fresh by a watch.

    a topic (keyspace.topic_key)             JSON {"id": uuid, "partitions": n, "configs": {...}, "created_ms": t}
    a deleted topic (keyspace.deleted_topic_key)
                                             the same JSON plus "name" and "deleted_ms": a deleted topic whose data
                                             (index entries, Iceberg table) the pipeline's GC has not removed yet

A cache miss reads the store, so a topic created through one broker is usable at once through another."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from dray_broker.index.offsets import PartitionRef
from dray_broker.keyspace import DELETED_TOPICS, TOPICS, deleted_topic_key, parse_topic_key, topic_key
from dray_broker.metadata import MUST_NOT_EXIST, MetadataStore, NotificationType, VersionMismatchError, Watch
from dray_broker.records.recompress import PRODUCER, TOPIC_CODECS

log = logging.getLogger(__name__)

_LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


@dataclass(frozen=True)
class ConfigSpec:
    default: str
    kind: type  # int, float, str, or list (comma-separated, each item one of choices)
    choices: tuple[str, ...] = ()
    minimum: int | float | None = None
    maximum: int | float | None = None


CLEANUP_POLICIES = ("delete", "compact")
LONG_MAX = str(2**63 - 1)


# Topic configs that mean something here. Others are refused (INVALID_CONFIG) rather than silently ignored.
TOPIC_CONFIGS: dict[str, ConfigSpec] = {
    "retention.ms": ConfigSpec("604800000", int, minimum=-1),
    "retention.bytes": ConfigSpec("-1", int, minimum=-1),
    "max.message.bytes": ConfigSpec("1048588", int, minimum=0),
    "cleanup.policy": ConfigSpec("delete", list, choices=CLEANUP_POLICIES),
    "compression.type": ConfigSpec(PRODUCER, str, choices=tuple(TOPIC_CODECS)),
    # Log compaction (cleanup.policy compact): Kafka's names, defaults and bounds.
    "delete.retention.ms": ConfigSpec("86400000", int, minimum=0),
    "min.compaction.lag.ms": ConfigSpec("0", int, minimum=0),
    "max.compaction.lag.ms": ConfigSpec(LONG_MAX, int, minimum=1),
    "min.cleanable.dirty.ratio": ConfigSpec("0.5", float, minimum=0.0, maximum=1.0),
    # Kafka's log segments: stored and described (Kafka Streams sets segment.bytes on its repartition topics), no
    # effect here: the log is WAL objects and Parquet files, whose sizes the broker and the pipeline settings decide.
    "segment.bytes": ConfigSpec("1073741824", int, minimum=14),
    "segment.ms": ConfigSpec("604800000", int, minimum=1),
}


class TopicError(Exception):
    """A request about topics that cannot be done; kafka_error names the Kafka error code."""

    def __init__(self, message: str, kafka_error: int):
        super().__init__(message)
        self.kafka_error = kafka_error


# Kafka error codes used here.
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_TOPIC_EXCEPTION = 17
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_CONFIG = 40


@dataclass(frozen=True)
class Topic:
    name: str
    id: uuid.UUID
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    created_ms: int = 0
    version: int = -1  # of its store key

    def config(self, name: str) -> str:
        return self.configs.get(name, TOPIC_CONFIGS[name].default)

    def int_config(self, name: str) -> int:
        return int(self.config(name))

    def float_config(self, name: str) -> float:
        return float(self.config(name))

    @functools.cached_property
    def cleanup_policies(self) -> frozenset[str]:
        return frozenset(_list_items(self.config("cleanup.policy")))

    @functools.cached_property
    def compacted(self) -> bool:
        """Whether the topic keeps the latest record per key (cleanup.policy compact or compact,delete)."""
        return "compact" in self.cleanup_policies

    def partition(self, index: int) -> PartitionRef:
        return PartitionRef(self.id, index)

    def encode(self) -> bytes:
        return json.dumps(
            {"id": str(self.id), "partitions": self.partitions, "configs": self.configs, "created_ms": self.created_ms}
        ).encode()

    @classmethod
    def decode(cls, name: str, value: bytes, version: int) -> "Topic":
        doc = json.loads(value)
        return cls(name, uuid.UUID(doc["id"]), doc["partitions"], doc.get("configs", {}), doc.get("created_ms", 0), version)


def validate_configs(configs: dict[str, str | None]) -> dict[str, str]:
    """Check topic config values; None means 'reset to default' and is dropped. Raise TopicError."""
    out = {}
    for name, value in configs.items():
        spec = TOPIC_CONFIGS.get(name)
        if spec is None:
            raise TopicError(f"topic config {name!r} is not supported (supported: {', '.join(TOPIC_CONFIGS)})", INVALID_CONFIG)
        if value is None:
            continue
        if spec.kind in (int, float):
            try:
                number = spec.kind(value)
            except ValueError:
                kind = "an integer" if spec.kind is int else "a number"
                raise TopicError(f"{name} must be {kind}, not {value!r}", INVALID_CONFIG) from None
            if spec.minimum is not None and number < spec.minimum:
                raise TopicError(f"{name} must be at least {spec.minimum}", INVALID_CONFIG)
            if spec.maximum is not None and number > spec.maximum:
                raise TopicError(f"{name} must be at most {spec.maximum}", INVALID_CONFIG)
            if spec.kind is int and number > 2**63 - 1:
                raise TopicError(f"{name} must fit in a 64-bit integer", INVALID_CONFIG)
        if spec.kind is list:
            items = _list_items(value)
            if not items or any(i not in spec.choices for i in items):
                raise TopicError(f"{name} must be a comma-separated list of {', '.join(spec.choices)} (got {value!r})",
                                 INVALID_CONFIG)
        elif spec.choices and value not in spec.choices:
            raise TopicError(f"{name} must be one of {', '.join(spec.choices)}", INVALID_CONFIG)
        out[name] = str(value)
    return out


def _list_items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def validate_name(name: str) -> None:
    if not _LEGAL_NAME.match(name or "") or name in (".", ".."):
        raise TopicError(f"topic name {name!r} is illegal: use up to 249 of [a-zA-Z0-9._-]", INVALID_TOPIC_EXCEPTION)


class TopicCatalog:
    def __init__(self, store: MetadataStore):
        self.store = store
        self._by_name: dict[str, Topic] = {}
        self._by_id: dict[uuid.UUID, Topic] = {}
        self._watch_task: asyncio.Task | None = None

    async def start(self) -> None:
        watch = await self.store.watch(TOPICS.prefix)
        for topic in await self.read_all():
            self._remember(topic)
        self._watch_task = asyncio.create_task(self._follow(watch), name="topic-catalog-watch")

    async def stop(self) -> None:
        if self._watch_task:
            self._watch_task.cancel()

    async def _follow(self, watch: Watch) -> None:
        try:
            async for n in watch:
                name = parse_topic_key(n.key)
                if name is None:
                    continue
                if n.type in (NotificationType.DELETED, NotificationType.RANGE_DELETED):
                    self._forget(name)
                else:
                    await self.refresh(name)
        except asyncio.CancelledError:
            await watch.aclose()
            raise
        except Exception:
            log.exception("topic watch failed")

    def _remember(self, topic: Topic) -> None:
        old = self._by_name.get(topic.name)
        if old is not None and old.version > topic.version:
            return
        if old is not None and old.id != topic.id:
            self._by_id.pop(old.id, None)
        self._by_name[topic.name] = topic
        self._by_id[topic.id] = topic

    def _forget(self, name: str) -> None:
        old = self._by_name.pop(name, None)
        if old is not None:
            self._by_id.pop(old.id, None)

    async def refresh(self, name: str) -> Topic | None:
        e = await self.store.get(topic_key(name))
        if e is None:
            self._forget(name)
            return None
        topic = Topic.decode(name, e.value, e.version)
        self._remember(topic)
        return topic

    async def read_all(self) -> list[Topic]:
        """Every topic as the store has it now, by name (the cache is left alone)."""
        found = await self.store.range_scan(TOPICS.prefix, TOPICS.end)
        topics = [Topic.decode(name, e.value, e.version) for e in found if (name := parse_topic_key(e.key))]
        return sorted(topics, key=lambda t: t.name)

    # --- reads ------------------------------------------------------------------------------------------------

    def cached(self, name: str) -> Topic | None:
        return self._by_name.get(name)

    async def get(self, name: str) -> Topic | None:
        """The topic, from the cache or else from the store."""
        return self._by_name.get(name) or await self.refresh(name)

    def by_id(self, topic_id: uuid.UUID) -> Topic | None:
        return self._by_id.get(topic_id)

    def all(self) -> list[Topic]:
        return sorted(self._by_name.values(), key=lambda t: t.name)

    # --- writes -----------------------------------------------------------------------------------------------

    async def create(self, name: str, partitions: int, configs: dict[str, str | None] | None = None, *,
                     validate_only: bool = False) -> Topic:
        validate_name(name)
        if partitions <= 0:
            raise TopicError("the number of partitions must be positive", INVALID_PARTITIONS)
        topic = Topic(name, uuid.uuid4(), partitions, validate_configs(configs or {}), int(time.time() * 1000))
        if validate_only:
            if await self.get(name) is not None:
                raise TopicError(f"topic {name!r} already exists", TOPIC_ALREADY_EXISTS)
            return topic
        try:
            e = await self.store.put(topic_key(name), topic.encode(), expected_version=MUST_NOT_EXIST)
        except VersionMismatchError:
            raise TopicError(f"topic {name!r} already exists", TOPIC_ALREADY_EXISTS) from None
        topic = Topic(topic.name, topic.id, topic.partitions, topic.configs, topic.created_ms, e.version)
        self._remember(topic)
        log.info("created topic %s with %d partition%s (id %s)", name, partitions, "" if partitions == 1 else "s",
                 topic.id)
        return topic

    async def delete(self, name: str) -> Topic:
        topic = await self.get(name)
        if topic is None:
            raise TopicError(f"topic {name!r} does not exist", UNKNOWN_TOPIC_OR_PARTITION)
        # The tombstone first: a crash in between leaves a live topic with a tombstone, which GC ignores.
        tombstone = {**json.loads(topic.encode()), "name": name, "deleted_ms": int(time.time() * 1000)}
        await self.store.put(deleted_topic_key(topic.id), json.dumps(tombstone).encode())
        await self.store.delete(topic_key(name))
        self._forget(name)
        log.info("deleted topic %s (id %s)", name, topic.id)
        return topic

    async def deleted(self) -> list[tuple[Topic, int]]:
        """Deleted topics not yet cleaned up, with the time (ms) each was deleted."""
        out = []
        for e in await self.store.range_scan(DELETED_TOPICS.prefix, DELETED_TOPICS.end):
            doc = json.loads(e.value)
            out.append((Topic.decode(doc["name"], e.value, -1), int(doc["deleted_ms"])))
        return out

    async def forget_deleted(self, topic_id: uuid.UUID) -> None:
        await self.store.delete(deleted_topic_key(topic_id))

    async def _update(self, name: str, change: Callable[[Topic], Topic]) -> Topic:
        while True:
            topic = await self.refresh(name)
            if topic is None:
                raise TopicError(f"topic {name!r} does not exist", UNKNOWN_TOPIC_OR_PARTITION)
            new = change(topic)
            try:
                e = await self.store.put(topic_key(name), new.encode(), expected_version=topic.version)
            except VersionMismatchError:
                continue
            new = Topic(new.name, new.id, new.partitions, new.configs, new.created_ms, e.version)
            self._remember(new)
            return new

    async def add_partitions(self, name: str, count: int, *, validate_only: bool = False) -> Topic:
        def grow(t: Topic) -> Topic:
            if count <= t.partitions:
                raise TopicError(f"topic {name!r} has {t.partitions} partition{'' if t.partitions == 1 else 's'}; "
                                 "a new count must be larger",
                                 INVALID_PARTITIONS)
            return Topic(t.name, t.id, count, t.configs, t.created_ms, t.version)

        if validate_only:
            topic = await self.get(name)
            if topic is None:
                raise TopicError(f"topic {name!r} does not exist", UNKNOWN_TOPIC_OR_PARTITION)
            return grow(topic)
        return await self._update(name, grow)

    async def set_configs(self, name: str, configs: dict[str, str | None], *, replace: bool,
                          validate_only: bool = False) -> Topic:
        """replace: AlterConfigs (the given set is the whole set); else IncrementalAlterConfigs (None = delete)."""
        checked = validate_configs(configs)

        def apply(t: Topic) -> Topic:
            merged = {} if replace else dict(t.configs)
            for k, v in configs.items():
                if v is None:
                    merged.pop(k, None)
            merged.update(checked)
            return Topic(t.name, t.id, t.partitions, merged, t.created_ms, t.version)

        if validate_only:
            topic = await self.get(name)
            if topic is None:
                raise TopicError(f"topic {name!r} does not exist", UNKNOWN_TOPIC_OR_PARTITION)
            return apply(topic)
        return await self._update(name, apply)
