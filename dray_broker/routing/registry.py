"""Live brokers: each registers an ephemeral key (keyspace.BROKERS) that dies with its session; every broker
watches the set. The value: JSON {"id", "host", "port", "zone", "instance", "listeners"}; listeners:
[[name, host, port], ...], the advertised endpoint of each listener (name as Kafka's listener names); host and port:
the first one's (what brokers before listeners wrote, and read: a registration without listeners has one, PLAINTEXT,
at host:port). Broker ids come from a sequence (keyspace.BROKER_IDS).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace

from dray_broker.keyspace import BROKER_IDS, BROKERS, broker_key, parse_broker_key
from dray_broker.metadata import (
    MUST_NOT_EXIST,
    MetadataError,
    MetadataStore,
    NotificationType,
    SessionExpiredError,
    VersionMismatchError,
    Watch,
)
from dray_broker.server.listeners import DEFAULT_LISTENER

log = logging.getLogger(__name__)


class BrokerIdInUse(Exception):
    pass


@dataclass(frozen=True)
class BrokerInfo:
    id: int
    host: str  # the endpoint clients use: the first listener's, or that of the listener asked for (on())
    port: int
    zone: str | None
    listeners: tuple[tuple[str, str, int], ...] = ()  # (listener name, advertised host, port) of each listener

    def __post_init__(self) -> None:
        if not self.listeners:
            object.__setattr__(self, "listeners", ((DEFAULT_LISTENER, self.host, self.port),))

    def on(self, listener: str) -> "BrokerInfo | None":
        """This broker as the clients of a listener see it (host and port that listener's advertised endpoint), or
        None when it has no such listener (Kafka leaves such a broker out of what that listener's clients see)."""
        for name, host, port in self.listeners:
            if name == listener:
                return self if (host, port) == (self.host, self.port) else replace(self, host=host, port=port)
        return None

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "host": self.host, "port": self.port, "zone": self.zone,
                           "listeners": [list(e) for e in self.listeners]}).encode()

    @classmethod
    def decode(cls, value: bytes) -> "BrokerInfo":
        d = json.loads(value)
        listeners = tuple((str(n), str(h), int(p)) for n, h, p in d.get("listeners") or ())
        return cls(d["id"], d["host"], d["port"], d.get("zone"), listeners)


async def allocate_broker_id(store: MetadataStore) -> int:
    """A broker id no other broker got from this store (starting at 1)."""
    entry = await store.put_sequential(BROKER_IDS.prefix, b"", [1], partition_key=BROKER_IDS.partition_key)
    broker_id = BROKER_IDS.parse(entry.key)
    assert broker_id is not None, entry.key  # put_sequential made it under the prefix
    return broker_id


