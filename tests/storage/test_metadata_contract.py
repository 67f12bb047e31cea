"""The metadata store contract: one suite, run unchanged against every backend (SQLite, Oxia).

Every test works under its own key prefix (the Oxia server is shared by the whole session) and never assumes that
the store holds nothing else: FLOOR/CEILING/LOWER/HIGHER may return another test's key, so results outside the
prefix count as "not found". Waiting is done with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from dray_broker.metadata import (
    MUST_NOT_EXIST,
    Comparison,
    Entry,
    KeyNotFoundError,
    MetadataError,
    MetadataStore,
    Notification,
    NotificationType,
    SequentialPut,
    SessionExpiredError,
    VersionMismatchError,
    open_metadata_store,
)
from dray_broker.metadata import hierarchical_sort_key, parse_sequence_key, sequence_key

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("metadata_child.py")

BACKENDS = ["sqlite", pytest.param("oxia", marks=pytest.mark.oxia)]


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(params=BACKENDS)
def metadata_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/meta.db"
    oxia_service = request.getfixturevalue("oxia_service")
    return f"oxia://{oxia_service.address}"


class StoreFactory:
    """Opens more stores on the same backend (another broker, in effect) and closes them all at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._open: list[MetadataStore] = []

    async def open(self, session_timeout_ms: int = 10_000) -> MetadataStore:
        store = await open_metadata_store(self.url, session_timeout_ms=session_timeout_ms)
        self._open.append(store)
        return store

    async def close(self, store: MetadataStore) -> None:
        if store in self._open:
            self._open.remove(store)
            await store.close()

    async def close_all(self) -> None:
        while self._open:
            await self._open.pop().close()


@pytest.fixture
async def store_factory(metadata_url):
    factory = StoreFactory(metadata_url)
    yield factory
    await factory.close_all()


@pytest.fixture
async def metadata_store(store_factory) -> MetadataStore:
    return await store_factory.open()


@pytest.fixture
def pfx() -> str:
    """A fresh directory-like key prefix for one test: 'mc-<hex>/'."""
    return f"mc-{uuid.uuid4().hex[:16]}/"


def all_under(pfx: str) -> tuple[str, str]:
    """[start, end) holding every key under the directory pfx ('x/'), at any depth, in hierarchical order."""
    assert pfx.endswith("/")
    return pfx, pfx[:-1] + "0/"


def in_prefix(entry: Entry | None, pfx: str) -> Entry | None:
    return entry if entry is not None and entry.key.startswith(pfx) else None


async def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def next_notifications(watch, n: int, timeout: float = 10.0) -> list[Notification]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"got {len(out)} of {n} notifications: {out}")
        try:
            out.append(await asyncio.wait_for(watch.__anext__(), remaining))
        except asyncio.TimeoutError:
            raise AssertionError(f"got {len(out)} of {n} notifications: {out}") from None
    return out


# ---------------------------------------------------------------------------------------------------- gets


