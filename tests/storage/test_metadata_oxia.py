"""Oxia-specific tests of dray_broker.metadata.oxia (the shared behaviour is in test_metadata_contract.py).

- the hand-written protobuf codec against the PyPI package's betterproto2 classes, the key hash, and the ranges
  that skip Oxia's own keys;
- coalescing of concurrent operations into few requests, and the guards against requests the server would fail
  as a whole;
- on private servers: multi-shard routing (checked against the Go client, `oxia client`), Oxia's own `__oxia/`
  keys, session expiry when the keepalive stops, and reconnection after the server is killed and restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import string
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from dray_broker.metadata import (
    Comparison,
    MetadataError,
    NotificationType,
    SessionExpiredError,
    VersionMismatchError,
    hierarchical_sort_key,
    open_metadata_store,
    parse_sequence_key,
    sequence_key,
)
from dray_broker.metadata.oxia import OxiaMetadataStore, codec, own_keys
from dray_broker.metadata.oxia.routing import shard_hash
from oxia.internal.proto.io.streamnative.oxia import proto as pb
from tests import services
from tests.storage.test_metadata_shared import compare_with_slash

# ---------------------------------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateOxia:
    """An `oxia standalone` of this test only: fixed ports and directories, so that it can be killed and started
    again with its data."""

    def __init__(self, binary: Path, workdir: Path, shards: int = 1) -> None:
        self.binary = binary
        self.workdir = workdir
        self.shards = shards
        self.port = _free_port()
        self.mport = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            str(self.binary), "standalone", "-p", self.address, "-m", f"127.0.0.1:{self.mport}",
            "--shards", str(self.shards), "--data-dir", str(self.workdir / "db"), "--wal-dir", str(self.workdir / "wal"),
        ]
        log = open(self.workdir / "oxia.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"oxia exited: {(self.workdir / 'oxia.log').read_text()[-3000:]}")
            try:
                services.oxia_probe(self.address)
                return
            except Exception:  # noqa: BLE001 - not ready yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.proc.wait(15)
        self.proc = None

    def cli(self, *args: str) -> str:
        """The Go client (`oxia client ...`): the reference for key routing."""
        out = subprocess.run(
            [str(self.binary), "client", "-a", self.address, *args],
            capture_output=True, text=True, timeout=60, check=True,
        )
        return out.stdout


@pytest.fixture
def private_oxia(oxia_service, tmp_path):
    """A factory of private servers (needs the binary that oxia_service uses; skipped/failed like it)."""
    servers: list[PrivateOxia] = []

    def make(shards: int = 1) -> PrivateOxia:
        d = tmp_path / f"oxia-{len(servers)}"
        d.mkdir()
        srv = PrivateOxia(services.oxia_binary_path(), d, shards)
        servers.append(srv)
        srv.start()
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def pfx() -> str:
    return f"/ox-{uuid.uuid4().hex[:12]}/"


async def raw_get(store: OxiaMetadataStore, shard: int, key: str):
    """One EQUAL get sent straight to one shard, bypassing the routing."""
    return await store.reads.get(shard, key, Comparison.EQUAL)


async def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def next_notes(watch, n: int, timeout: float = 15.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        try:
            out.append(await asyncio.wait_for(watch.__anext__(), max(0.01, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            raise AssertionError(f"got {len(out)} of {n} notifications: {out}") from None
    return out


# ---------------------------------------------------------------------------------------------------- codec


def test_write_request_encoding_matches_betterproto():
    puts = [
        codec.encode_put("/a/b", b"value", None, None, None, None, None),
        codec.encode_put("/a/c", b"", -1, 77, "me", "pk", None),
        codec.encode_put("/a/idx", b"\x00\xff" * 100, None, None, None, "pk2", [1, 0, (1 << 64) - 1]),
        codec.encode_put("k" * 300, b"v" * 70_000, 123456789012, None, None, None, None),
    ]
    deletes = [codec.encode_delete("/d", None), codec.encode_delete("/e", 0), codec.encode_delete("/f", 5)]
    ranges = [codec.encode_delete_range("/a/", "/a/~")]
    req = pb.WriteRequest.parse(codec.encode_write_request(3, puts, deletes, ranges))
    assert req.shard == 3
    p = req.puts
    assert (p[0].key, p[0].value, p[0].expected_version_id, p[0].session_id, p[0].partition_key) == (
        "/a/b", b"value", None, None, None)
    assert (p[1].key, p[1].value, p[1].expected_version_id, p[1].session_id, p[1].client_identity,
            p[1].partition_key) == ("/a/c", b"", -1, 77, "me", "pk")
    assert p[2].sequence_key_delta == [1, 0, (1 << 64) - 1] and p[2].value == b"\x00\xff" * 100
    assert p[3].key == "k" * 300 and len(p[3].value) == 70_000 and p[3].expected_version_id == 123456789012
    assert [(d.key, d.expected_version_id) for d in req.deletes] == [("/d", None), ("/e", 0), ("/f", 5)]
    assert [(r.start_inclusive, r.end_exclusive) for r in req.delete_ranges] == [("/a/", "/a/~")]


def test_other_requests_match_betterproto():
    read = pb.ReadRequest.parse(codec.encode_read_request(0, [codec.encode_get("/x", True, 0), codec.encode_get("/y", False, 4)]))
    assert read.shard == 0
    assert [(g.key, g.include_value, g.comparison_type) for g in read.gets] == [
        ("/x", True, pb.KeyComparisonType.EQUAL), ("/y", False, pb.KeyComparisonType.HIGHER)]
    lst = pb.ListRequest.parse(codec.encode_range_request(2, "/a", "/b"))
    assert (lst.shard, lst.start_inclusive, lst.end_exclusive) == (2, "/a", "/b")
    scan = pb.RangeScanRequest.parse(codec.encode_range_request(1, "", "~"))
    assert (scan.shard, scan.start_inclusive, scan.end_exclusive) == (1, "", "~")
    hb = pb.SessionHeartbeat.parse(codec.encode_shard_session(5, 1 << 40))
    assert (hb.shard, hb.session_id) == (5, 1 << 40)
    cs = pb.CreateSessionRequest.parse(codec.encode_create_session(1, 2000, "id"))
    assert (cs.shard, cs.session_timeout_ms, cs.client_identity) == (1, 2000, "id")
    nr = pb.NotificationsRequest.parse(codec.encode_notifications_request(4, None))
    assert (nr.shard, nr.start_offset_exclusive) == (4, None)
    nr = pb.NotificationsRequest.parse(codec.encode_notifications_request(4, 0))
    assert (nr.shard, nr.start_offset_exclusive) == (4, 0)


def test_response_decoding_matches_betterproto():
    v = pb.Version(version_id=42, modifications_count=3, created_timestamp=1 << 40, modified_timestamp=(1 << 64) - 1,
                   session_id=9, client_identity="c")
    resp = pb.WriteResponse(
        puts=[pb.PutResponse(version=v), pb.PutResponse(status=pb.Status.UNEXPECTED_VERSION_ID),
              pb.PutResponse(version=pb.Version(version_id=0), key="/s-00000000000000000001")],
        deletes=[pb.DeleteResponse(), pb.DeleteResponse(status=pb.Status.KEY_NOT_FOUND)],
        delete_ranges=[pb.DeleteRangeResponse()],
    )
    puts, deletes, ranges = codec.decode_write_response(bytes(resp))
    assert puts == [(0, 42, 9, None), (2, 0, None, None), (0, 0, None, "/s-00000000000000000001")]
    assert deletes == [0, 1] and ranges == [0]

    read = pb.ReadResponse(gets=[
        pb.GetResponse(version=v, value=b"val", key="/k", secondary_index_key="skipped"),
        pb.GetResponse(status=pb.Status.KEY_NOT_FOUND),
        pb.GetResponse(version=pb.Version(version_id=-5), value=b""),
    ])
    assert codec.decode_get_responses(bytes(read)) == [
        (0, 42, 9, b"val", "/k"), (1, 0, None, b"", None), (0, -5, None, b"", None)]
    assert codec.decode_list_response(bytes(pb.ListResponse(keys=["/a", "/b/ü"]))) == ["/a", "/b/ü"]
    assert codec.decode_create_session_response(bytes(pb.CreateSessionResponse(session_id=123))) == 123

    batch = pb.NotificationBatch(shard=2, offset=99, timestamp=5, notifications={
        "/a": pb.Notification(type=pb.NotificationType.KEY_CREATED, version_id=0),
        "/b": pb.Notification(type=pb.NotificationType.KEY_DELETED),
        "/c": pb.Notification(type=pb.NotificationType.KEY_RANGE_DELETED, key_range_last="/d"),
    })
    shard, offset, items = codec.decode_notification_batch(bytes(batch))
    assert (shard, offset) == (2, 99)
    assert sorted(items) == [("/a", 0, 0, None), ("/b", 2, None, None), ("/c", 3, None, "/d")]


def test_shard_hash_matches_the_servers_test_vectors():
    # common/hash/hash_test.go at v0.14.4
    assert [shard_hash(k) for k in ("foo", "bar", "baz")] == [125730186, 2687685474, 862947621]


def test_user_ranges_skip_oxias_own_keys():
    internal = ["__oxia/commit-offset", "__oxia/term", "__oxia/notifications/000000000000000a",
                "__oxia/session/0000000000000001", "__oxia/session/0000000000000001/%2Fa%2Fb"]
    user = ["/a", "/dray/x/y", "a", "zz", "__oxia", "__oxiaz", "__oxiaa/x", "__oxib/x", "__oxi/x", "mc-1/a",
            "mc-1/a/b", "~/~/~"]
    everything = ("", "~~/~~/~~/~~/~~")
    for start, end in [everything, ("/", "zz/"), ("__oxia/", "__oxia/~"), ("a/", "z/"), ("__oxia/x", "__oxib/"),
                       ("__oxia", "__oxia/z")]:
        ranges = own_keys.user_ranges(start, end)
        for k in internal:
            assert not any(compare_with_slash(s, k) <= 0 < compare_with_slash(e, k) for s, e in ranges), (k, ranges)
        for k in user:
            in_range = compare_with_slash(start, k) <= 0 < compare_with_slash(end, k)
            covered = any(compare_with_slash(s, k) <= 0 < compare_with_slash(e, k) for s, e in ranges)
            assert covered == in_range, (start, end, k, ranges)
    assert own_keys.user_ranges("/b", "/a") == [] and own_keys.user_ranges("/a", "/a") == []


# ---------------------------------------------------------------------------------------------------- shared server


@pytest.fixture
async def store(oxia_service):
    s = await OxiaMetadataStore.connect(oxia_service.address)
    yield s
    await s.close()


async def test_open_metadata_store_url_and_unknown_namespace(oxia_service):
    s = await open_metadata_store(f"oxia://{oxia_service.address}/default", session_timeout_ms=5000)
    assert isinstance(s, OxiaMetadataStore) and s.namespace == "default" and s.session_timeout_ms == 5000
    await s.close()
    started = time.monotonic()
    with pytest.raises(MetadataError, match="namespace"):
        await open_metadata_store(f"oxia://{oxia_service.address}/no-such-namespace")
    assert time.monotonic() - started < 10
    with pytest.raises(MetadataError):
        await s.get("/x")  # closed


async def test_concurrent_operations_are_coalesced(store: OxiaMetadataStore, pfx: str):
    pk = pfx + "p"
    prefix = pfx + "p/idx"
    await store.put_sequential(prefix, b"first", [1, 1], partition_key=pk)
    shard = store.shard_of(prefix, pk)
    writer = store.writes.writer(shard)
    requests, ops = writer.requests_sent, writer.ops_sent
    n = 600
    entries = await asyncio.gather(*(store.put_sequential(prefix, b"v%d" % i, [1, 10], partition_key=pk)
                                     for i in range(n)))
    assert writer.ops_sent - ops == n
    assert writer.requests_sent - requests <= n // 10, "concurrent puts should share write requests"
    sums = sorted(parse_sequence_key(prefix, e.key) for e in entries)
    assert sums == [[2 + i, 11 + 10 * i] for i in range(n)]  # dense, no duplicates

    reader = store.reads.reader(shard)
    requests, ops = reader.requests_sent, reader.ops_sent
    got = await asyncio.gather(*(store.get(e.key, partition_key=pk) for e in entries))
    assert got == entries
    assert reader.ops_sent - ops == n and reader.requests_sent - requests <= n // 10

    # Mixed puts, conditional puts and deletes in the same requests keep their own outcomes.
    base = await store.put(pfx + "cas", b"0")
    results = await asyncio.gather(
        *(store.put(pfx + "cas", b"x", expected_version=base.version) for _ in range(20)),
        *(store.delete(pfx + f"missing-{i}") for i in range(20)),
        return_exceptions=True,
    )
    wins = [r for r in results[:20] if not isinstance(r, Exception)]
    assert len(wins) == 1 and all(isinstance(r, VersionMismatchError) for r in results[:20] if r not in wins)
    assert results[20:] == [False] * 20


async def test_put_sequential_requests_the_server_would_fail_whole_are_refused(store: OxiaMetadataStore, pfx: str):
    pk = pfx + "p"
    prefix = pfx + "p/idx"
    await store.put_sequential(prefix, b"", [1, 1], partition_key=pk)
    others = [store.put(pfx + f"k{i}", b"v") for i in range(10)]
    fewer = store.put_sequential(prefix, b"", [1], partition_key=pk)
    res = await asyncio.gather(fewer, *others, return_exceptions=True)
    assert isinstance(res[0], MetadataError) and "deltas" in str(res[0])
    assert all(not isinstance(r, Exception) for r in res[1:]), res

    # Another store that has not seen the prefix finds the newest key first.
    other = await OxiaMetadataStore.connect(store.address)
    try:
        with pytest.raises(MetadataError, match="deltas"):
            await other.put_sequential(prefix, b"", [5], partition_key=pk)
        e = await other.put_sequential(prefix, b"", [5, 5, 5], partition_key=pk)  # more deltas are fine
        assert e.key == sequence_key(prefix, [6, 6, 5])
    finally:
        await other.close()
    with pytest.raises(ValueError):
        await store.put_sequential(prefix, b"", [0, 1], partition_key=pk)
    with pytest.raises(ValueError):
        await store.put_sequential(prefix, b"", [], partition_key=pk)


async def test_session_expires_when_the_keepalive_stops(oxia_service, pfx: str):
    observer = await OxiaMetadataStore.connect(oxia_service.address)
    s = await OxiaMetadataStore.connect(oxia_service.address, session_timeout_ms=2000)
    try:
        e = await s.put(pfx + "eph", b"1", ephemeral=True)
        assert e.ephemeral and (await observer.get(pfx + "eph")).ephemeral
        (session,) = s.shard_sessions.live
        await asyncio.sleep(1.5)  # the keepalive (every 0.67 s) holds it past the timeout
        assert await observer.get(pfx + "eph") is not None
        session.task.cancel()
        stopped = time.monotonic()

        async def gone():
            return await observer.get(pfx + "eph") is None

        await wait_until(gone, 10, "the ephemeral key of the expired session to go")
        assert time.monotonic() - stopped > 1.0
        with pytest.raises(SessionExpiredError):  # the put that finds the session gone
            await s.put(pfx + "eph2", b"2", ephemeral=True, session=1)
        assert await observer.get(pfx + "eph2") is None
        # That ended generation 1 and began generation 2, whose session is created by the next ephemeral put.
        assert s.session.alive and s.session.generation == 2
        with pytest.raises(SessionExpiredError):
            await s.put(pfx + "eph3", b"3", ephemeral=True, session=1)
        assert (await s.put(pfx + "eph3", b"3", ephemeral=True, session=2)).ephemeral
        (renewed,) = s.shard_sessions.live
        assert renewed.id != session.id and (await observer.get(pfx + "eph3")).ephemeral
        assert (await s.put(pfx + "durable", b"ok")).value == b"ok"
    finally:
        await s.close()
        await observer.close()


# ---------------------------------------------------------------------------------------------------- private servers


async def test_multi_shard_routing_matches_the_go_client(private_oxia, pfx: str):
    srv = private_oxia(shards=3)
    s = await OxiaMetadataStore.connect(srv.address)
    try:
        assert len(s.shards) == 3
        rng = random.Random(1)
        keys: list[str] = []
        while len(keys) < 24 or len({s.shard_of(k) for k in keys}) < 3:  # cover every shard
            keys.append(pfx + "".join(rng.choices(string.ascii_lowercase, k=8)))
        rng.shuffle(keys)
        # Written by the Go client, found by ours (EQUAL gets are routed to one shard).
        half = len(keys) // 2
        for k in keys[:half]:
            srv.cli("put", k, "go-" + k)
        srv.cli("put", pfx + "pk/one", "with-pk", "-p", "routing-key")
        for k in keys[:half]:
            assert (await s.get(k)).value == ("go-" + k).encode()
        assert (await s.get(pfx + "pk/one", partition_key="routing-key")).value == b"with-pk"
        # Written by ours, found by the Go client.
        for k in keys[half:]:
            await s.put(k, b"py-" + k.encode())
        await s.put(pfx + "pk/two", b"py-pk", partition_key="routing-key")
        for k in keys[half:]:
            assert srv.cli("get", k).strip() == "py-" + k
        assert srv.cli("get", pfx + "pk/two", "-p", "routing-key").strip() == "py-pk"
        # Each key lives on exactly the shard its hash picks, and the keys spread over every shard.
        used = set()
        for k in keys:
            home = s.shard_of(k)
            used.add(home)
            for shard in s.shards:
                assert (await raw_get(s, shard, k) is not None) == (shard == home), (k, shard, home)
        assert used == set(s.shards)
    finally:
        await s.close()


async def test_multi_shard_lists_comparisons_watches_and_sessions(private_oxia, pfx: str):
    srv = private_oxia(shards=3)
    s = await OxiaMetadataStore.connect(srv.address)
    observer = await OxiaMetadataStore.connect(srv.address)
    try:
        names = [f"{c}{i}" for c in "abcdef" for i in range(4)] + ["m/x", "m/y/z"]
        while len({s.shard_of(pfx + n) for n in names}) < 3:  # cover every shard
            names.append(f"g{len(names)}")
        keys = [pfx + n for n in names]
        watch = await observer.watch(pfx)
        written = {}
        for k in keys:
            written[k] = await s.put(k, k.encode())
        ordered = sorted(keys, key=hierarchical_sort_key)
        end = pfx[:-1] + "0/"
        assert await s.list(pfx, end) == ordered
        assert [e.key for e in await s.range_scan(pfx, end)] == ordered
        assert [e.value for e in await s.range_scan(pfx, end)] == [k.encode() for k in ordered]

        # Comparisons without a partition key search every shard.
        def expect(k: str, cmp: Comparison):
            hk = hierarchical_sort_key(k)
            pick = {
                Comparison.FLOOR: [x for x in ordered if hierarchical_sort_key(x) <= hk][-1:],
                Comparison.LOWER: [x for x in ordered if hierarchical_sort_key(x) < hk][-1:],
                Comparison.CEILING: [x for x in ordered if hierarchical_sort_key(x) >= hk][:1],
                Comparison.HIGHER: [x for x in ordered if hierarchical_sort_key(x) > hk][:1],
            }[cmp]
            return pick[0] if pick else None

        for probe in ["a0", "a1", "b", "c3", "d", "f3", "f4", "m/x", "m/y", "m/y/z", "a"]:
            for cmp in (Comparison.FLOOR, Comparison.LOWER, Comparison.CEILING, Comparison.HIGHER):
                got = await s.get(pfx + probe, cmp)
                want = expect(pfx + probe, cmp)
                got_key = got.key if got is not None and got.key.startswith(pfx) else None
                assert got_key == want, (probe, cmp, got, want)
                if got_key is not None:
                    assert got == written[got_key]

        # Every change on every shard reaches the watch (in order per shard).
        notes = await next_notes(watch, len(keys))
        assert sorted(n.key for n in notes) == sorted(keys)
        assert all(n.type == NotificationType.CREATED and n.version == written[n.key].version for n in notes)

        # Ephemeral keys on several shards: one session per shard, all closed with the store.
        eph = await OxiaMetadataStore.connect(srv.address)
        eph_keys = [pfx + f"eph{i}" for i in range(12)]
        for k in eph_keys:
            assert (await eph.put(k, b"e", ephemeral=True)).ephemeral
        assert len(eph.shard_sessions.live) == len({eph.shard_of(k) for k in eph_keys}) > 1
        await eph.close()
        for k in eph_keys:
            assert await s.get(k) is None

        await s.delete_range(pfx, end)
        assert await s.list(pfx, end) == []
        deleted = [n for n in await next_notes(watch, 2 * len(eph_keys)) if n.type == NotificationType.DELETED]
        assert sorted(n.key for n in deleted) == sorted(eph_keys)
        ranges = await next_notes(watch, 3)  # one range deletion per shard
        assert {(n.type, n.key, n.key_range_end) for n in ranges} == {(NotificationType.RANGE_DELETED, pfx, end)}

        # put_sequential on partitions of different shards.
        pks = [f"part-{i}" for i in range(6)]
        assert len({s.shard_of("", pk) for pk in pks}) > 1
        for pk in pks:
            for i in range(3):
                e = await s.put_sequential(pfx + pk + "/idx", b"", [2, 1], partition_key=pk)
                assert parse_sequence_key(pfx + pk + "/idx", e.key) == [2 * (i + 1), i + 1]
        await watch.aclose()
    finally:
        await s.close()
        await observer.close()


async def test_oxias_own_keys_stay_hidden(private_oxia):
    srv = private_oxia(shards=1)
    s = await OxiaMetadataStore.connect(srv.address)
    everything = ("", "~~~/~~~/~~~/~~~/~~~")
    try:
        for i in range(5):
            await s.put(f"/k{i}", b"v")
        await s.put("/eph", b"e", ephemeral=True)  # a session: keys under __oxia/session/
        assert await s.list(*everything) == ["/eph"] + [f"/k{i}" for i in range(5)]
        assert [e.key for e in await s.range_scan(*everything)] == ["/eph"] + [f"/k{i}" for i in range(5)]
        # Searches that would run into Oxia's keys skip them.
        assert (await s.get("zzz/zzz", Comparison.LOWER)).key == "/k4"
        assert (await s.get("zzz/zzz", Comparison.FLOOR)).key == "/k4"
        assert await s.get("/k4", Comparison.HIGHER) is None
        assert await s.get("__oxia/term", Comparison.CEILING) is None
        assert await s.get("__oxia/term") is None
        await s.put("zz/after", b"a")
        assert (await s.get("/k9", Comparison.HIGHER)).key == "zz/after"
        assert (await s.get("zzz/zzz", Comparison.LOWER)).key == "zz/after"
        assert await s.delete("zz/after")
        with pytest.raises(MetadataError):
            await s.put("__oxia/term", b"x")

        # Without sessions, the last of Oxia's keys are notification batches, which are not records: a get that
        # lands on one fails on the server, and with it its whole Read call. The other gets of that call are
        # retried alone and succeed; the public get never lands there.
        await s.shard_sessions.close()
        shard = s.shards[0]
        poison = s.reads.get(shard, "zzz/zzz", Comparison.LOWER)
        good = [s.get(f"/k{i}") for i in range(5)]
        res = await asyncio.gather(poison, *good, return_exceptions=True)
        assert isinstance(res[0], MetadataError) and "eserialize" in str(res[0]), res[0]
        assert [e.key for e in res[1:]] == [f"/k{i}" for i in range(5)]
        assert (await s.get("zzz/zzz", Comparison.LOWER)).key == "/k4"

        # delete_range over everything leaves Oxia's keys alone: the server still works after a restart.
        await s.delete_range(*everything)
        assert await s.list(*everything) == []
        e = await s.put("/after", b"x", ephemeral=True)
        srv.stop(signal.SIGTERM)
        srv.start()
        await wait_until(lambda: _get_ok(s, "/after"), 30, "the restarted server to answer")
        assert (await s.get("/after")) == e
    finally:
        await s.close()


async def _get_ok(s: OxiaMetadataStore, key: str) -> bool:
    try:
        return await s.get(key) is not None
    except MetadataError:
        return False


async def test_reconnects_after_the_server_is_killed_and_restarted(private_oxia, pfx: str):
    srv = private_oxia(shards=2)
    s = await OxiaMetadataStore.connect(srv.address, session_timeout_ms=15_000, op_timeout=60)
    observer = await OxiaMetadataStore.connect(srv.address, op_timeout=60)
    try:
        watch = await observer.watch(pfx)
        pk = "p"
        before = await s.put(pfx + "before", b"1")
        eph = await s.put(pfx + "eph", b"e", ephemeral=True)
        seq1 = await s.put_sequential(pfx + "idx", b"", [1, 5], partition_key=pk)
        assert [n.key for n in await next_notes(watch, 3)] == [pfx + "before", pfx + "eph", seq1.key]

        srv.stop(signal.SIGKILL)

        async def noticed():  # the streams have seen the connection go (a write sent before that is ambiguous)
            return not any(w.connected for w in s.writes.writers)

        await wait_until(noticed, 10, "the write streams to notice the lost connection")
        # Issued while the server is down: not sent yet, so even a put_sequential is safely retried.
        during = asyncio.create_task(s.put(pfx + "during", b"2"))
        during_seq = asyncio.create_task(s.put_sequential(pfx + "idx", b"", [1, 5], partition_key=pk))
        during_get = asyncio.create_task(observer.get(pfx + "before"))
        await asyncio.sleep(1.5)
        assert not during.done() and not during_seq.done() and not during_get.done()
        srv.start()

        assert (await asyncio.wait_for(during, 60)).value == b"2"
        assert parse_sequence_key(pfx + "idx", (await during_seq).key) == [2, 10]
        assert await during_get == before
        assert (await s.get(pfx + "before")) == before
        # The session survived the restart (well within its timeout): its key is still there.
        await asyncio.sleep(2)
        assert (await observer.get(pfx + "eph")) == eph
        after = await s.put(pfx + "after", b"3")
        # The watch resumed where it stopped: nothing lost, nothing repeated.
        notes = await next_notes(watch, 3)
        assert sorted(n.key for n in notes) == sorted([pfx + "during", (await during_seq).key, pfx + "after"])
        assert [n for n in notes if n.key == pfx + "after"][0].version == after.version
        # New watches work too, and ephemeral keys still go with the session.
        w2 = await observer.watch(pfx)
        await s.close()
        (gone,) = await next_notes(w2, 1)
        assert (gone.key, gone.type) == (pfx + "eph", NotificationType.DELETED)
        await w2.aclose()
        await watch.aclose()
    finally:
        await s.close()
        await observer.close()


class CuttableProxy:
    """A TCP proxy that can hold the server's answers and then cut every connection: a request that reached the
    server but whose answer never came back."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.release = asyncio.Event()
        self.release.set()
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(self.host, self.target_port)
        self.writers += [cw, sw]
        for src, dst, held in ((cr, sw, False), (sr, cw, True)):
            t = asyncio.get_running_loop().create_task(self._pump(src, dst, held))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
        try:
            while data := await src.read(65536):
                if held:
                    await self.release.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            dst.close()

    def hold(self) -> None:
        self.release.clear()

    def cut(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        for t in list(self.tasks):
            t.cancel()
        self.release.set()

    async def close(self) -> None:
        self.cut()
        self.server.close()
        await self.server.wait_closed()


async def test_writes_cut_off_after_reaching_the_server(private_oxia, pfx: str):
    srv = private_oxia(shards=1)
    proxy = CuttableProxy(srv.address)
    address = await proxy.start()
    s = await OxiaMetadataStore.connect(address, op_timeout=60, rpc_timeout=30)
    direct = await OxiaMetadataStore.connect(srv.address)
    try:
        await s.put(pfx + "warm", b"")
        cas = await s.put(pfx + "cas", b"0")
        pk = "p"
        await s.put_sequential(pfx + "idx", b"s", [1], partition_key=pk)
        proxy.hold()
        seq = asyncio.create_task(s.put_sequential(pfx + "idx", b"s", [1], partition_key=pk))
        plain = asyncio.create_task(s.put(pfx + "plain", b"p"))
        cond = asyncio.create_task(s.put(pfx + "cas", b"1", expected_version=cas.version))
        read = asyncio.create_task(s.get(pfx + "warm"))

        async def applied():
            return (await direct.get(pfx + "plain") is not None
                    and (await direct.get(pfx + "cas")).value == b"1"
                    and len(await direct.list(pfx + "idx-", pfx + "idx-~")) == 2)

        await wait_until(applied, 20, "the held writes to be applied")
        early = [t for t in (seq, plain, cond, read) if t.done()]
        assert not early, [t.exception() or t.result() for t in early]
        proxy.cut()
        # Applied, but the answers were lost: a put_sequential or a conditional put must not be sent again
        # (a second append; a false version mismatch), so they fail; the others are retried and succeed.
        with pytest.raises(MetadataError, match="may or may not"):
            await seq
        with pytest.raises(MetadataError, match="may or may not"):
            await cond
        assert (await plain).value == b"p"
        assert (await read).key == pfx + "warm"
        assert await direct.list(pfx + "idx-", pfx + "idx-~") == [sequence_key(pfx + "idx", [i]) for i in (1, 2)]
        # And the store carries on.
        e = await s.put_sequential(pfx + "idx", b"s", [1], partition_key=pk)
        assert e.key == sequence_key(pfx + "idx", [3])
    finally:
        await s.close()
        await direct.close()
        await proxy.close()
