"""The keyspace: every family's keys round-trip, keep the stored format, sort as the code relies on, and are told
apart from every other family's; and no module outside dray_broker/keyspace.py spells a key."""

from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dray_broker import keyspace as K
from dray_broker.keyspace import IndexFamily
from dray_broker.metadata import hierarchical_sort_key, parse_sequence_key

ROOT = Path(__file__).resolve().parents[2]
TOPIC_ID = uuid.UUID("0b5b7c1e-8a6f-4c4e-9a51-3f0d1f7a2b10")
OTHER_ID = uuid.UUID("7d2f1a90-1111-4b7e-8c3a-5e6f7a8b9c0d")
names = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # Kafka strings are UTF-8
topic_names = st.from_regex(r"[a-zA-Z0-9._-]{1,60}", fullmatch=True)
offsets = st.integers(0, 10**20 - 1)
partitions = st.integers(0, 100_000)


def in_range(key: str, start: str, end: str) -> bool:
    """Whether the store's range [start, end) holds key (both backends order keys hierarchically)."""
    return hierarchical_sort_key(start) <= hierarchical_sort_key(key) < hierarchical_sort_key(end)


def in_directory(key: str, d: K.Directory) -> bool:
    return in_range(key, d.prefix, d.end)


# --- the stored format: existing data stays readable ---------------------------------------------------------------


def test_keys_and_partition_keys_are_the_ones_already_stored():
    t, p = TOPIC_ID, 3
    pk = f"{t}-3"
    assert K.CLUSTER_ID == "/dray/cluster"
    assert K.topic_key("orders") == "/dray/topics/orders"
    assert (K.TOPICS.prefix, K.TOPICS.partition_key) == ("/dray/topics/", None)
    assert K.deleted_topic_key(t) == f"/dray/deleted-topics/{t}"
    assert K.broker_key(7) == "/dray/brokers/7" and K.BROKERS.partition_key is None
    assert (K.BROKER_IDS.prefix, K.BROKER_IDS.partition_key) == ("/dray/broker-ids", "broker-ids")
    assert K.BROKER_IDS.key(4) == "/dray/broker-ids-00000000000000000004"
    assert (K.PRODUCER_IDS.prefix, K.PRODUCER_IDS.partition_key) == ("/dray/producer-ids", "producer-ids")
    assert K.partition_key(t, p) == pk
    assert K.index_dir(t, p) == K.Directory(f"/dray/idx/{t}/3/", pk)
    assert K.wal_sequence(t, p) == f"/dray/idx/{t}/3/wal"
    assert K.wal_key(t, p, 10, 200) == f"/dray/idx/{t}/3/wal-00000000000000000010-00000000000000000200"
    assert K.parquet_key(t, p, 10) == f"/dray/idx/{t}/3/pq-00000000000000000010"
    assert K.log_start_key(t, p) == f"/dray/idx/{t}/3/start"
    assert K.watermark_key(t, p) == f"/dray/idx/{t}/3/watermark"
    assert K.lake_boundaries_key(t, p) == f"/dray/lake/{t}/3/boundaries"
    assert K.lake_dir(t, p) == K.Directory(f"/dray/lake/{t}/3/", pk)
    assert K.group_state_key("g 1/x") == "/dray/groups/state/g%201%2Fx"
    assert K.group_lease_key("") == "/dray/groups/lease/%"
    assert K.group_offset_key("g", "orders", 2) == "/dray/groups/offsets/g/orders:2"
    assert K.group_partition_key("a~b") == "group/a%7Eb"
    assert K.GROUP_STATES.partition_key is None and K.GROUP_LEASES.partition_key is None