async def test_get_comparisons(metadata_store: MetadataStore, pfx: str):
    s = metadata_store
    for k in ("b", "d", "f", "d/x"):
        await s.put(pfx + k, k.encode())

    e = await s.get(pfx + "d")
    assert e is not None and e.key == pfx + "d" and e.value == b"d" and not e.ephemeral
    assert await s.get(pfx + "c") is None
    assert await s.get(pfx + "c", Comparison.EQUAL) is None

    async def key(k: str, cmp: Comparison) -> str | None:
        e = in_prefix(await s.get(pfx + k, cmp), pfx)
        return None if e is None else e.key[len(pfx) :]

    # FLOOR: greatest <= key
    assert await key("d", Comparison.FLOOR) == "d"
    assert await key("e", Comparison.FLOOR) == "d"
    assert await key("a", Comparison.FLOOR) is None
    # CEILING: smallest >= key
    assert await key("d", Comparison.CEILING) == "d"
    assert await key("c", Comparison.CEILING) == "d"
    assert await key("a", Comparison.CEILING) == "b"
    # LOWER: greatest < key
    assert await key("d", Comparison.LOWER) == "b"
    assert await key("b", Comparison.LOWER) is None
    # HIGHER: smallest > key
    assert await key("b", Comparison.HIGHER) == "d"
    assert await key("e", Comparison.HIGHER) == "f"
    # Hierarchical order: 'd/x' has one more '/' than 'f', so it sorts after every key of the upper level.
    assert await key("d", Comparison.HIGHER) == "f"
    assert await key("f", Comparison.HIGHER) == "d/x"
    assert await key("g", Comparison.CEILING) == "d/x"
    assert await key("d/x", Comparison.LOWER) == "f"
    assert await key("d/a", Comparison.FLOOR) == "f"
    assert await key("d/x", Comparison.HIGHER) is None
    assert await key("d/y", Comparison.FLOOR) == "d/x"

    # The found entry carries value and version like an EQUAL get.
    eq = await s.get(pfx + "f")
    fl = await s.get(pfx + "e", Comparison.CEILING)
    assert fl == eq


async def test_hierarchical_order_of_list_and_range_scan(metadata_store: MetadataStore, pfx: str):
    s = metadata_store
    expected = ["a", "aa", "b", "a/a", "a/b", "a/b/c", "b/a", "c/d"]
    assert sorted(expected, key=lambda k: hierarchical_sort_key(pfx + k)) == expected
    for k in ("c/d", "b", "a/b/c", "aa", "a/a", "b/a", "a", "a/b"):
        await s.put(pfx + k, f"v-{k}".encode())

    start, end = all_under(pfx)
    assert await s.list(start, end) == [pfx + k for k in expected]
    scanned = await s.range_scan(start, end)
    assert [e.key for e in scanned] == [pfx + k for k in expected]
    assert [e.value for e in scanned] == [f"v-{k}".encode() for k in expected]
    for e in scanned:
        assert e == await s.get(e.key)

    # A range at one level does not hold deeper keys...
    assert await s.list(pfx, pfx + "~") == [pfx + k for k in ("a", "aa", "b")]
    assert await s.list(pfx + "aa", pfx + "b") == [pfx + "aa"]
    # ...and a range ending at a deeper key holds every key of the upper level after the start.
    assert await s.list(pfx + "a", pfx + "a/b") == [pfx + k for k in ("a", "aa", "b", "a/a")]
    assert await s.list(pfx + "a/", pfx + "a/~") == [pfx + "a/a", pfx + "a/b"]
    assert await s.list(pfx + "x", pfx + "y") == []
    assert await s.range_scan(pfx + "x", pfx + "y") == []


# ---------------------------------------------------------------------------------------------------- puts


async def test_put_conditions_and_versions(metadata_store: MetadataStore, pfx: str):
    s = metadata_store
    k = pfx + "k"

    e1 = await s.put(k, b"one", expected_version=MUST_NOT_EXIST)
    assert e1.key == k and e1.value == b"one" and not e1.ephemeral
    assert await s.get(k) == e1
    with pytest.raises(VersionMismatchError):
        await s.put(k, b"again", expected_version=MUST_NOT_EXIST)

    e2 = await s.put(k, b"two", expected_version=e1.version)
    assert e2.version != e1.version and e2.version > e1.version
    assert (await s.get(k)).value == b"two"
    with pytest.raises(VersionMismatchError):
        await s.put(k, b"stale", expected_version=e1.version)
    assert await s.get(k) == e2

    # Every write changes the version, even with the same value; an unconditional put always applies.
    e3 = await s.put(k, b"two")
    e4 = await s.put(k, b"two")
    assert len({e1.version, e2.version, e3.version, e4.version}) == 4
    assert e4.version > e3.version > e2.version
    assert (await s.get(k)).version == e4.version

    # Versions never repeat across keys either.
    other = await s.put(pfx + "other", b"x")
    assert other.version not in {e1.version, e2.version, e3.version, e4.version}

    # Compare-and-set on a missing key: KeyNotFoundError (not a VersionMismatchError).
    with pytest.raises(KeyNotFoundError):
        await s.put(pfx + "missing", b"x", expected_version=e4.version)
    assert await s.get(pfx + "missing") is None

    # Values are bytes, stored exactly (empty and binary ones too).
    await s.put(pfx + "empty", b"")
    assert (await s.get(pfx + "empty")).value == b""
    blob = bytes(range(256)) * 40
    await s.put(pfx + "blob", blob)
    assert (await s.get(pfx + "blob")).value == blob


