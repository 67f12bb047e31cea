"""The Oxia metadata store: MetadataStore over grpc.aio, composed of the modules of this package.

The PyPI `oxia` client is blocking and routes keys with the wrong hash; this package only borrows its generated
message classes (`io.streamnative.oxia.proto`, betterproto2) for the rarely used shard assignments and speaks the
protocol itself. The store turns each MetadataStore call into per-shard operations:

- get: routed by partition key (or key) to one shard, or, for a comparison without a partition key, asked of
  every shard and the closest entry picked; sent through the shard's reader (reads.py), never landing on Oxia's
  own keys (own_keys.py);
- put, delete, delete_range, put_sequential(_batch): encoded (codec.py) and queued on the shard's writer
  (writes.py); an ephemeral put first gets the shard's session of the live generation (sessions.py);
- list, range_scan: per shard (reads.py), merged in key order, without Oxia's own keys;
- watch: the shards' notification streams (notifications.py).

put_sequential: the server fails the whole write request (every operation coalesced with it) when a put_sequential
has fewer deltas than the newest key under the prefix has sums, or when that key is not a sequence key. The store
refuses such a put before sending it: it looks the newest key up once per prefix (sequence.py's rule), then
remembers how many sums the prefix has. Always use the same number of deltas under one prefix.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import os
import socket
import uuid
from typing import Sequence

from dray_broker.metadata.base import (
    Comparison,
    Entry,
    KeyNotFoundError,
    MetadataError,
    MetadataStore,
    SequentialPut,
    SessionExpiredError,
    SessionLife,
    VersionMismatchError,
    Watch,
)
from dray_broker.metadata.keys import hierarchical_sort_key
from dray_broker.metadata.oxia import codec, own_keys
from dray_broker.metadata.oxia.notifications import Feeds
from dray_broker.metadata.oxia.reads import Reads
from dray_broker.metadata.oxia.routing import Router
from dray_broker.metadata.oxia.sessions import ShardSessions
from dray_broker.metadata.oxia.writes import DELETE, DELETE_RANGE, PUT, Writes
from dray_broker.metadata.sequence import check_sequential, check_sums_covered, newest_key_bound, sums_of_newest


class OxiaMetadataStore(MetadataStore):
    def __init__(
        self,
        address: str,
        *,
        namespace: str,
        session_timeout_ms: int,
        client_identity: str | None,
        rpc_timeout: float,
        op_timeout: float,
        max_batch_ops: int,
        max_batch_bytes: int,
        max_inflight_writes: int,
        max_inflight_reads: int,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.session_timeout_ms = max(2_000, min(300_000, int(session_timeout_ms)))
        self.client_identity = client_identity or f"dray-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.router = Router(address, namespace)
        self.writes = Writes(
            self.router,
            rpc_timeout=rpc_timeout,
            op_timeout=op_timeout,
            max_batch_ops=max_batch_ops,
            max_batch_bytes=max_batch_bytes,
            max_inflight=max_inflight_writes,
        )
        self.reads = Reads(
            self.router,
            rpc_timeout=rpc_timeout,
            op_timeout=op_timeout,
            max_batch_ops=max_batch_ops,
            max_inflight=max_inflight_reads,
        )
        self.session = SessionLife()
        self.shard_sessions = ShardSessions(
            self.router,
            self.session,
            timeout_ms=self.session_timeout_ms,
            client_identity=self.client_identity,
            rpc_timeout=rpc_timeout,
            op_timeout=op_timeout,
        )
        self.feeds = Feeds(self.router, ready_timeout=op_timeout)
        # prefix -> number of sums of its newest sequence key (see put_sequential)
        self._sequence_sums: dict[str, int] = {}

    # -- lifecycle ------------------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        namespace: str = "default",
        session_timeout_ms: int = 10_000,
        client_identity: str | None = None,
        rpc_timeout: float = 10.0,
        op_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        max_batch_ops: int = 1000,
        max_batch_bytes: int = 1 << 20,
        max_inflight_writes: int = 2,
        max_inflight_reads: int = 4,
    ) -> "OxiaMetadataStore":
        """Connect to the Oxia service at host:port and wait for the namespace's shard assignments."""
        store = cls(
            address,
            namespace=namespace,
            session_timeout_ms=session_timeout_ms,
            client_identity=client_identity,
            rpc_timeout=rpc_timeout,
            op_timeout=op_timeout,
            max_batch_ops=max_batch_ops,
            max_batch_bytes=max_batch_bytes,
            max_inflight_writes=max_inflight_writes,
            max_inflight_reads=max_inflight_reads,
        )
        store.router.start()
        store.session.begin()
        try:
            await store.router.wait_assigned(connect_timeout)
        except BaseException as e:
            await store.close()
            if isinstance(e, asyncio.TimeoutError):
                raise MetadataError(
                    f"oxia: no shard assignments from {address} (namespace {namespace!r}) in {connect_timeout} s"
                ) from None
            raise
        return store

    async def close(self) -> None:
        if self.router.closed:
            return
        self.router.stop()
        self.session.close()
        # Sessions first, so that their ephemeral keys go now rather than at expiry.
        await self.shard_sessions.close()
        await self.feeds.close()
        await self.writes.close()
        await self.reads.close()
        await self.router.close()

    async def __aenter__(self) -> "OxiaMetadataStore":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- routing ---------------------------------------------------------------------------------------------

    @property
    def shards(self) -> list[int]:
        return self.router.shards

    def shard_of(self, key: str, partition_key: str | None = None) -> int:
        return self.router.shard_for(partition_key if partition_key is not None else key)

    # -- get ---------------------------------------------------------------------------------------------------

    async def _get_on_shard(self, shard: int, key: str, comparison: Comparison) -> Entry | None:
        return await own_keys.find(functools.partial(self.reads.get, shard), key, comparison)

    async def get(
        self,
        key: str,
        comparison: Comparison = Comparison.EQUAL,
        *,
        partition_key: str | None = None,
    ) -> Entry | None:
        if comparison is Comparison.EQUAL and key.startswith(own_keys.PREFIX):
            return None
        if comparison is Comparison.EQUAL or partition_key is not None or self.router.shard_count == 1:
            return await self._get_on_shard(self.shard_of(key, partition_key), key, comparison)
        # A comparison without a partition key searches every shard.
        found = await asyncio.gather(*(self._get_on_shard(s, key, comparison) for s in self.router.shards))
        entries = [e for e in found if e is not None]
        if not entries:
            return None
        pick = max if comparison in (Comparison.FLOOR, Comparison.LOWER) else min
        return pick(entries, key=lambda e: hierarchical_sort_key(e.key))

    # -- writes ------------------------------------------------------------------------------------------------

    async def _version_error(
        self, key: str, expected_version: int | None, partition_key: str | None
    ) -> MetadataError:
        if expected_version is not None and expected_version >= 0:
            current = await self.get(key, partition_key=partition_key)
            if current is None:
                return KeyNotFoundError(f"{key!r} does not exist (expected version {expected_version})")
            return VersionMismatchError(f"{key!r} has version {current.version}, not {expected_version}")
        return VersionMismatchError(f"{key!r} already exists")

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None = None,
        ephemeral: bool = False,
        session: int | None = None,
        partition_key: str | None = None,
    ) -> Entry:
        if key.startswith(own_keys.PREFIX):
            raise MetadataError(f"oxia: keys under {own_keys.PREFIX} belong to Oxia")
        if type(value) is not bytes:
            value = bytes(value)
        shard = self.shard_of(key, partition_key)
        owner = await self.shard_sessions.for_shard(shard, session) if ephemeral else None
        payload = codec.encode_put(
            key,
            value,
            expected_version,
            owner.id if owner else None,
            self.client_identity if owner else None,
            partition_key,
            None,
        )
        status, version_id, session_id, _key = await self.writes.submit(shard, PUT, payload, expected_version is None)
        if status == codec.OK:
            return Entry(key, value, version_id, session_id is not None)
        if status == codec.UNEXPECTED_VERSION_ID:
            raise await self._version_error(key, expected_version, partition_key)
        if status == codec.SESSION_DOES_NOT_EXIST:
            if owner is not None:
                self.shard_sessions.dropped(owner, f"Oxia dropped session {owner.id} of shard {shard}")
            raise SessionExpiredError(f"oxia: session of shard {shard} does not exist")
        if status == codec.KEY_NOT_FOUND:
            raise KeyNotFoundError(key)
        raise MetadataError(f"oxia: put {key!r} failed with status {status}")

    async def put_sequential(
        self, prefix: str, value: bytes, deltas: Sequence[int], *, partition_key: str
    ) -> Entry:
        deltas = self._check_sequential(prefix, deltas, partition_key)
        known = self._sequence_sums.get(prefix)
        if known is None:
            known = await self._newest_sequence_sums(self.router.shard_for(partition_key), prefix)
        shard, value, payload = self._sequential_put(prefix, value, deltas, partition_key, known)
        return self._sequential_entry(prefix, value, deltas, await self.writes.submit(shard, PUT, payload, False))

    async def put_sequential_batch(self, puts: Sequence[SequentialPut]) -> list[Entry | Exception]:
        """Queued together, in order, on their shards' writers: one write request per shard, applied in order."""
        results: list[Entry | Exception | None] = [None] * len(puts)
        known: dict[str, int | BaseException] = {}
        unknown: dict[str, str] = {}
        for p in puts:
            if p.prefix in self._sequence_sums:
                known[p.prefix] = self._sequence_sums[p.prefix]
            elif p.partition_key is not None:
                unknown[p.prefix] = p.partition_key
        found = await asyncio.gather(
            *(self._newest_sequence_sums(self.router.shard_for(pk), prefix) for prefix, pk in unknown.items()),
            return_exceptions=True)
        known.update(zip(unknown, found))
        queued = []
        for i, p in enumerate(puts):
            try:
                deltas = self._check_sequential(p.prefix, p.deltas, p.partition_key)
                sums = known[p.prefix]
                if isinstance(sums, BaseException):
                    raise sums
                shard, value, payload = self._sequential_put(p.prefix, p.value, deltas, p.partition_key, sums)
                queued.append((i, value, self.writes.submit(shard, PUT, payload, False)))
            except Exception as e:  # noqa: BLE001 - reported in the result
                results[i] = e
        for i, value, fut in queued:
            try:
                results[i] = self._sequential_entry(puts[i].prefix, value, puts[i].deltas, await fut)
            except Exception as e:  # noqa: BLE001 - reported in the result
                results[i] = e
        return results  # type: ignore[return-value]

    @staticmethod
    def _check_sequential(prefix: str, deltas: Sequence[int], partition_key: str | None) -> list[int]:
        # The server fails the whole write request (every operation coalesced with this one) on these.
        checked = check_sequential(prefix, deltas, partition_key)
        if prefix.startswith(own_keys.PREFIX):
            raise MetadataError(f"oxia: keys under {own_keys.PREFIX} belong to Oxia")
        return checked

    def _sequential_put(
        self, prefix: str, value: bytes, deltas: Sequence[int], partition_key: str, known: int
    ) -> tuple[int, bytes, bytes]:
        """(shard, value, payload) of a checked put_sequential under a prefix whose newest key has known sums."""
        if type(value) is not bytes:
            value = bytes(value)
        check_sums_covered(prefix, known, deltas)
        payload = codec.encode_put(prefix, value, None, None, None, partition_key, deltas)
        return self.router.shard_for(partition_key), value, payload

    def _sequential_entry(self, prefix: str, value: bytes, deltas: Sequence[int], result: tuple) -> Entry:
        status, version_id, session_id, key = result
        if status != codec.OK or key is None:
            raise MetadataError(f"oxia: put_sequential {prefix!r} failed with status {status}")
        if len(self._sequence_sums) >= 100_000:
            self._sequence_sums.clear()
        self._sequence_sums[prefix] = len(deltas)
        return Entry(key, value, version_id, False)

    async def _newest_sequence_sums(self, shard: int, prefix: str) -> int:
        """The number of sums in the newest key under prefix, found as the server finds it. The server fails the
        whole write request, not just one put, when a put_sequential has fewer deltas than that or the key does
        not parse, so both are refused here first."""
        newest = await self._get_on_shard(shard, newest_key_bound(prefix), Comparison.LOWER)
        return len(sums_of_newest(prefix, newest.key if newest is not None else None))

    async def delete(
        self, key: str, *, expected_version: int | None = None, partition_key: str | None = None
    ) -> bool:
        if key.startswith(own_keys.PREFIX):
            return False
        shard = self.shard_of(key, partition_key)
        payload = codec.encode_delete(key, expected_version)
        status = await self.writes.submit(shard, DELETE, payload, expected_version is None)
        if status == codec.OK:
            return True
        if status == codec.KEY_NOT_FOUND:
            return False
        if status == codec.UNEXPECTED_VERSION_ID:
            raise await self._version_error(key, expected_version, partition_key)
        raise MetadataError(f"oxia: delete {key!r} failed with status {status}")

    async def delete_range(self, start: str, end: str, *, partition_key: str | None = None) -> None:
        ranges = own_keys.user_ranges(start, end)
        if not ranges:
            return
        shards = [self.router.shard_for(partition_key)] if partition_key is not None else self.router.shards
        calls = [
            self.writes.submit(shard, DELETE_RANGE, codec.encode_delete_range(s, e), True)
            for shard in shards
            for s, e in ranges
        ]
        for status in await asyncio.gather(*calls):
            if status != codec.OK:
                raise MetadataError(f"oxia: delete_range [{start!r}, {end!r}) failed with status {status}")

    # -- list and scan -----------------------------------------------------------------------------------------

    def _targets(self, partition_key: str | None) -> list[int]:
        self.router.check_open()
        return [self.router.shard_for(partition_key)] if partition_key is not None else self.router.shards

    async def list(self, start: str, end: str, *, partition_key: str | None = None) -> list[str]:
        ranges = own_keys.user_ranges(start, end)
        shards = self._targets(partition_key)
        parts = await asyncio.gather(*(self.reads.list(sh, s, e) for sh in shards for s, e in ranges))
        keys = [k for part in parts for k in part]
        if len(shards) > 1:
            keys.sort(key=hierarchical_sort_key)
        return keys

    async def range_scan(
        self, start: str, end: str, *, partition_key: str | None = None
    ) -> builtins.list[Entry]:  # `list`: the method above
        ranges = own_keys.user_ranges(start, end)
        shards = self._targets(partition_key)
        parts = await asyncio.gather(*(self.reads.range_scan(sh, s, e) for sh in shards for s, e in ranges))
        entries = [x for part in parts for x in part]
        if len(shards) > 1:
            entries.sort(key=lambda x: hierarchical_sort_key(x.key))
        return entries

    # -- watch -------------------------------------------------------------------------------------------------

    async def watch(self, prefix: str) -> Watch:
        self.router.check_open()
        return await self.feeds.watch(prefix)
