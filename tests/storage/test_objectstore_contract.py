"""One contract for every object store backend: a local directory (file://) and S3 (a real MinIO)."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid

import pytest

from dray_broker.objectstore import (
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    open_object_store,
)
from dray_broker.objectstore.local import TMP_PREFIX, LocalObjectStore

BACKENDS = ["file", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty store location per test: a temp directory, or a unique prefix in the MinIO bucket."""
    if request.param == "file":
        return f"file://{tmp_path / 'objects'}"
    s3_service = request.getfixturevalue("s3_service")
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")
    return s3_service.url(f"contract/{name}-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def store(backend_url: str):
    s = open_object_store(backend_url)
    try:
        yield s
    finally:
        await s.close()


def is_s3(store: ObjectStore) -> bool:
    return not isinstance(store, LocalObjectStore)


# -- put / get -------------------------------------------------------------------------------------------------


async def test_put_get_bytes(store: ObjectStore) -> None:
    await store.put("a", b"hello world")
    assert await store.get("a") == b"hello world"


async def test_put_get_list_of_buffers(store: ObjectStore) -> None:
    parts = [b"head-", bytearray(b"middle-"), memoryview(b"xxtail-xx")[2:-2], b"", b"end"]
    await store.put("parts", parts)
    assert await store.get("parts") == b"head-middle-tail-end"
    info = await store.head("parts")
    assert info is not None and info.size == len(b"head-middle-tail-end")


async def test_put_memoryview_and_bytearray(store: ObjectStore) -> None:
    await store.put("mv", memoryview(b"0123456789")[3:7])
    await store.put("ba", bytearray(b"abc"))
    assert await store.get("mv") == b"3456"
    assert await store.get("ba") == b"abc"


async def test_put_empty_object(store: ObjectStore) -> None:
    await store.put("empty", b"")
    assert await store.get("empty") == b""
    info = await store.head("empty")
    assert info is not None and info.size == 0
    await store.put("empty-list", [])
    assert await store.get("empty-list") == b""


async def test_range_gets(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes
    await store.put("r", data)
    assert await store.get("r", 100) == data[100:]  # start only
    assert await store.get("r", 10, 20) == data[10:20]  # start and end
    assert await store.get("r", 0, 1) == data[:1]
    assert await store.get("r", 1000, 1024) == data[1000:]  # up to the exact end
    assert await store.get("r", 1000, 5000) == data[1000:]  # end past the object: clipped
    assert await store.get("r", 0, None) == data
    assert await store.get("r", 1023) == data[1023:]
    assert await store.get("r", 1024) == b""  # start at the end
    assert await store.get("r", 2000) == b""  # start past the end
    assert await store.get("r", 5, 5) == b""  # empty range


async def test_writable_range_gets(store: ObjectStore) -> None:
    """get_writable returns the same bytes as get, in a bytearray the caller may patch (the fetch cache does)."""
    data = os.urandom(3 << 20)  # several reads' worth for the local store's preadv loop
    await store.put("w", data)
    for start, end in ((0, len(data)), (10, 20), (len(data) - 5, len(data)), (100, len(data) + 100), (7, 7)):
        got = await store.get_writable("w", start, end)
        assert isinstance(got, bytearray) and got == data[start:end]
        got[:1] = b"x"  # it is the caller's own copy
    assert await store.get("w") == data
    with pytest.raises(ObjectNotFoundError):
        await store.get_writable("missing", 0, 10)


async def test_get_missing_raises(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        await store.get("missing")
    with pytest.raises(ObjectNotFoundError):
        await store.get("missing", 10, 20)
    with pytest.raises(ObjectNotFoundError):
        await store.get("no/such/dir/key")
    with pytest.raises(ObjectNotFoundError):
        await store.get("missing", 3, 3)


# -- create-only and overwrite ---------------------------------------------------------------------------------


async def test_create_only_put_refuses_existing_key(store: ObjectStore) -> None:
    await store.put("once", b"first")
    with pytest.raises(ObjectExistsError):
        await store.put("once", b"second")
    with pytest.raises(ObjectExistsError):
        await store.put("once", [b"sec", b"ond"], create_only=True)
    with pytest.raises(ObjectExistsError):
        await store.put("once", b"first")  # even with the same bytes
    assert await store.get("once") == b"first"


async def test_overwrite_put(store: ObjectStore) -> None:
    await store.put("k", b"v1", create_only=False)  # creates when missing
    assert await store.get("k") == b"v1"
    await store.put("k", b"version-two", create_only=False)
    assert await store.get("k") == b"version-two"
    info = await store.head("k")
    assert info is not None and info.size == len(b"version-two")
    with pytest.raises(ObjectExistsError):
        await store.put("k", b"v3")


async def test_concurrent_create_only_puts_exactly_one_wins(store: ObjectStore) -> None:
    for round_ in range(3):
        key = f"race/{round_}"
        payloads = [f"writer-{i}-".encode() * (1000 + i) for i in range(8)]
        results = await asyncio.gather(*(store.put(key, p) for p in payloads), return_exceptions=True)
        winners = [i for i, r in enumerate(results) if r is None]
        losers = [r for r in results if r is not None]
        assert len(winners) == 1, results
        assert all(isinstance(r, ObjectExistsError) for r in losers), losers
        assert await store.get(key) == payloads[winners[0]]


# -- head / list / delete --------------------------------------------------------------------------------------


async def test_head(store: ObjectStore) -> None:
    assert await store.head("missing") is None
    assert await store.head("missing/nested") is None
    before = time.time()
    await store.put("h", b"12345")
    info = await store.head("h")
    assert isinstance(info, ObjectInfo)
    assert info.key == "h" and info.size == 5
    # S3 stores seconds; allow for that and a little clock skew with the server.
    assert before - 5 <= info.last_modified <= time.time() + 5


async def test_list_by_prefix_sorted_with_sizes(store: ObjectStore) -> None:
    keys = {
        "wal/0003": 3,
        "wal/0001": 1,
        "wal/0002": 22,
        "wal/sub/0001": 7,
        "walrus": 5,
        "idx/a": 4,
        "idx/b/c/d": 9,
    }
    for k, size in keys.items():
        await store.put(k, b"x" * size)

    everything = await store.list()
    assert [i.key for i in everything] == sorted(keys)
    assert {i.key: i.size for i in everything} == keys

    wal = await store.list("wal/")
    assert [(i.key, i.size) for i in wal] == [("wal/0001", 1), ("wal/0002", 22), ("wal/0003", 3), ("wal/sub/0001", 7)]
    assert [i.key for i in await store.list("wal")] == ["wal/0001", "wal/0002", "wal/0003", "wal/sub/0001", "walrus"]
    assert [i.key for i in await store.list("wal/000")] == ["wal/0001", "wal/0002", "wal/0003"]
    assert [i.key for i in await store.list("wal/s")] == ["wal/sub/0001"]
    assert [i.key for i in await store.list("idx/b/c/")] == ["idx/b/c/d"]
    assert await store.list("nothing/") == []
    assert await store.list("wal/0004") == []
    for info in everything:
        assert info.last_modified > 0


async def test_list_many_pages(store: ObjectStore) -> None:
    n = 1100 if is_s3(store) else 300  # S3 pages hold 1000 keys
    await asyncio.gather(*(store.put(f"many/{i:05d}", b"") for i in range(n)))
    listed = await store.list("many/")
    assert [i.key for i in listed] == [f"many/{i:05d}" for i in range(n)]


async def test_delete(store: ObjectStore) -> None:
    await store.put("d/1", b"one")
    await store.put("d/2", b"two")
    await store.delete("d/1")
    assert await store.head("d/1") is None
    with pytest.raises(ObjectNotFoundError):
        await store.get("d/1")
    assert [i.key for i in await store.list("d/")] == ["d/2"]
    await store.delete("d/1")  # missing: fine
    await store.delete("never/existed")
    # A deleted key can be created again, create-only.
    await store.put("d/1", b"again")
    assert await store.get("d/1") == b"again"


async def test_nested_keys(store: ObjectStore) -> None:
    key = "topics/orders/partitions/7/wal/01JABCDEF"
    await store.put(key, b"nested")
    assert await store.get(key) == b"nested"
    assert await store.get(key, 2, 4) == b"st"
    assert (await store.head(key)).size == 6
    assert [i.key for i in await store.list("topics/orders/")] == [key]
    with pytest.raises(ObjectExistsError):
        await store.put(key, b"other")
    await store.delete(key)
    assert await store.list("topics/") == []


async def test_large_object(store: ObjectStore) -> None:
    size = 8 * 1024 * 1024
    data = os.urandom(size)
    # As a list of 1 MiB views (what the WAL writer hands over).
    await store.put("big", [memoryview(data)[i : i + (1 << 20)] for i in range(0, size, 1 << 20)])
    assert (await store.head("big")).size == size
    assert await store.get("big") == data
    assert await store.get("big", size - 4096) == data[-4096:]
    assert await store.get("big", 3_000_000, 3_000_100) == data[3_000_000:3_000_100]


async def test_invalid_keys_rejected(store: ObjectStore) -> None:
    for bad in ["", "/abs", "a/../b", "..", "a//b", "./a", "a/"]:
        with pytest.raises(ValueError):
            await store.put(bad, b"x")
        with pytest.raises(ValueError):
            await store.get(bad)


# -- backend specifics -----------------------------------------------------------------------------------------


async def test_local_list_skips_temp_files_and_cleanup(tmp_path) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("wal/a", b"1")
    (tmp_path / "wal" / f"{TMP_PREFIX}crashed").write_bytes(b"partial")
    (tmp_path / f"{TMP_PREFIX}top").write_bytes(b"partial")
    assert [i.key for i in await store.list()] == ["wal/a"]
    assert [i.key for i in await store.list("wal/")] == ["wal/a"]
    assert store.cleanup_temp_files(older_than=-1) == 2
    assert sorted(os.listdir(tmp_path / "wal")) == ["a"]
    await store.close()


async def test_local_put_leaves_no_temp_files(tmp_path) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("x/y", b"1")
    with pytest.raises(ObjectExistsError):
        await store.put("x/y", b"2")
    await store.put("x/y", b"3", create_only=False)
    assert os.listdir(tmp_path / "x") == ["y"]
    assert (tmp_path / "x" / "y").read_bytes() == b"3"
    await store.close()


async def test_local_writable_gets_without_nowait_reads(tmp_path, monkeypatch) -> None:
    """Where RWF_NOWAIT reads are not available, get_writable reads in the thread pool (the same bytes)."""
    import dray_broker.objectstore.local as local

    monkeypatch.setattr(local, "_RWF_NOWAIT", None)
    store = LocalObjectStore(tmp_path)
    data = os.urandom(1 << 20)
    await store.put("w", data)
    assert await store.get_writable("w", 5, 1 << 21) == data[5:]
    with pytest.raises(ObjectNotFoundError):
        await store.get_writable("missing", 0, 10)
    await store.close()


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 3 * 1024 * 1024 + 7])
async def test_local_create_only_puts_bypass_the_page_cache(tmp_path, size) -> None:
    """WAL objects go to the disk with direct writes, padded to a block and cut to size: the page cache does not
    hold them (a read that must not wait for the disk fails) and they read back whole."""
    import dray_broker.objectstore.local as local

    store = LocalObjectStore(tmp_path)
    data = os.urandom(size)
    pieces = [memoryview(data)[i : i + 1000] for i in range(0, size, 1000)]  # unaligned views, as the WAL writer's
    await store.put("wal/x", pieces)
    fd = os.open(tmp_path / "wal" / "x", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == size
        with pytest.raises(BlockingIOError):
            os.preadv(fd, [bytearray(size)], 0, local._RWF_NOWAIT)
    finally:
        os.close(fd)
    assert await store.get("wal/x") == data
    assert await store.get_writable("wal/x", size // 2, size) == data[size // 2 :]
    await store.put("wal/y", data)  # the aligned buffer is reused
    assert (tmp_path / "wal" / "y").read_bytes() == data
    await store.close()


@pytest.mark.parametrize("refused_by", ["open", "pwrite"])
async def test_local_puts_where_direct_writes_are_refused(tmp_path, monkeypatch, refused_by) -> None:
    """A file system that refuses O_DIRECT (EINVAL when opening, or when writing for an alignment it does not
    take) gets the same objects through the page cache."""
    import dray_broker.objectstore.local as local

    real_open, real_pwrite = os.open, os.pwrite
    direct_fds: set[int] = set()

    def open_(path, flags, *args, **kwargs):
        if flags & local._O_DIRECT and refused_by == "open":
            raise OSError(22, "Invalid argument")
        fd = real_open(path, flags, *args, **kwargs)
        if flags & local._O_DIRECT:
            direct_fds.add(fd)
        return fd

    def pwrite(fd, data, offset):
        if fd in direct_fds:
            raise OSError(22, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(local.os, "open", open_)
    monkeypatch.setattr(local.os, "pwrite", pwrite)
    store = LocalObjectStore(tmp_path)
    data = os.urandom(10_000)
    await store.put("wal/x", [data[:3], data[3:]])
    assert await store.get("wal/x") == data and not store._direct
    with pytest.raises(ObjectExistsError):
        await store.put("wal/x", b"2")
    assert sorted(os.listdir(tmp_path / "wal")) == ["x"]  # no temp file left by the refused attempt
    await store.close()


@pytest.mark.s3
async def test_s3_ambiguous_create_only_retry_is_success(s3_service) -> None:
    """A create-only put whose first attempt was applied but whose answer was lost (a timeout) is retried, meets
    its own object (412) and must count as success; someone else's object must still raise ObjectExistsError."""
    from botocore.exceptions import ReadTimeoutError

    store = open_object_store(s3_service.url(f"contract/ambiguous-{uuid.uuid4().hex[:12]}"))
    try:
        client = await store._get_client()
        real_put = client.put_object
        calls = 0

        async def lossy_put(**kwargs):
            nonlocal calls
            calls += 1
            result = await real_put(**kwargs)
            if calls == 1:
                raise ReadTimeoutError(endpoint_url="http://lost")
            return result

        client.put_object = lossy_put
        try:
            await store.put("wal/1", b"mine")
            assert calls == 2
            assert await store.get("wal/1") == b"mine"
            calls = 0
            with pytest.raises(ObjectExistsError):
                await store.put("wal/1", b"other bytes")
        finally:
            del client.put_object
    finally:
        await store.close()


def test_open_object_store_urls(tmp_path) -> None:
    from dray_broker.objectstore.s3 import S3ObjectStore

    local = open_object_store(f"file://{tmp_path}/store")
    assert isinstance(local, LocalObjectStore) and local.root == f"{tmp_path}/store"
    s3 = open_object_store(
        "s3://bkt/some/prefix?endpoint=http://127.0.0.1:9000&access_key_id=ak&secret_access_key=sk"
        "&region=eu-west-1&connect_timeout=2&read_timeout=10"
    )
    assert isinstance(s3, S3ObjectStore)
    assert (s3.bucket, s3.prefix, s3.endpoint, s3.region) == ("bkt", "some/prefix", "http://127.0.0.1:9000", "eu-west-1")
    assert (s3.connect_timeout, s3.read_timeout, s3.path_style) == (2.0, 10.0, True)
    assert open_object_store("s3://bkt").prefix == ""


@pytest.mark.s3
async def test_s3_conditional_conflict_is_retried(s3_service) -> None:
    """AWS answers 409 ConditionalRequestConflict while another conditional write of the key is in flight: retry."""
    from botocore.exceptions import ClientError

    store = open_object_store(s3_service.url(f"contract/conflict-{uuid.uuid4().hex[:12]}"))
    try:
        client = await store._get_client()
        real_put = client.put_object
        calls = 0

        async def conflicting_put(**kwargs):
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise ClientError(
                    {
                        "Error": {"Code": "ConditionalRequestConflict", "Message": "conflict"},
                        "ResponseMetadata": {"HTTPStatusCode": 409},
                    },
                    "PutObject",
                )
            return await real_put(**kwargs)

        client.put_object = conflicting_put
        try:
            await store.put("k", b"v")
            assert calls == 3
            assert await store.get("k") == b"v"
        finally:
            del client.put_object
    finally:
        await store.close()


@pytest.mark.s3
async def test_s3_missing_bucket_is_a_store_error(s3_service) -> None:
    from dray_broker.objectstore import ObjectStoreError

    url = s3_service.url("x").replace(f"s3://{s3_service.bucket}/", "s3://no-such-bucket-dray/", 1)
    store = open_object_store(url)
    try:
        with pytest.raises(ObjectStoreError):
            await store.put("k", b"v")
        with pytest.raises(ObjectStoreError):
            await store.list()
    finally:
        await store.close()