async def test_cas_race_exactly_one_winner(store_factory: StoreFactory, pfx: str):
    a = await store_factory.open()
    b = await store_factory.open()
    k = pfx + "leader"
    cur = await a.put(k, b"0")
    for rnd in range(40):
        seen_a, seen_b = await asyncio.gather(a.get(k), b.get(k))
        assert seen_a.version == seen_b.version == cur.version
        res = await asyncio.gather(
            a.put(k, f"a{rnd}".encode(), expected_version=seen_a.version),
            b.put(k, f"b{rnd}".encode(), expected_version=seen_b.version),
            return_exceptions=True,
        )
        wins = [r for r in res if isinstance(r, Entry)]
        losses = [r for r in res if isinstance(r, VersionMismatchError)]
        assert len(wins) == 1 and len(losses) == 1, res
        cur = wins[0]
        assert await a.get(k) == cur


async def test_cas_increments_lose_no_update(store_factory: StoreFactory, pfx: str):
    stores = [await store_factory.open(), await store_factory.open()]
    k = pfx + "counter"
    await stores[0].put(k, b"0")
    per_task, tasks_per_store = 15, 4
    conflicts = 0

    async def incrementer(s: MetadataStore):
        nonlocal conflicts
        for _ in range(per_task):
            while True:
                e = await s.get(k)
                try:
                    await s.put(k, str(int(e.value) + 1).encode(), expected_version=e.version)
                    break
                except VersionMismatchError:
                    conflicts += 1

    await asyncio.gather(*(incrementer(s) for s in stores for _ in range(tasks_per_store)))
    assert int((await stores[1].get(k)).value) == per_task * tasks_per_store * len(stores)


# ---------------------------------------------------------------------------------------------------- sequences


def check_dense(prefix: str, results: list[tuple[Entry, list[int]]], keys: list[str]) -> None:
    """The keys written by put_sequential form one gapless chain of running sums, in key order."""
    by_sums = sorted(((parse_sequence_key(prefix, e.key), d) for e, d in results), key=lambda t: t[0])
    prev = [0, 0]
    for sums, deltas in by_sums:
        assert sums is not None
        assert sums == [prev[0] + deltas[0], prev[1] + deltas[1]], (prev, deltas, sums)
        prev = sums
    written = sorted(e.key for e, _ in results)
    assert len(set(written)) == len(written)
    assert keys == written  # listing order (hierarchical) == numeric order of the sums


async def test_put_sequential_concurrent_tasks(metadata_store: MetadataStore, pfx: str):
    s = metadata_store
    prefix = pfx + "p0/idx"
    results: list[tuple[Entry, list[int]]] = []

    async def appender(t: int):
        for i in range(20):
            deltas = [1 + (t + i) % 5, 100 * t + i + 1]
            e = await s.put_sequential(prefix, f"{t}-{i}".encode(), deltas, partition_key=pfx + "p0")
            assert e.key == sequence_key(prefix, parse_sequence_key(prefix, e.key))
            assert e.value == f"{t}-{i}".encode()
            results.append((e, deltas))

    await asyncio.gather(*(appender(t) for t in range(10)))
    keys = await s.list(prefix + "-", prefix + "-~", partition_key=pfx + "p0")
    check_dense(prefix, results, keys)
    last = parse_sequence_key(prefix, keys[-1])
    assert last == [sum(d[0] for _, d in results), sum(d[1] for _, d in results)]
    # Values and versions read back as written.
    for e, _ in results[:5]:
        assert await s.get(e.key, partition_key=pfx + "p0") == e


