"""Where groups live in the metadata store (keys: dray_broker/keyspace.py, all of one group under one partition key,
so one group lives on one Oxia shard):

    group state          JSON: ClassicGroup.to_record or ConsumerGroup.to_record
    coordinator lease    JSON {"broker", "instance", "session"} (ephemeral, in that metadata session generation)
    committed offsets    JSON {"offset", "epoch", "metadata", "ts", "expire"}, one key per topic-partition

No multi-key transactions: the state key is written with compare-and-set on its version by the lease holder only;
a coordinator that finds another version lost the group. Offsets are one key per partition, written unconditionally
by the lease holder after it validated the commit.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from dray_broker import keyspace
from dray_broker.metadata import MUST_NOT_EXIST, Entry, MetadataStore, Watch


@dataclass(frozen=True)
class CommittedOffset:
    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp: int
    expire_timestamp: int | None = None

    def encode(self) -> bytes:
        return json.dumps({"offset": self.offset, "epoch": self.leader_epoch, "metadata": self.metadata,
                           "ts": self.commit_timestamp, "expire": self.expire_timestamp},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> "CommittedOffset":
        d = json.loads(value)
        return cls(int(d["offset"]), int(d.get("epoch", -1)), d.get("metadata") or "", int(d.get("ts", 0)),
                   d.get("expire"))


@dataclass(frozen=True)
class Lease:
    broker_id: int
    instance: str
    version: int
    session: int = 0  # the holder's metadata session generation

    @classmethod
    def decode(cls, entry: Entry) -> "Lease":
        d = json.loads(entry.value)
        return cls(int(d["broker"]), str(d["instance"]), entry.version, int(d.get("session", 0)))


class GroupStore:
    def __init__(self, store: MetadataStore):
        self.store = store

    # --- state ----------------------------------------------------------------------------------------------

    async def get_state(self, group_id: str) -> tuple[dict, int] | None:
        e = await self.store.get(keyspace.group_state_key(group_id), partition_key=_pk(group_id))
        return None if e is None else (json.loads(e.value), e.version)

    async def put_state(self, group_id: str, record: dict, expected_version: int | None) -> int:
        """CAS write (expected_version None: the key must not exist). Returns the new version."""
        e = await self.store.put(
            keyspace.group_state_key(group_id), json.dumps(record, separators=(",", ":")).encode(),
            expected_version=MUST_NOT_EXIST if expected_version is None else expected_version,
            partition_key=_pk(group_id),
        )
        return e.version

    async def delete_state(self, group_id: str, expected_version: int | None) -> None:
        await self.store.delete(keyspace.group_state_key(group_id), expected_version=expected_version,
                                partition_key=_pk(group_id))

    async def all_states(self) -> dict[str, dict]:
        states = keyspace.GROUP_STATES
        out = {}
        for e in await self.store.range_scan(states.prefix, states.end, partition_key=states.partition_key):
            group_id = keyspace.parse_group_state_key(e.key)
            if group_id is not None:
                out[group_id] = json.loads(e.value)
        return out

    # --- leases ---------------------------------------------------------------------------------------------

    async def get_lease(self, group_id: str) -> Lease | None:
        e = await self.store.get(keyspace.group_lease_key(group_id), partition_key=_pk(group_id))
        return None if e is None else Lease.decode(e)

    async def take_lease(self, group_id: str, broker_id: int, instance: str, session: int) -> Lease:
        """Create the ephemeral lease key in session generation `session`; VersionMismatchError if someone holds
        it, SessionExpiredError if that generation is over."""
        e = await self.store.put(
            keyspace.group_lease_key(group_id),
            json.dumps({"broker": broker_id, "instance": instance, "session": session}).encode(),
            expected_version=MUST_NOT_EXIST, ephemeral=True, session=session, partition_key=_pk(group_id),
        )
        return Lease(broker_id, instance, e.version, session)

    async def release_lease(self, group_id: str, version: int) -> None:
        await self.store.delete(keyspace.group_lease_key(group_id), expected_version=version,
                                partition_key=_pk(group_id))

    async def all_leases(self) -> dict[str, Lease]:
        leases = keyspace.GROUP_LEASES
        out = {}
        for e in await self.store.range_scan(leases.prefix, leases.end, partition_key=leases.partition_key):
            group_id = keyspace.parse_group_lease_key(e.key)
            if group_id is not None:
                out[group_id] = Lease.decode(e)
        return out

    async def watch_leases(self) -> Watch:
        """Notifications about every group's lease key (lease_group says whose)."""
        return await self.store.watch(keyspace.GROUP_LEASES.prefix)

    @staticmethod
    def lease_group(key: str) -> str | None:
        """The group of a lease key (for watch notifications), None for other keys."""
        return keyspace.parse_group_lease_key(key)

    # --- offsets --------------------------------------------------------------------------------------------

    async def put_offset(self, group_id: str, topic: str, partition: int, offset: CommittedOffset) -> None:
        await self.store.put(keyspace.group_offset_key(group_id, topic, partition), offset.encode(),
                             partition_key=_pk(group_id))

    async def get_offset(self, group_id: str, topic: str, partition: int) -> CommittedOffset | None:
        e = await self.store.get(keyspace.group_offset_key(group_id, topic, partition), partition_key=_pk(group_id))
        return None if e is None else CommittedOffset.decode(e.value)

    async def get_offsets(self, group_id: str, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], CommittedOffset]:
        found = await asyncio.gather(*(self.get_offset(group_id, t, p) for t, p in wanted))
        return {tp: o for tp, o in zip(wanted, found) if o is not None}

    async def all_offsets(self, group_id: str) -> dict[tuple[str, int], CommittedOffset]:
        offsets = keyspace.group_offsets(group_id)
        out = {}
        for e in await self.store.range_scan(offsets.prefix, offsets.end, partition_key=offsets.partition_key):
            tp = keyspace.parse_group_offset_key(group_id, e.key)
            if tp is not None:
                out[tp] = CommittedOffset.decode(e.value)
        return out

    async def delete_offset(self, group_id: str, topic: str, partition: int) -> bool:
        return await self.store.delete(keyspace.group_offset_key(group_id, topic, partition),
                                       partition_key=_pk(group_id))

    async def delete_all_offsets(self, group_id: str) -> None:
        offsets = keyspace.group_offsets(group_id)
        await self.store.delete_range(offsets.prefix, offsets.end, partition_key=offsets.partition_key)


def _pk(group_id: str) -> str:
    return keyspace.group_partition_key(group_id)
