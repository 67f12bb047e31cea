"""Where a key goes: the namespace's shards, each shard's leader, and one gRPC channel per server.

A GetShardAssignments stream (kept open, reconnected on failure) gives each shard's hash range and leader; a key
goes to the shard whose [min, max] range holds xxh3_64(partition_key or key) & 0xffffffff, as the server hashes
(common/hash.Xxh332 at v0.14.4). Requests and responses stay raw bytes on the channels (see codec.py).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from typing import Any

import grpc.aio
import xxhash

from dray_broker.metadata.base import MetadataError
from dray_broker.metadata.oxia import retries

log = logging.getLogger("dray.metadata.oxia")

_SERVICE = "/io.streamnative.oxia.proto.OxiaClient/"

_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


def shard_hash(key: str) -> int:
    """The server's key hash (common/hash.Xxh332): the low 32 bits of XXH3-64."""
    return xxhash.xxh3_64_intdigest(key.encode()) & 0xFFFFFFFF


class Conn:
    """A channel to one server, with its multi-callables (requests and responses stay raw bytes)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=_GRPC_OPTIONS)
        ch = self.channel
        self.assignments = ch.unary_stream(_SERVICE + "GetShardAssignments")
        self.write_stream = ch.stream_stream(_SERVICE + "WriteStream")
        self.read = ch.unary_stream(_SERVICE + "Read")
        self.list = ch.unary_stream(_SERVICE + "List")
        self.range_scan = ch.unary_stream(_SERVICE + "RangeScan")
        self.notifications = ch.unary_stream(_SERVICE + "GetNotifications")
        self.create_session = ch.unary_unary(_SERVICE + "CreateSession")
        self.keep_alive = ch.unary_unary(_SERVICE + "KeepAlive")
        self.close_session = ch.unary_unary(_SERVICE + "CloseSession")


class Router:
    """The shard assignments of one namespace and the channels to the servers. Once closed, it opens no channel
    (Closed) and the store it serves is closed (check_open)."""

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self.closed = False
        self._conns: dict[str, Conn] = {}
        # Sorted by min hash: (min, max, shard)
        self._ranges: list[tuple[int, int, int]] = []
        self._range_mins: list[int] = []
        self._leaders: dict[int, str] = {}
        self._router_ok = True
        self._assigned: asyncio.Future = asyncio.get_running_loop().create_future()
        self._assignments_task: asyncio.Task | None = None

    def start(self) -> None:
        self._assignments_task = asyncio.get_running_loop().create_task(self._assignments_loop())

    async def wait_assigned(self, timeout: float) -> None:
        """Return once the namespace's shards are known (asyncio.TimeoutError; MetadataError: no such namespace)."""
        await asyncio.wait_for(asyncio.shield(self._assigned), timeout)

    def check_open(self) -> None:
        if self.closed:
            raise MetadataError("oxia: store closed")

    def stop(self) -> None:
        """Open no channel from now on (the store is closing)."""
        self.closed = True

    async def close(self) -> None:
        self.stop()
        if self._assignments_task is not None:
            self._assignments_task.cancel()
            await asyncio.gather(self._assignments_task, return_exceptions=True)
        if not self._assigned.done():
            self._assigned.cancel()
        for conn in list(self._conns.values()):
            await conn.channel.close()
        self._conns.clear()

    # -- routing ---------------------------------------------------------------------------------------------

    @property
    def shards(self) -> list[int]:
        return [r[2] for r in self._ranges]

    @property
    def shard_count(self) -> int:
        return len(self._ranges)

    def shard_for(self, key: str) -> int:
        ranges = self._ranges
        if len(ranges) == 1:
            return ranges[0][2]
        if not self._router_ok:
            raise MetadataError("oxia: the namespace uses a shard key router this client does not know")
        h = shard_hash(key)
        i = bisect.bisect_right(self._range_mins, h) - 1
        if i >= 0:
            lo, hi, shard = ranges[i]
            if lo <= h <= hi:
                return shard
        raise MetadataError(f"oxia: no shard for hash {h}")

    def leader_conn(self, shard: int) -> Conn:
        leader = self._leaders.get(shard)
        if not leader:
            raise retries.StreamBroken(f"oxia: shard {shard} has no leader")
        return self._conn(leader)

    def open_leader_conn(self, shard: int) -> Conn | None:
        """The channel to the shard's leader if it is open already (also while closing), else None."""
        return self._conns.get(self._leaders.get(shard) or "")

    def _conn(self, address: str) -> Conn:
        if self.closed:
            raise retries.Closed("oxia: store closed")
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = Conn(address)
        return conn

    # -- assignments -----------------------------------------------------------------------------------------

    async def _assignments_loop(self) -> None:
        # Imported here: the PyPI package's message classes are only needed for this rarely used message.
        from oxia.internal.proto.io.streamnative.oxia import proto as pb

        backoff = retries.Backoff(0.1, 2.0)
        request = bytes(pb.ShardAssignmentsRequest(namespace=self.namespace))
        attempt = 0
        while not self.closed:
            # The service address first; when it fails, the known leaders too (any server streams them all).
            candidates = [self.address] + sorted(set(self._leaders.values()) - {self.address, ""})
            address = candidates[attempt % len(candidates)]
            attempt += 1
            try:
                call = self._conn(address).assignments(request)
                async for raw in call:
                    assignments = pb.ShardAssignments.parse(raw)
                    nsa = assignments.namespaces.get(self.namespace)
                    if nsa is None:
                        continue
                    self._apply_assignments(nsa, pb)
                    backoff.reset()
                    attempt = 0
                raise retries.StreamBroken("oxia: shard assignment stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                if not self._assigned.done() and "namespace not found" in retries.details(e).lower():
                    self._assigned.set_exception(MetadataError(f"oxia: namespace {self.namespace!r} not found"))
                    return
                log.info("oxia: shard assignment stream from %s failed, reconnecting: %s", address, retries.details(e))
            await asyncio.sleep(backoff.next())

    def _apply_assignments(self, nsa: Any, pb: Any) -> None:
        ranges = []
        leaders = {}
        for a in nsa.assignments:
            r = a.int32_hash_range
            lo, hi = (r.min_hash_inclusive, r.max_hash_inclusive) if r is not None else (0, 0xFFFFFFFF)
            ranges.append((lo, hi, a.shard))
            leaders[a.shard] = a.leader
        ranges.sort()
        if not ranges:
            return
        self._router_ok = len(ranges) == 1 or nsa.shard_key_router == pb.ShardKeyRouter.XXHASH3
        changed = {s for s, leader in leaders.items() if self._leaders.get(s) != leader}
        self._ranges = ranges
        self._range_mins = [r[0] for r in ranges]
        self._leaders = leaders
        if changed and self._assigned.done():
            log.info("oxia: new leaders for shards %s", sorted(changed))
        if not self._assigned.done():
            self._assigned.set_result(None)