async def test_put_sequential_two_stores(store_factory: StoreFactory, pfx: str):
    stores = [await store_factory.open(), await store_factory.open()]
    prefix = pfx + "p1/idx"
    pk = pfx + "p1"
    results: list[tuple[Entry, list[int]]] = []

    async def appender(s: MetadataStore, t: int):
        for i in range(15):
            deltas = [1 + (t * 7 + i) % 4, 1000 + t]
            results.append((await s.put_sequential(prefix, b"v", deltas, partition_key=pk), deltas))

    await asyncio.gather(*(appender(s, t) for t in range(3) for s in stores))
    keys = await stores[0].list(prefix + "-", prefix + "-~", partition_key=pk)
    check_dense(prefix, results, keys)
    assert len(keys) == 2 * 3 * 15


async def test_put_sequential_rewinds_after_deleting_newest(metadata_store: MetadataStore, pfx: str):
    s = metadata_store
    prefix, pk = pfx + "p2/idx", pfx + "p2"
    e1 = await s.put_sequential(prefix, b"1", [5, 50], partition_key=pk)
    assert e1.key == sequence_key(prefix, [5, 50])
    e2 = await s.put_sequential(prefix, b"2", [3, 30], partition_key=pk)
    assert e2.key == sequence_key(prefix, [8, 80])
    e3 = await s.put_sequential(prefix, b"3", [2, 20], partition_key=pk)
    assert e3.key == sequence_key(prefix, [10, 100])

    assert await s.delete(e3.key, partition_key=pk)
    e4 = await s.put_sequential(prefix, b"4", [1, 1], partition_key=pk)
    assert e4.key == sequence_key(prefix, [9, 81])

    # Deleting an older key does not rewind: the sums come from the newest key.
    assert await s.delete(e1.key, partition_key=pk)
    e5 = await s.put_sequential(prefix, b"5", [1, 1], partition_key=pk)
    assert e5.key == sequence_key(prefix, [10, 82])

    # With no key left, the sums start again from zero.
    await s.delete_range(prefix + "-", prefix + "-~", partition_key=pk)
    e6 = await s.put_sequential(prefix, b"6", [4, 40], partition_key=pk)
    assert e6.key == sequence_key(prefix, [4, 40])

    # Another sequence next to it is independent.
    o = await s.put_sequential(pfx + "p2/other", b"o", [7, 70], partition_key=pk)
    assert o.key == sequence_key(pfx + "p2/other", [7, 70])
    e7 = await s.put_sequential(prefix, b"7", [1, 1], partition_key=pk)
    assert e7.key == sequence_key(prefix, [5, 41])


