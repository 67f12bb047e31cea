"""Where groups live in the metadata store. Every family sits at one depth, so a directory range is contiguous:

    /dray/groups/state/<group>                     JSON: ClassicGroup.to_record or ConsumerGroup.to_record
    /dray/groups/lease/<group>                     JSON {"broker", "instance", "session"}: the coordinator
                                                   (ephemeral, in that metadata session generation)
    /dray/groups/offsets/<group>/<topic>:<part>    JSON {"offset", "epoch", "metadata", "ts", "expire"}

<group> is the group id percent-encoded (every byte but letters, digits and -._ ; "%" alone for the empty id), so
that any group id is one key segment that sorts below "~". Topic names never hold ':' or '~'. All keys of a group
share the partition key "group/<group>", so one group lives on one Oxia shard.

No multi-key transactions: the state key is written with compare-and-set on its version by the lease holder only;
a coordinator that finds another version lost the group. Offsets are one key per partition, written unconditionally
by the lease holder after it validated the commit.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import quote, unquote

from dray_broker.metadata import MUST_NOT_EXIST, Entry, MetadataStore

ROOT = "/dray/groups/"
STATE = ROOT + "state/"
LEASE = ROOT + "lease/"
OFFSETS = ROOT + "offsets/"


def encode_group(group_id: str) -> str:
    if group_id == "":
        return "%"
    return quote(group_id, safe="-._").replace("~", "%7E")


def decode_group(segment: str) -> str:
    return "" if segment == "%" else unquote(segment)


def _pk(group_id: str) -> str:
    return "group/" + encode_group(group_id)


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
        e = await self.store.get(STATE + encode_group(group_id), partition_key=_pk(group_id))
        return None if e is None else (json.loads(e.value), e.version)

    async def put_state(self, group_id: str, record: dict, expected_version: int | None) -> int:
        """CAS write (expected_version None: the key must not exist). Returns the new version."""
        e = await self.store.put(
            STATE + encode_group(group_id), json.dumps(record, separators=(",", ":")).encode(),
            expected_version=MUST_NOT_EXIST if expected_version is None else expected_version,
            partition_key=_pk(group_id),
        )
        return e.version

    async def delete_state(self, group_id: str, expected_version: int | None) -> None:
        await self.store.delete(STATE + encode_group(group_id), expected_version=expected_version,
                                partition_key=_pk(group_id))

    async def all_states(self) -> dict[str, dict]:
        entries = await self.store.range_scan(STATE, STATE + "~")
        return {decode_group(e.key[len(STATE):]): json.loads(e.value) for e in entries}

    # --- leases ---------------------------------------------------------------------------------------------

    async def get_lease(self, group_id: str) -> Lease | None:
        e = await self.store.get(LEASE + encode_group(group_id), partition_key=_pk(group_id))
        return None if e is None else Lease.decode(e)

    async def take_lease(self, group_id: str, broker_id: int, instance: str, session: int) -> Lease:
        """Create the ephemeral lease key in session generation `session`; VersionMismatchError if someone holds
        it, SessionExpiredError if that generation is over."""
        e = await self.store.put(
            LEASE + encode_group(group_id),
            json.dumps({"broker": broker_id, "instance": instance, "session": session}).encode(),
            expected_version=MUST_NOT_EXIST, ephemeral=True, session=session, partition_key=_pk(group_id),
        )
        return Lease(broker_id, instance, e.version, session)

    async def release_lease(self, group_id: str, version: int) -> None:
        await self.store.delete(LEASE + encode_group(group_id), expected_version=version,
                                partition_key=_pk(group_id))

    async def all_leases(self) -> dict[str, Lease]:
        entries = await self.store.range_scan(LEASE, LEASE + "~")
        return {decode_group(e.key[len(LEASE):]): Lease.decode(e) for e in entries}

    @staticmethod
    def lease_group(key: str) -> str | None:
        """The group of a lease key (for watch notifications), None for other keys."""
        if not key.startswith(LEASE) or "/" in key[len(LEASE):]:
            return None
        return decode_group(key[len(LEASE):])

    # --- offsets --------------------------------------------------------------------------------------------

    @staticmethod
    def _offset_key(group_id: str, topic: str, partition: int) -> str:
        return f"{OFFSETS}{encode_group(group_id)}/{topic}:{partition}"

    async def put_offset(self, group_id: str, topic: str, partition: int, offset: CommittedOffset) -> None:
        await self.store.put(self._offset_key(group_id, topic, partition), offset.encode(),
                             partition_key=_pk(group_id))

    async def get_offset(self, group_id: str, topic: str, partition: int) -> CommittedOffset | None:
        e = await self.store.get(self._offset_key(group_id, topic, partition), partition_key=_pk(group_id))
        return None if e is None else CommittedOffset.decode(e.value)

    async def get_offsets(self, group_id: str, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], CommittedOffset]:
        found = await asyncio.gather(*(self.get_offset(group_id, t, p) for t, p in wanted))
        return {tp: o for tp, o in zip(wanted, found) if o is not None}

    async def all_offsets(self, group_id: str) -> dict[tuple[str, int], CommittedOffset]:
        d = f"{OFFSETS}{encode_group(group_id)}/"
        out = {}
        for e in await self.store.range_scan(d, d + "~", partition_key=_pk(group_id)):
            topic, _, partition = e.key[len(d):].rpartition(":")
            out[(topic, int(partition))] = CommittedOffset.decode(e.value)
        return out

    async def delete_offset(self, group_id: str, topic: str, partition: int) -> bool:
        return await self.store.delete(self._offset_key(group_id, topic, partition), partition_key=_pk(group_id))

    async def delete_all_offsets(self, group_id: str) -> None:
        d = f"{OFFSETS}{encode_group(group_id)}/"
        await self.store.delete_range(d, d + "~", partition_key=_pk(group_id))
