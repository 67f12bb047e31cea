"""The metadata keyspace: every key Dray keeps in the metadata store is built and parsed here, and nowhere else.

Family                                                  value                              partition key
/dray/cluster                                           cluster id (cluster_identity.py)   -
/dray/topics/<topic name>                               topic JSON (topics/catalog.py)     -
/dray/deleted-topics/<topic id>                         tombstone JSON (the same)          -
/dray/brokers/<broker id>                               registration JSON, ephemeral       -
/dray/broker-ids-<n>                                    sequence: broker ids               broker-ids
/dray/producer-ids-<n>                                  sequence: producer ids             producer-ids
/dray/producer-owners/<owner id>                        reservation owner, ephemeral       producer-owners
/dray/producers/<topic id>/<partition>/<producer id>    producer state JSON                <topic id>-<partition>
/dray/idx/<topic id>/<partition>/wal-<end>-<bytes>      WAL index entry (put_sequential)   <topic id>-<partition>
/dray/idx/<topic id>/<partition>/pq-<end>               Parquet index entry                <topic id>-<partition>
/dray/idx/<topic id>/<partition>/start                  log start offset (absent: 0)       <topic id>-<partition>
/dray/idx/<topic id>/<partition>/watermark              compacted watermark (absent: 0)    <topic id>-<partition>
/dray/lake/<topic id>/<partition>/boundaries            pipeline GC boundaries JSON        <topic id>-<partition>
/dray/lake/<topic id>/<partition>/cleaner               compacted topic cleaner JSON       <topic id>-<partition>
/dray/groups/state/<group>                              group state JSON                   group/<group>
/dray/groups/lease/<group>                              coordinator lease JSON, ephemeral  group/<group>
/dray/groups/offsets/<group>/<topic>:<partition>        committed offset JSON              group/<group>
/dray/users/<mechanism>/<user>                          SCRAM credential JSON              users
/dray/acls/<binding id>                                 ACL binding JSON                   acls

"-" is no partition key: Oxia routes the key by itself. A key is always read with the partition key it was written
with, so neither a key nor its partition key may change once data exists.

The rules the code relies on (tests/unit/test_keyspace.py checks each):
- The store sorts keys hierarchically (dray_broker/metadata/keys.py): segment by segment, and a key that ends in a
  segment sorts before one that goes deeper. A Directory's [prefix, prefix + "~") holds exactly the keys one level
  under it, because every segment built here sorts below "~"; deeper keys are not in it. A watch takes a prefix and
  sees every depth.
- Offsets and producer ids are 20 zero-padded digits, so a family's keys sort in numeric order: WAL and Parquet
  entries of a partition by end offset, which is how lookups (ceiling get) and the log end (lower get) find them.
- Names from clients (topic names, group ids, SCRAM user names) are one percent-encoded segment (every byte but
  letters, digits and -._ ; "%" alone for the empty name), so they cannot add a level or a separator. Legal topic
  names ([a-zA-Z0-9._-]) are unchanged by the encoding.
- A parse function answers None for a key of another family (or another partition), never a wrong value.
"""

from __future__ import annotations

import enum
import functools
import re
import uuid
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote, unquote

from dray_broker.metadata import parse_sequence_key, sequence_key

ROOT = "/dray/"
_OFFSET_DIGITS = 20
_MAX_NUMBER = 10**_OFFSET_DIGITS - 1


@dataclass(frozen=True, slots=True)
class Directory:
    """The keys one level under prefix: range_scan/list/delete_range over [prefix, end) with partition_key (None:
    across all shards). watch(prefix) sees deeper keys too."""

    prefix: str
    partition_key: str | None = None

    @property
    def end(self) -> str:
        return self.prefix + "~"

    def child(self, key: str) -> str | None:
        """The last segment of a key one level under this directory, else None."""
        if not key.startswith(self.prefix):
            return None
        rest = key[len(self.prefix):]
        return rest if rest and "/" not in rest else None


@dataclass(frozen=True, slots=True)
class Sequence:
    """A counter kept with put_sequential: each put makes the key <prefix>-<n> with the next n, from 1."""

    prefix: str
    partition_key: str

    def key(self, n: int) -> str:
        return sequence_key(self.prefix, [n])

    def parse(self, key: str) -> int | None:
        """The number of a key of this sequence."""
        sums = parse_sequence_key(self.prefix, key)
        return sums[0] if sums is not None and len(sums) == 1 else None


# --- segments ------------------------------------------------------------------------------------------------------