async def test_put_sequential_refuses_when_the_newest_key_is_no_sequence_key(metadata_store: MetadataStore, pfx: str):
    """One rule on both backends, the one of Oxia's server: the sums come from the greatest key below
    'prefix-<max uint64>', and a sum is exactly 20 digits. If that key is under 'prefix-' but is not a sequence
    key, put_sequential is refused (Oxia's server would fail the whole write request with it)."""
    s = metadata_store
    pk = pfx + "p5"
    for name, stray, below in [("empty", "-", []), ("short", "-05", [1]), ("extra", "-00000000000000000001-x", [1])]:
        prefix = pfx + "p5/" + name
        if below:  # a sequence key below the stray one
            await s.put(sequence_key(prefix, below), b"", partition_key=pk)
        await s.put(prefix + stray, b"", partition_key=pk)
        with pytest.raises(MetadataError, match="not a sequence key"):
            await s.put_sequential(prefix, b"", [1], partition_key=pk)
        (out,) = await s.put_sequential_batch([SequentialPut(prefix, b"", [1], pk)])
        assert isinstance(out, MetadataError) and "not a sequence key" in str(out)
        assert await s.delete(prefix + stray, partition_key=pk)
        e = await s.put_sequential(prefix, b"", [1], partition_key=pk)
        assert e.key == sequence_key(prefix, [sum(below) + 1])
    # A key above the bound, or not under 'prefix-', is not the newest key of the sequence.
    prefix = pfx + "p5/other"
    await s.put(prefix + "-5", b"", partition_key=pk)
    await s.put(prefix, b"", partition_key=pk)
    assert (await s.put_sequential(prefix, b"", [3], partition_key=pk)).key == sequence_key(prefix, [3])
    with pytest.raises(ValueError):
        await s.put_sequential(prefix, b"", [1], partition_key=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await s.put_sequential(prefix, b"", [1, 2**64], partition_key=pk)


async def test_put_sequential_batch_each_put_on_its_own(store_factory: StoreFactory, pfx: str):
    """A batch appends to several sequences at once, concurrently with single appends from another store; each
    put of a batch commits or fails by itself."""
    stores = [await store_factory.open(), await store_factory.open()]
    pk = pfx + "p3"
    prefixes = [pfx + f"p3/s{i}" for i in range(4)]
    results: dict[str, list[tuple[Entry, list[int]]]] = {prefix: [] for prefix in prefixes}

    async def batches():
        for i in range(10):
            deltas = [[1 + (i + j) % 3, 10 + j] for j in range(len(prefixes))]
            out = await stores[0].put_sequential_batch(
                [SequentialPut(prefix, b"b%d" % i, d, pk) for prefix, d in zip(prefixes, deltas)])
            assert len(out) == len(prefixes)
            for prefix, d, e in zip(prefixes, deltas, out):
                assert isinstance(e, Entry) and e.value == b"b%d" % i
                results[prefix].append((e, d))

    async def singles():
        for i in range(10):
            for prefix in prefixes[:2]:
                results[prefix].append((await stores[1].put_sequential(prefix, b"s", [2, 1], partition_key=pk), [2, 1]))

    await asyncio.gather(batches(), singles())
    for prefix in prefixes:
        keys = await stores[0].list(prefix + "-", prefix + "-~", partition_key=pk)
        check_dense(prefix, results[prefix], keys)

    # A put the store refuses (fewer sums than the sequence has) fails alone; the others of its batch commit.
    three = pfx + "p3/three"
    await stores[0].put_sequential(three, b"", [1, 1, 1], partition_key=pk)
    before = parse_sequence_key(prefixes[0], (await stores[0].list(prefixes[0] + "-", prefixes[0] + "-~",
                                                                   partition_key=pk))[-1])
    out = await stores[0].put_sequential_batch([SequentialPut(three, b"x", [1], pk),
                                                SequentialPut(prefixes[0], b"y", [1, 1], pk)])
    assert isinstance(out[0], Exception)
    assert out[1].key == sequence_key(prefixes[0], [before[0] + 1, before[1] + 1])
    assert await stores[0].list(three + "-", three + "-~", partition_key=pk) == [sequence_key(three, [1, 1, 1])]
    assert await stores[0].put_sequential_batch([]) == []

    # Puts under one prefix apply in the order given, also on a store that has not seen the prefix yet.
    fresh = await store_factory.open()
    a, b = prefixes[1], pfx + "p3/new"
    top = parse_sequence_key(a, (await fresh.list(a + "-", a + "-~", partition_key=pk))[-1])
    out = await fresh.put_sequential_batch([SequentialPut(a, b"1", [1, 1], pk), SequentialPut(b, b"2", [2, 2], pk),
                                            SequentialPut(a, b"3", [5, 5], pk), SequentialPut(b, b"4", [1, 1], pk)])
    assert [e.key for e in out] == [sequence_key(a, [top[0] + 1, top[1] + 1]), sequence_key(b, [2, 2]),
                                    sequence_key(a, [top[0] + 6, top[1] + 6]), sequence_key(b, [3, 3])]
    assert [e.value for e in out] == [b"1", b"2", b"3", b"4"]


# ---------------------------------------------------------------------------------------------------- deletes


async def test_delete_and_conditional_delete(metadata_store: MetadataStore, pfx: str):
    s = metadata_store
    e = await s.put(pfx + "a", b"1")
    assert await s.delete(pfx + "a") is True
    assert await s.get(pfx + "a") is None
    assert await s.delete(pfx + "a") is False
    assert await s.delete(pfx + "never") is False

    e = await s.put(pfx + "b", b"1")
    e2 = await s.put(pfx + "b", b"2")
    with pytest.raises(VersionMismatchError):
        await s.delete(pfx + "b", expected_version=e.version)
    assert await s.get(pfx + "b") == e2
    assert await s.delete(pfx + "b", expected_version=e2.version) is True
    assert await s.get(pfx + "b") is None
    with pytest.raises(KeyNotFoundError):
        await s.delete(pfx + "b", expected_version=e2.version)

    # Re-creating a deleted key gives it a new version; the old one no longer matches.
    e3 = await s.put(pfx + "b", b"3", expected_version=MUST_NOT_EXIST)
    assert e3.version != e2.version
    with pytest.raises(VersionMismatchError):
        await s.put(pfx + "b", b"4", expected_version=e2.version)


async def test_delete_range(metadata_store: MetadataStore, pfx: str):
    s = metadata_store
    names = [f"k{i:02d}" for i in range(10)]
    for n in names:
        await s.put(pfx + n, n.encode())
    await s.put(pfx + "k05/x", b"deeper")
    await s.delete_range(pfx + "k03", pfx + "k07")
    start, end = all_under(pfx)
    left = [k[len(pfx) :] for k in await s.list(start, end)]
    # [k03, k07) at the upper level is gone; the deeper key is outside that range in hierarchical order.
    assert left == ["k00", "k01", "k02", "k07", "k08", "k09", "k05/x"]
    await s.delete_range(pfx + "k05/", pfx + "k05/~")
    await s.delete_range(pfx + "k08", pfx + "k08")  # empty range: nothing
    left = [k[len(pfx) :] for k in await s.list(start, end)]
    assert left == ["k00", "k01", "k02", "k07", "k08", "k09"]
    await s.delete_range(start, end)
    assert await s.list(start, end) == []


# ---------------------------------------------------------------------------------------------------- sessions


async def test_ephemeral_key_goes_with_close(store_factory: StoreFactory, pfx: str):
    observer = await store_factory.open()
    owner = await store_factory.open()
    k = pfx + "eph"
    e = await owner.put(k, b"mine", ephemeral=True)
    assert e.ephemeral
    seen = await observer.get(k)
    assert seen is not None and seen.ephemeral and seen.value == b"mine"
    await owner.put(pfx + "durable", b"stays")
    watch = await observer.watch(pfx)

    await store_factory.close(owner)

    async def gone():
        return await observer.get(k) is None

    await wait_until(gone, 10.0, "the ephemeral key to go after close()")
    assert (await observer.get(pfx + "durable")).value == b"stays"
    notes = await next_notifications(watch, 1)
    assert notes[0].key == k and notes[0].type == NotificationType.DELETED
    await watch.aclose()


class Child:
    """metadata_child.py: another process holding an ephemeral key in every generation of its session."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, key: str, session_timeout_ms: int) -> "Child":
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), url, key, str(session_timeout_ms),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(REPO_ROOT),
        )
        return cls(proc)

    async def ready(self, generation: int, timeout: float = 60) -> None:
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            line = b""
        if line.strip() != b"ready %d" % generation:
            self.proc.kill()
            err = await self.proc.stderr.read()
            pytest.fail(f"child did not get ready in generation {generation}: {line!r} "
                        f"{err.decode(errors='replace')}")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def test_ephemeral_key_goes_when_owner_is_killed(store_factory: StoreFactory, pfx: str):
    observer = await store_factory.open()
    k = pfx + "child-eph"
    session_timeout_ms = 2000
    # Watching before the child starts: its writes come from another process.
    watch = await observer.watch(pfx)
    child = await Child.start(store_factory.url, k, session_timeout_ms)
    try:
        await child.ready(1)
        seen = await observer.get(k)
        assert seen is not None and seen.ephemeral
        (created,) = await next_notifications(watch, 1)
        assert (created.key, created.type, created.version) == (k, NotificationType.CREATED, seen.version)

        await child.kill()
        killed_at = time.monotonic()

        async def gone():
            return await observer.get(k) is None

        await wait_until(gone, session_timeout_ms / 1000 + 15, "the killed owner's ephemeral key to go")
        elapsed = time.monotonic() - killed_at
        # Gone after about the session timeout (+ the reaper's delay); not long before it.
        assert elapsed < session_timeout_ms / 1000 + 10
        notes = await next_notifications(watch, 1)
        assert notes[0].key == k and notes[0].type == NotificationType.DELETED
    finally:
        await child.kill()
        await watch.aclose()


async def test_a_stalled_session_expires_and_is_renewed(store_factory: StoreFactory, pfx: str):
    """A process stalled past its session timeout loses its session (its ephemeral key goes); once it runs again
    its store opens the next generation by itself, and the key is written again, in the new session."""
    observer = await store_factory.open()
    k = pfx + "stalled"
    child = await Child.start(store_factory.url, k, 2000)
    try:
        await child.ready(1)
        assert (await observer.get(k)).value.endswith(b"generation=1")
        child.signal(signal.SIGSTOP)

        async def gone():
            return await observer.get(k) is None

        await wait_until(gone, 20, "the stalled owner's ephemeral key to go")
        child.signal(signal.SIGCONT)
        await child.ready(2, timeout=30)
        renewed = await observer.get(k)
        assert renewed is not None and renewed.ephemeral and renewed.value.endswith(b"generation=2")

        await child.kill()
        await wait_until(gone, 20, "the renewed session's key to go with the killed owner")
    finally:
        await child.kill()


async def test_session_generations(store_factory: StoreFactory, pfx: str):
    s = await store_factory.open(session_timeout_ms=2000)
    assert s.session.alive and s.session.generation == 1
    assert await s.session.wait_alive() == 1
    e = await s.put(pfx + "eph", b"1", ephemeral=True, session=1)
    assert e.ephemeral
    with pytest.raises(SessionExpiredError):  # a generation that is not the live one
        await s.put(pfx + "eph2", b"2", ephemeral=True, session=2)
    assert await s.get(pfx + "eph2") is None
    ended = asyncio.ensure_future(s.session.wait_ended(1))
    await asyncio.sleep(0.1)
    assert not ended.done()  # the session lives on while nothing stalls
    await store_factory.close(s)
    await asyncio.wait_for(ended, 5)  # closing ends it
    assert not s.session.alive
    with pytest.raises(MetadataError):
        await s.session.wait_alive()


# ---------------------------------------------------------------------------------------------------- watches


async def test_watch_sees_every_change_after_it_starts_in_order(store_factory: StoreFactory, pfx: str):
    s = await store_factory.open()
    other = await store_factory.open()
    await s.put(pfx + "before", b"0")
    await s.put(pfx + "gone-before", b"0")
    await s.delete(pfx + "gone-before")

    w = await s.watch(pfx)
    outside = f"mc-{uuid.uuid4().hex[:16]}/outside"

    a1 = await s.put(pfx + "a", b"1")
    a2 = await s.put(pfx + "a", b"2")
    await s.put(outside, b"x")  # not under the prefix
    b1 = await other.put(pfx + "b", b"1")  # from another store instance
    assert await s.delete(pfx + "a")
    c1 = await other.put(pfx + "c", b"1")
    await s.delete_range(pfx + "b", pfx + "d")
    seq = await other.put_sequential(pfx + "seq", b"s", [1, 1], partition_key=pfx + "seq")
    assert await other.delete(seq.key)
    end = await s.put(pfx + "zz-end", b"end")

    expected = [
        (pfx + "a", NotificationType.CREATED, a1.version, None),
        (pfx + "a", NotificationType.MODIFIED, a2.version, None),
        (pfx + "b", NotificationType.CREATED, b1.version, None),
        (pfx + "a", NotificationType.DELETED, None, None),
        (pfx + "c", NotificationType.CREATED, c1.version, None),
        (pfx + "b", NotificationType.RANGE_DELETED, None, pfx + "d"),
        (seq.key, NotificationType.CREATED, seq.version, None),
        (seq.key, NotificationType.DELETED, None, None),
        (pfx + "zz-end", NotificationType.CREATED, end.version, None),
    ]
    notes = await next_notifications(w, len(expected))
    got = [(n.key, n.type, n.version, n.key_range_end if n.type == NotificationType.RANGE_DELETED else None) for n in notes]
    assert got == expected

    # Nothing more is pending: the next notification is the next change.
    last = await other.put(pfx + "zz-last", b"")
    (n,) = await next_notifications(w, 1)
    assert (n.key, n.type, n.version) == (pfx + "zz-last", NotificationType.CREATED, last.version)

    await w.aclose()
    with pytest.raises(StopAsyncIteration):
        await w.__anext__()


async def test_watches_are_independent_and_start_when_created(store_factory: StoreFactory, pfx: str):
    s = await store_factory.open()
    other = await store_factory.open()
    w1 = await s.watch(pfx)
    first = await other.put(pfx + "x/1", b"")
    w2 = await other.watch(pfx + "x/")
    w_sub = await s.watch(pfx + "y")
    second = await s.put(pfx + "x/2", b"")
    y = await other.put(pfx + "y", b"")

    assert [(n.key, n.version) for n in await next_notifications(w1, 3)] == [
        (pfx + "x/1", first.version),
        (pfx + "x/2", second.version),
        (pfx + "y", y.version),
    ]
    assert [(n.key, n.version) for n in await next_notifications(w2, 1)] == [(pfx + "x/2", second.version)]
    assert [(n.key, n.version) for n in await next_notifications(w_sub, 1)] == [(pfx + "y", y.version)]

    # Closing one watch leaves the others running.
    await w2.aclose()
    z = await s.put(pfx + "x/3", b"")
    assert [(n.key, n.version) for n in await next_notifications(w1, 1)] == [(pfx + "x/3", z.version)]
    await w1.aclose()
    await w_sub.aclose()
    assert [n async for n in w1] == []


# ---------------------------------------------------------------------------------------------------- SQLite only


async def test_sqlite_change_log_pruning_keeps_versions_unique(tmp_path):
    from dray_broker.metadata.sqlite import SqliteMetadataStore

    s = await SqliteMetadataStore.open(str(tmp_path / "meta.db"))
    try:
        old = [await s.put(f"p/k{i}", b"x") for i in range(5)]
        s.watches.retention_s = -1.0  # everything is old
        await s.thread.submit(s.watches.prune, write=True)
        count = s.thread.submit(lambda c: c.execute("SELECT count(*) FROM changes").fetchone()[0], write=False)
        assert await count == 0
        new = await s.put("p/k0", b"y")
        assert new.version > max(e.version for e in old)
        w = await s.watch("p/")
        e = await s.put("p/k1", b"z")
        (n,) = await next_notifications(w, 1)
        assert (n.key, n.version) == ("p/k1", e.version)
        await w.aclose()
    finally:
        await s.close()