def test_producer_and_security_families():
    t = TOPIC_ID
    assert K.producer_state_key(t, 1, 42) == f"/dray/producers/{t}/1/00000000000000000042"
    assert K.producer_states(t, 1).partition_key == K.partition_key(t, 1)
    assert K.producer_owner_key("ab12") == "/dray/producer-owners/ab12"
    assert K.PRODUCER_OWNERS.partition_key == "producer-owners"
    assert K.scram_credential_key("SCRAM-SHA-256", "alice") == "/dray/users/SCRAM-SHA-256/alice"
    assert K.scram_credentials("SCRAM-SHA-512").partition_key == "users"
    binding = "0123456789abcdef0123456789abcdef"
    assert K.acl_key(binding) == f"/dray/acls/{binding}" and K.ACLS.partition_key == "acls"
    for bad in ("ABC", "0123", binding + "0", "g" * 32):
        with pytest.raises(ValueError):
            K.acl_key(bad)
    for bad in ("scram-sha-256", "", "A/B"):
        with pytest.raises(ValueError):
            K.scram_credentials(bad)
    for bad in ("", "a/b", "~x"):
        with pytest.raises(ValueError):
            K.producer_owner_key(bad)


# --- round trips -----------------------------------------------------------------------------------------------------


@given(names)
def test_names_round_trip_as_one_segment_below_tilde(name):
    segment = K.encode_name(name)
    assert "/" not in segment and ":" not in segment and segment and segment < "~"
    assert K.decode_name(segment) == name
    assert K.parse_group_state_key(K.group_state_key(name)) == name
    assert K.parse_group_lease_key(K.group_lease_key(name)) == name
    assert K.parse_scram_credential_key(K.scram_credential_key("SCRAM-SHA-256", name)) == ("SCRAM-SHA-256", name)
    assert K.parse_topic_key(K.topic_key(name)) == name
    assert in_directory(K.group_state_key(name), K.GROUP_STATES)
    assert in_directory(K.scram_credential_key("SCRAM-SHA-512", name), K.scram_credentials("SCRAM-SHA-512"))


@given(topic_names)
def test_legal_topic_names_are_their_own_segment(name):
    assert K.topic_key(name) == K.TOPICS.prefix + name
    assert K.parse_topic_key(K.topic_key(name)) == name
    assert in_directory(K.topic_key(name), K.TOPICS)


@given(names, names, st.integers(-1, 2**31 - 1))
def test_group_offsets_round_trip(group, topic, partition):
    key = K.group_offset_key(group, topic, partition)
    assert K.parse_group_offset_key(group, key) == (topic, partition)
    assert in_directory(key, K.group_offsets(group))
    other = group + "x"
    assert K.parse_group_offset_key(other, key) is None
    assert not in_directory(key, K.group_offsets(other))
    # A group's offsets are deeper than the states and leases of every group: no scan of those sees them.
    assert not in_directory(key, K.GROUP_STATES) and not in_directory(key, K.GROUP_LEASES)


@given(offsets, offsets, partitions)
def test_index_keys_round_trip(end, cum, partition):
    t = TOPIC_ID
    wal = K.wal_key(t, partition, end, cum)
    assert parse_sequence_key(K.wal_sequence(t, partition), wal) == [end, cum]  # what put_sequential makes
    assert K.parse_wal_key(t, partition, wal) == (end, cum)
    assert K.index_entry_end(t, partition, IndexFamily.WAL, wal) == end
    pq = K.parquet_key(t, partition, end)
    assert K.parse_parquet_key(t, partition, pq) == end
    assert K.index_entry_end(t, partition, IndexFamily.PARQUET, pq) == end
    start, watermark = K.log_start_key(t, partition), K.watermark_key(t, partition)
    assert K.parse_index_change(wal) == (t, partition, end, False, False)
    for key in (wal, pq, start, watermark):
        assert K.parse_index_key(key) == (t, partition)
        assert K.parse_index_change(key) == (t, partition, end if key == wal else None, key == start,
                                             key == watermark)
        assert in_directory(key, K.index_dir(t, partition))
        assert K.parse_wal_key(t, partition + 1, key) is None and K.parse_wal_key(OTHER_ID, partition, key) is None
        assert K.parse_parquet_key(t, partition + 1, key) is None
    assert K.index_entry_end(t, partition, IndexFamily.WAL, pq) is None
    assert K.index_entry_end(t, partition, IndexFamily.PARQUET, wal) is None