def encode_name(name: str) -> str:
    """Any client-given name as one key segment that sorts below "~"."""
    if name == "":
        return "%"
    return quote(name, safe="-._").replace("~", "%7E")


def decode_name(segment: str) -> str:
    return "" if segment == "%" else unquote(segment)


def _segment(value: str, what: str) -> str:
    if not value or "/" in value or value >= "~":
        raise ValueError(f"{what} {value!r} cannot be a key segment")
    return value


def _number(n: int) -> str:
    if not 0 <= n <= _MAX_NUMBER:
        raise ValueError(f"{n} does not fit a {_OFFSET_DIGITS}-digit key")
    return f"{n:0{_OFFSET_DIGITS}d}"


def _parse_number(text: str) -> int | None:
    return int(text) if len(text) == _OFFSET_DIGITS and text.isascii() and text.isdigit() else None


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    return parsed if str(parsed) == text else None


_SIGNED = re.compile(r"-?(0|[1-9][0-9]*)")


def _parse_partition(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and str(int(text)) == text else None


# --- cluster, topics, brokers ----------------------------------------------------------------------------------------

CLUSTER_ID = ROOT + "cluster"

TOPICS = Directory(ROOT + "topics/")
DELETED_TOPICS = Directory(ROOT + "deleted-topics/")


def topic_key(name: str) -> str:
    """Legal topic names are their own segment; any other name (a lookup from a client) is encoded, and finds
    nothing."""
    return TOPICS.prefix + encode_name(name)


def parse_topic_key(key: str) -> str | None:
    child = TOPICS.child(key)
    return None if child is None else decode_name(child)


def deleted_topic_key(topic_id: uuid.UUID) -> str:
    return DELETED_TOPICS.prefix + str(topic_id)


def parse_deleted_topic_key(key: str) -> uuid.UUID | None:
    child = DELETED_TOPICS.child(key)
    return None if child is None else _parse_uuid(child)


BROKERS = Directory(ROOT + "brokers/")
BROKER_IDS = Sequence(ROOT + "broker-ids", "broker-ids")


def broker_key(broker_id: int) -> str:
    if broker_id < 0:
        raise ValueError(f"broker id {broker_id} is negative")
    return BROKERS.prefix + str(broker_id)


def parse_broker_key(key: str) -> int | None:
    child = BROKERS.child(key)
    return None if child is None else _parse_partition(child)


# --- per partition: producers, offset index, lake ------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def partition_key(topic_id: uuid.UUID, partition: int) -> str:
    """The partition key of every key of one topic-partition: one partition lives on one Oxia shard. Cached, as are
    the partitions' directories: every index append and notification needs them, and formatting a UUID costs more
    than the rest of a key."""
    return f"{topic_id}-{partition}"


@functools.lru_cache(maxsize=16384)
def _partition_dir(root: str, topic_id: uuid.UUID, partition: int) -> Directory:
    if partition < 0:
        raise ValueError(f"partition {partition} is negative")
    return Directory(f"{root}{topic_id}/{partition}/", partition_key(topic_id, partition))


def _which_partition(root: str, key: str) -> tuple[uuid.UUID, int, str] | None:
    """(topic id, partition, rest) of a key <root><topic id>/<partition>/<rest>."""
    if not key.startswith(root):
        return None
    head, sep, rest = key[len(root):].rpartition("/")
    if not sep or not rest:
        return None
    found = _partition_of(head)
    return None if found is None else (found[0], found[1], rest)


@functools.lru_cache(maxsize=4096)
def _partition_of(head: str) -> tuple[uuid.UUID, int] | None:
    """(topic id, partition) of "<topic id>/<partition>". Cached: the index watch parses the same few partitions
    over and over, and parsing a UUID costs more than the rest of a key."""
    topic_text, sep, partition_text = head.partition("/")
    if not sep:
        return None
    topic_id, partition = _parse_uuid(topic_text), _parse_partition(partition_text)
    return None if topic_id is None or partition is None else (topic_id, partition)


PRODUCER_IDS = Sequence(ROOT + "producer-ids", "producer-ids")
PRODUCER_OWNERS = Directory(ROOT + "producer-owners/", "producer-owners")
PRODUCERS_ROOT = ROOT + "producers/"


def producer_owner_key(owner_id: str) -> str:
    return PRODUCER_OWNERS.prefix + _segment(owner_id, "producer owner id")


def parse_producer_owner_key(key: str) -> str | None:
    return PRODUCER_OWNERS.child(key)


def producer_states(topic_id: uuid.UUID, partition: int) -> Directory:
    """The producer states of one partition (deleted with the partition)."""
    return _partition_dir(PRODUCERS_ROOT, topic_id, partition)


def producer_state_key(topic_id: uuid.UUID, partition: int, producer_id: int) -> str:
    return producer_states(topic_id, partition).prefix + _number(producer_id)


def parse_producer_state_key(key: str) -> tuple[uuid.UUID, int, int] | None:
    """(topic id, partition, producer id)."""
    found = _which_partition(PRODUCERS_ROOT, key)
    if found is None:
        return None
    producer_id = _parse_number(found[2])
    return None if producer_id is None else (found[0], found[1], producer_id)


INDEX_ROOT = ROOT + "idx/"


class IndexFamily(enum.Enum):
    """The two kinds of offset index entries of a partition; the value is the key's family prefix."""

    WAL = "wal"  # wal-<end>-<cumulative bytes>: appended by brokers with put_sequential
    PARQUET = "pq"  # pq-<end>: written by compaction


_LOG_START = "start"
_WATERMARK = "watermark"


def index_dir(topic_id: uuid.UUID, partition: int) -> Directory:
    """Every index key of one partition (the purge of a deleted topic deletes this range)."""
    return _partition_dir(INDEX_ROOT, topic_id, partition)


def wal_sequence(topic_id: uuid.UUID, partition: int) -> str:
    """The put_sequential prefix of WAL entries; put with deltas [record count, byte count]."""
    return index_dir(topic_id, partition).prefix + IndexFamily.WAL.value


def wal_key(topic_id: uuid.UUID, partition: int, end: int, cum_bytes: int) -> str:
    """The key put_sequential makes for the WAL entry ending at end, cum_bytes bytes appended through it."""
    return sequence_key(wal_sequence(topic_id, partition), [end, cum_bytes])


def parse_wal_key(topic_id: uuid.UUID, partition: int, key: str) -> tuple[int, int] | None:
    """(end offset, cumulative bytes) of a WAL entry key of this partition."""
    sums = parse_sequence_key(wal_sequence(topic_id, partition), key)
    return (sums[0], sums[1]) if sums is not None and len(sums) == 2 else None


def parquet_key(topic_id: uuid.UUID, partition: int, end: int) -> str:
    return f"{index_dir(topic_id, partition).prefix}{IndexFamily.PARQUET.value}-{_number(end)}"


def parse_parquet_key(topic_id: uuid.UUID, partition: int, key: str) -> int | None:
    prefix = f"{index_dir(topic_id, partition).prefix}{IndexFamily.PARQUET.value}-"
    return _parse_number(key[len(prefix):]) if key.startswith(prefix) else None


def index_entries_range(topic_id: uuid.UUID, partition: int, family: IndexFamily, min_end: int = 0) -> tuple[str, str]:
    """[start, end) of the entries of one family whose end offset is at least min_end, in offset order. The end
    bound is also the key every entry of the family sorts below (a LOWER get there finds the newest)."""
    prefix = f"{index_dir(topic_id, partition).prefix}{family.value}-"
    return prefix + _number(min_end), prefix + "~"


def index_entry_end(topic_id: uuid.UUID, partition: int, family: IndexFamily, key: str) -> int | None:
    """The end offset of an entry key of this partition and family (None: another key)."""
    if family is IndexFamily.WAL:
        parsed = parse_wal_key(topic_id, partition, key)
        return None if parsed is None else parsed[0]
    return parse_parquet_key(topic_id, partition, key)


def log_start_key(topic_id: uuid.UUID, partition: int) -> str:
    return index_dir(topic_id, partition).prefix + _LOG_START


def watermark_key(topic_id: uuid.UUID, partition: int) -> str:
    return index_dir(topic_id, partition).prefix + _WATERMARK


def parse_index_key(key: str) -> tuple[uuid.UUID, int] | None:
    """Which partition a key under INDEX_ROOT belongs to, None for any other key."""
    found = parse_index_change(key)
    return None if found is None else (found.topic_id, found.partition)


class IndexKeyChange(NamedTuple):
    """What the index watch needs from the key of a notification under INDEX_ROOT."""

    topic_id: uuid.UUID
    partition: int
    wal_end: int | None  # the end offset if it is a WAL entry key
    log_start: bool  # the log start key
    watermark: bool  # the compacted watermark key


def parse_index_change(key: str) -> IndexKeyChange | None:
    """The partition of a key under INDEX_ROOT and which key of it this is, in one pass; None for any other key."""
    found = _which_partition(INDEX_ROOT, key)
    if found is None:
        return None
    topic_id, partition, rest = found
    sums = parse_sequence_key(IndexFamily.WAL.value, rest)
    return IndexKeyChange(topic_id, partition, sums[0] if sums is not None and len(sums) == 2 else None,
                          rest == _LOG_START, rest == _WATERMARK)


LAKE_ROOT = ROOT + "lake/"


def lake_dir(topic_id: uuid.UUID, partition: int) -> Directory:
    """The pipeline's keys of one partition (deleted with the partition)."""
    return _partition_dir(LAKE_ROOT, topic_id, partition)


def lake_boundaries_key(topic_id: uuid.UUID, partition: int) -> str:
    return lake_dir(topic_id, partition).prefix + "boundaries"


def lake_cleaner_key(topic_id: uuid.UUID, partition: int) -> str:
    """The cleaner's passes of a compacted topic's partition (dray_pipelines/cleaning.py)."""
    return lake_dir(topic_id, partition).prefix + "cleaner"


# --- consumer groups -------------------------------------------------------------------------------------------------

GROUPS_ROOT = ROOT + "groups/"
GROUP_STATES = Directory(GROUPS_ROOT + "state/")  # a scan of every group's state: across shards
GROUP_LEASES = Directory(GROUPS_ROOT + "lease/")
_GROUP_OFFSETS = GROUPS_ROOT + "offsets/"


def group_partition_key(group_id: str) -> str:
    """Every key of one group has this partition key: one group lives on one Oxia shard."""
    return "group/" + encode_name(group_id)


def group_state_key(group_id: str) -> str:
    return GROUP_STATES.prefix + encode_name(group_id)


def parse_group_state_key(key: str) -> str | None:
    child = GROUP_STATES.child(key)
    return None if child is None else decode_name(child)


def group_lease_key(group_id: str) -> str:
    return GROUP_LEASES.prefix + encode_name(group_id)


def parse_group_lease_key(key: str) -> str | None:
    child = GROUP_LEASES.child(key)
    return None if child is None else decode_name(child)


def group_offsets(group_id: str) -> Directory:
    """The committed offsets of one group."""
    return Directory(f"{_GROUP_OFFSETS}{encode_name(group_id)}/", group_partition_key(group_id))


def group_offset_key(group_id: str, topic: str, partition: int) -> str:
    """The topic is encoded like a name (legal topic names stay as they are), so ':' separates the partition."""
    return f"{group_offsets(group_id).prefix}{encode_name(topic)}:{partition}"


def parse_group_offset_key(group_id: str, key: str) -> tuple[str, int] | None:
    """(topic, partition) of a committed offset key of this group."""
    child = group_offsets(group_id).child(key)
    if child is None:
        return None
    topic, sep, partition = child.rpartition(":")
    if not sep or not topic or _SIGNED.fullmatch(partition) is None:
        return None
    return decode_name(topic), int(partition)


# --- security --------------------------------------------------------------------------------------------------------

USERS_ROOT = ROOT + "users/"
_USERS_PARTITION_KEY = "users"
_MECHANISM = re.compile(r"[A-Z0-9][A-Z0-9-]*")
ACLS = Directory(ROOT + "acls/", "acls")
_BINDING_ID = re.compile(r"[0-9a-f]{32}")


def scram_credentials(mechanism: str) -> Directory:
    """The SCRAM credentials of every user for one mechanism (e.g. SCRAM-SHA-256)."""
    if not _MECHANISM.fullmatch(mechanism):
        raise ValueError(f"{mechanism!r} is not a SASL mechanism name")
    return Directory(f"{USERS_ROOT}{mechanism}/", _USERS_PARTITION_KEY)


def scram_credential_key(mechanism: str, user: str) -> str:
    return scram_credentials(mechanism).prefix + encode_name(user)


def parse_scram_credential_key(key: str) -> tuple[str, str] | None:
    """(mechanism, user) of a SCRAM credential key."""
    if not key.startswith(USERS_ROOT):
        return None
    parts = key[len(USERS_ROOT):].split("/")
    if len(parts) != 2 or not _MECHANISM.fullmatch(parts[0]) or not parts[1]:
        return None
    return parts[0], decode_name(parts[1])


def acl_key(binding_id: str) -> str:
    """The key of an ACL binding, by its content id (auth.acls.AclBinding.stable_id: 32 hex digits)."""
    if not _BINDING_ID.fullmatch(binding_id):
        raise ValueError(f"{binding_id!r} is not an ACL binding id")
    return ACLS.prefix + binding_id


def parse_acl_key(key: str) -> str | None:
    child = ACLS.child(key)
    return child if child is not None and _BINDING_ID.fullmatch(child) else None