class BrokerRegistry:
    """This broker's registration and the live set. The registration lives in the metadata session: when a session
    generation ends (the broker or the store stalled past the session timeout), the key is gone and the registry
    registers again in the next generation by itself, and re-reads the live set it may have missed."""

    RETRY_S = 0.25

    def __init__(self, store: MetadataStore, me: BrokerInfo):
        self.store = store
        self.me = me
        self.instance = uuid.uuid4().hex  # tells this process's key from a predecessor's with the same id
        self.registered: int | None = None  # the session generation holding our key
        self._live: dict[int, BrokerInfo] = {me.id: me}
        self._changes = 0  # live-set notifications seen (a rescan that raced one reads again)
        self._task: asyncio.Task | None = None
        self._session_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        """Registered in the live session generation."""
        session = self.store.session
        return session.alive and self.registered == session.generation

    async def start(self, wait_for_id_s: float = 0) -> None:
        """Register; a live broker with the same id makes this fail (after waiting wait_for_id_s for the key of
        a dead one to expire with its session)."""
        watch = await self.store.watch(BROKERS.prefix)
        deadline = time.monotonic() + wait_for_id_s
        while True:
            generation = await self.store.session.wait_alive()
            try:
                if await self._register(generation):
                    break
            except SessionExpiredError:
                continue
            except BaseException:
                await watch.aclose()
                raise
            if time.monotonic() > deadline:
                await watch.aclose()
                raise BrokerIdInUse(f"broker id {self.me.id} is registered by a live broker")
            await asyncio.sleep(self.RETRY_S)
        self._task = asyncio.create_task(self._follow(watch), name="broker-registry-watch")
        await self._rescan()
        self._session_task = asyncio.create_task(self._follow_session(generation), name="broker-registration")

    async def stop(self) -> None:
        for task in (self._task, self._session_task):
            if task:
                task.cancel()
        try:
            await self.store.delete(broker_key(self.me.id))
        except Exception as e:  # the session's end removes it anyway
            log.debug("could not deregister: %r", e)

    async def _register(self, generation: int) -> bool:
        """Create our key in the session generation; False if another broker holds the id. A key of our own from
        an ended generation (not yet removed) is replaced. SessionExpiredError if the generation ends."""
        key = broker_key(self.me.id)
        value = json.dumps({**json.loads(self.me.encode()), "instance": self.instance}).encode()
        while True:
            try:
                await self.store.put(key, value, ephemeral=True, expected_version=MUST_NOT_EXIST,
                                     session=generation)
                self.registered = generation
                return True
            except VersionMismatchError:
                existing = await self.store.get(key)
                if existing is None:
                    continue
                if json.loads(existing.value).get("instance") != self.instance:
                    return False
                try:  # ours, from a generation that ended: it goes anyway, but not soon enough
                    await self.store.delete(key, expected_version=existing.version)
                except VersionMismatchError:
                    pass

    async def _follow_session(self, generation: int) -> None:
        """Register again in every new session generation."""
        session = self.store.session
        while True:
            await session.wait_ended(generation)
            self.registered = None
            if session.closed:
                return
            log.warning("broker %d lost its registration with metadata session generation %d", self.me.id,
                        generation)
            try:
                generation = await session.wait_alive()
            except MetadataError:  # the store closed
                return
            while session.alive and session.generation == generation:
                try:
                    if await self._register(generation):
                        await self._rescan()
                        log.warning("broker %d registered again (metadata session generation %d)", self.me.id,
                                    generation)
                        break
                    log.warning("broker id %d is registered by another broker; waiting", self.me.id)
                except SessionExpiredError:
                    break
                except MetadataError as e:
                    log.warning("broker %d cannot register yet: %r", self.me.id, e)
                await asyncio.sleep(self.RETRY_S)

    async def _rescan(self) -> None:
        """Read the live set again (notifications may have been missed while the session was gone)."""
        while True:
            seen = self._changes
            live = {self.me.id: self.me}
            for e in await self.store.range_scan(BROKERS.prefix, BROKERS.end):
                info = BrokerInfo.decode(e.value)
                live.setdefault(info.id, info)
            if self._changes == seen:
                self._live = live
                return

    async def _follow(self, watch: Watch) -> None:
        try:
            async for n in watch:
                self._changes += 1
                broker_id = parse_broker_key(n.key)
                if broker_id is None:
                    continue
                if n.type in (NotificationType.DELETED, NotificationType.RANGE_DELETED):
                    if broker_id != self.me.id:
                        self._live.pop(broker_id, None)
                else:
                    e = await self.store.get(n.key)
                    if e is not None:
                        self._live[broker_id] = BrokerInfo.decode(e.value)
        except asyncio.CancelledError:
            await watch.aclose()
            raise
        except Exception:
            log.exception("broker registry watch failed")

    def live(self) -> list[BrokerInfo]:
        return sorted(self._live.values(), key=lambda b: b.id)

    def leader(self, topic_id: uuid.UUID, partition: int, brokers: list[BrokerInfo] | None = None) -> BrokerInfo:
        """The partition's pseudo-leader: rendezvous hash over the given (default: all live) brokers, so a
        partition sticks to one broker while the set does not change."""
        candidates = brokers or self.live()
        return max(candidates, key=lambda b: _weight(topic_id, partition, b.id))


def _weight(topic_id: uuid.UUID, partition: int, broker_id: int) -> bytes:
    return hashlib.blake2b(f"{topic_id}/{partition}/{broker_id}".encode(), digest_size=8).digest()