@given(partitions, st.integers(0, 10**20 - 1))
def test_partition_families_round_trip(partition, producer_id):
    t = TOPIC_ID
    assert K.parse_producer_state_key(K.producer_state_key(t, partition, producer_id)) == (t, partition, producer_id)
    assert in_directory(K.producer_state_key(t, partition, producer_id), K.producer_states(t, partition))
    assert K.parse_deleted_topic_key(K.deleted_topic_key(t)) == t
    assert K.parse_broker_key(K.broker_key(partition)) == partition
    assert K.BROKER_IDS.parse(K.BROKER_IDS.key(partition + 1)) == partition + 1
    assert K.PRODUCER_IDS.parse(K.PRODUCER_IDS.key(producer_id)) == producer_id
    owner = uuid.uuid4().hex
    assert K.parse_producer_owner_key(K.producer_owner_key(owner)) == owner
    binding = uuid.uuid4().hex
    assert K.parse_acl_key(K.acl_key(binding)) == binding


# --- ordering the code relies on -------------------------------------------------------------------------------------


@settings(max_examples=50)
@given(st.lists(st.tuples(offsets, offsets), min_size=1, max_size=20, unique_by=lambda e: e[0]),
       st.integers(0, 10**20 - 1), partitions)
def test_a_familys_entries_sort_in_offset_order_and_its_range_holds_just_them(entries, min_end, partition):
    t = TOPIC_ID
    wal = [K.wal_key(t, partition, end, cum) for end, cum in entries]
    pq = [K.parquet_key(t, partition, end) for end, _ in entries]
    others = [K.log_start_key(t, partition), K.watermark_key(t, partition),
              f"{K.index_dir(t, partition).prefix}pid-{5:020d}",  # producer state as kept before its own family
              K.wal_key(t, partition + 1, 5, 5), K.parquet_key(OTHER_ID, partition, 5),
              K.lake_boundaries_key(t, partition), K.producer_state_key(t, partition, 5)]
    every = wal + pq + others
    by_offset = sorted(range(len(entries)), key=lambda i: entries[i][0])
    for family, keys in ((IndexFamily.WAL, wal), (IndexFamily.PARQUET, pq)):
        assert sorted(keys, key=hierarchical_sort_key) == [keys[i] for i in by_offset]
        start, end = K.index_entries_range(t, partition, family, min_end)
        held = sorted((k for k in every if in_range(k, start, end)), key=hierarchical_sort_key)
        assert held == [keys[i] for i in by_offset if entries[i][0] >= min_end]
        # The range's end is above every key of the family (the newest is the greatest key below it).
        assert all(hierarchical_sort_key(k) < hierarchical_sort_key(end) for k in keys)


def test_directories_hold_one_level():
    assert not in_directory(K.topic_key("a"), K.DELETED_TOPICS)
    assert not in_directory(K.deleted_topic_key(TOPIC_ID), K.TOPICS)
    assert not in_directory(K.wal_key(TOPIC_ID, 0, 1, 1), K.Directory(K.INDEX_ROOT))
    assert in_directory(K.broker_key(12), K.BROKERS)
    assert in_directory(K.producer_owner_key("x"), K.PRODUCER_OWNERS)
    assert in_directory(K.acl_key("f" * 32), K.ACLS)
    assert not in_directory(K.scram_credential_key("SCRAM-SHA-256", "u"), K.scram_credentials("SCRAM-SHA-512"))


# --- foreign keys ------------------------------------------------------------------------------------------------


def _one_key_of_each_family() -> dict[str, str]:
    t = TOPIC_ID
    return {
        "cluster": K.CLUSTER_ID,
        "topic": K.topic_key("orders"),
        "deleted topic": K.deleted_topic_key(t),
        "broker": K.broker_key(3),
        "broker id": K.BROKER_IDS.key(3),
        "producer id": K.PRODUCER_IDS.key(3),
        "producer owner": K.producer_owner_key("abc"),
        "producer state": K.producer_state_key(t, 0, 3),
        "wal": K.wal_key(t, 0, 3, 30),
        "parquet": K.parquet_key(t, 0, 3),
        "log start": K.log_start_key(t, 0),
        "watermark": K.watermark_key(t, 0),
        "lake": K.lake_boundaries_key(t, 0),
        "group state": K.group_state_key("g"),
        "group lease": K.group_lease_key("g"),
        "group offset": K.group_offset_key("g", "orders", 0),
        "scram": K.scram_credential_key("SCRAM-SHA-256", "alice"),
        "acl": K.acl_key("a" * 32),
    }


