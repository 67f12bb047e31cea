"""Live brokers: each registers an ephemeral key that dies with its session; every broker watches the set.

    /dray/brokers/<id>    JSON {"id", "host", "port", "zone"}   (ephemeral)
    /dray/broker-ids-...  sequence keys that allocate broker ids
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass

from dray_broker.metadata import MUST_NOT_EXIST, MetadataStore, NotificationType, VersionMismatchError

log = logging.getLogger(__name__)

PREFIX = "/dray/brokers/"
ID_SEQUENCE = "/dray/broker-ids"


class BrokerIdInUse(Exception):
    pass


@dataclass(frozen=True)
class BrokerInfo:
    id: int
    host: str
    port: int
    zone: str | None

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "host": self.host, "port": self.port, "zone": self.zone}).encode()

    @classmethod
    def decode(cls, value: bytes) -> "BrokerInfo":
        d = json.loads(value)
        return cls(d["id"], d["host"], d["port"], d.get("zone"))


async def allocate_broker_id(store: MetadataStore) -> int:
    """A broker id no other broker got from this store (starting at 1)."""
    entry = await store.put_sequential(ID_SEQUENCE, b"", [1], partition_key="broker-ids")
    return int(entry.key.rsplit("-", 1)[1])


class BrokerRegistry:
    def __init__(self, store: MetadataStore, me: BrokerInfo):
        self.store = store
        self.me = me
        self._live: dict[int, BrokerInfo] = {me.id: me}
        self._task: asyncio.Task | None = None

    async def start(self, wait_for_id_s: float = 0) -> None:
        """Register; a live broker with the same id makes this fail (after waiting wait_for_id_s for the key of
        a dead one to expire with its session)."""
        watch = await self.store.watch(PREFIX)
        deadline = time.monotonic() + wait_for_id_s
        while True:
            try:
                await self.store.put(PREFIX + str(self.me.id), self.me.encode(), ephemeral=True,
                                     expected_version=MUST_NOT_EXIST)
                break
            except VersionMismatchError:
                if time.monotonic() > deadline:
                    await watch.aclose()
                    raise BrokerIdInUse(f"broker id {self.me.id} is registered by a live broker") from None
                await asyncio.sleep(0.25)
        for e in await self.store.range_scan(PREFIX, PREFIX + "~"):
            info = BrokerInfo.decode(e.value)
            self._live[info.id] = info
        self._task = asyncio.create_task(self._follow(watch), name="broker-registry-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        try:
            await self.store.delete(PREFIX + str(self.me.id))
        except Exception as e:  # the session's end removes it anyway
            log.debug("could not deregister: %r", e)

    async def _follow(self, watch) -> None:
        try:
            async for n in watch:
                broker_id = int(n.key[len(PREFIX):])
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

    def leader(self, topic_id, partition: int, brokers: list[BrokerInfo] | None = None) -> BrokerInfo:
        """The partition's pseudo-leader: rendezvous hash over the given (default: all live) brokers, so a
        partition sticks to one broker while the set does not change."""
        candidates = brokers or self.live()
        return max(candidates, key=lambda b: _weight(topic_id, partition, b.id))


def _weight(topic_id, partition: int, broker_id: int) -> bytes:
    return hashlib.blake2b(f"{topic_id}/{partition}/{broker_id}".encode(), digest_size=8).digest()