PARSERS = {
    "topic": K.parse_topic_key,
    "deleted topic": K.parse_deleted_topic_key,
    "broker": K.parse_broker_key,
    "broker id": K.BROKER_IDS.parse,
    "producer id": K.PRODUCER_IDS.parse,
    "producer owner": K.parse_producer_owner_key,
    "producer state": K.parse_producer_state_key,
    "wal": lambda k: K.parse_wal_key(TOPIC_ID, 0, k),
    "parquet": lambda k: K.parse_parquet_key(TOPIC_ID, 0, k),
    "index": K.parse_index_key,
    "index change": K.parse_index_change,
    "group state": K.parse_group_state_key,
    "group lease": K.parse_group_lease_key,
    "group offset": lambda k: K.parse_group_offset_key("g", k),
    "scram": K.parse_scram_credential_key,
    "acl": K.parse_acl_key,
}
INDEX_FAMILIES = {"wal", "parquet", "log start", "watermark"}


def test_each_parser_takes_its_own_family_and_refuses_every_other():
    keys = _one_key_of_each_family()
    for name, parse in PARSERS.items():
        own = INDEX_FAMILIES if name in ("index", "index change") else {name}
        for family, key in keys.items():
            assert (parse(key) is not None) == (family in own), (name, family, key)


@pytest.mark.parametrize("key", [
    "/dray/topics/a/b", "/dray/topics/", "/dray/deleted-topics/not-a-uuid", "/dray/brokers/x", "/dray/brokers/-1",
    "/dray/broker-ids-12", f"/dray/idx/{TOPIC_ID}/01/start", f"/dray/idx/{TOPIC_ID.hex}/0/start",
    f"/dray/idx/{TOPIC_ID}/0/wal-00000000000000000001", f"/dray/idx/{TOPIC_ID}/0/pq-1",
    f"/dray/idx/{TOPIC_ID}/0/sub/wal-00000000000000000001-00000000000000000001",
    f"/dray/producers/{TOPIC_ID}/0/42", "/dray/groups/lease/g/x", "/dray/groups/offsets/g/t:x",
    "/dray/groups/offsets/g/t", "/dray/users/SCRAM-SHA-256", "/dray/users/SCRAM-SHA-256/a/b", "/dray/acls/xyz",
    "/draybrokers/1", "dray/topics/a",
])
def test_malformed_keys_are_refused(key):
    in_an_index = key.startswith(K.index_dir(TOPIC_ID, 0).prefix) and key.count("/") == 5
    for name, parse in PARSERS.items():
        # Any key one level under a partition's index directory is that partition's, for the index watch.
        assert (parse(key) is not None) == (name in ("index", "index change") and in_an_index), name


# --- no key outside the keyspace ---------------------------------------------------------------------------------

# A key literal: "/dray/..." or "/dray-..." at the start of a string or a word (a docstring that lists keys).
_KEY_LITERAL = re.compile(r"(^|[\s\"'`(])/dray[/-]")


def test_no_module_but_the_keyspace_spells_a_key():
    found = []
    for package in ("dray_broker", "dray_pipelines"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "dray_broker" / "keyspace.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and _KEY_LITERAL.search(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], f"metadata keys are built in dray_broker/keyspace.py only: {found}"


# An index family spelled as a string ("wal-", f"...pq-{end}", "pq-~") instead of keyspace.IndexFamily.
_FAMILY_LITERAL = re.compile(r"(^|/)(wal|pq)-(\d|~|$)")


def test_index_families_are_the_enum_outside_the_keyspace():
    found = []
    for package in ("dray_broker", "dray_pipelines"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "dray_broker" / "keyspace.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        _FAMILY_LITERAL.search(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], f"index families are keyspace.IndexFamily outside dray_broker/keyspace.py: {found}"


@pytest.mark.parametrize("text, is_family", [
    ("wal-", True), ("pq-", True), ("pq-~", True), ("/dray/idx/t/0/wal-0001", True),
    ("wal", False), ("wal-write", False), ("wal-gc:", False), ("wal/", False), ("orders-wal-1", False),
])
def test_the_family_check_sees_a_family(text, is_family):
    assert bool(_FAMILY_LITERAL.search(text)) == is_family
