"""Reads of one shard: gets coalesced into Read calls; lists and range scans streamed.

Per shard, a reader queues the gets and sends what has gathered as one Read call to the shard's leader (a few
calls may be in flight). The server stops a Read call at the first get it cannot serve (a get that lands on one
of Oxia's own keys that is not a record): the gets of a failed call are then sent one by one, so that a bad get
fails only itself. Reads are idempotent: transient failures are retried with backoff until the operation
deadline.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections import deque

from dray_broker.metadata.base import Comparison, Entry, MetadataError
from dray_broker.metadata.oxia import codec, retries
from dray_broker.metadata.oxia.routing import Router

log = logging.getLogger("dray.metadata.oxia")


class Reads:
    """The readers of every shard of one store (created on first use), and lists and scans of one shard."""

    def __init__(
        self, router: Router, *, rpc_timeout: float, op_timeout: float, max_batch_ops: int, max_inflight: int
    ) -> None:
        self.router = router
        self.rpc_timeout = rpc_timeout
        self.op_timeout = op_timeout
        self.max_batch_ops = max_batch_ops
        self.max_inflight = max_inflight
        self._loop = asyncio.get_running_loop()
        self._readers: dict[int, ShardReader] = {}

    async def get(self, shard: int, key: str, comparison: Comparison) -> Entry | None:
        """One get sent to one shard as it is (it may return one of Oxia's own keys: see own_keys.find)."""
        self.router.check_open()
        reader = self._readers.get(shard) or self.reader(shard)
        fut = self._loop.create_future()
        payload = codec.encode_get(key, True, codec.COMPARISON_CODE[comparison])
        reader.submit(_ReadOp(payload, fut, self._loop.time() + self.op_timeout))
        status, version_id, session_id, value, found = await fut
        if status == codec.KEY_NOT_FOUND:
            return None
        if status != codec.OK:
            raise MetadataError(f"oxia: get {key!r} failed with status {status}")
        return Entry(found if found is not None else key, bytes(value), version_id, session_id is not None)

    async def list(self, shard: int, start: str, end: str) -> list[str]:
        async def once() -> list[str]:
            keys: list[str] = []
            request = codec.encode_range_request(shard, start, end)
            async for raw in self.router.leader_conn(shard).list(request, timeout=self.rpc_timeout):
                keys.extend(codec.decode_list_response(raw))
            return keys

        return await retries.retrying("list", once, timeout=self.op_timeout, check_open=self.router.check_open)

    async def range_scan(self, shard: int, start: str, end: str) -> builtins.list[Entry]:  # `list`: the method above
        async def once() -> list[Entry]:
            entries: list[Entry] = []
            request = codec.encode_range_request(shard, start, end)
            async for raw in self.router.leader_conn(shard).range_scan(request, timeout=self.rpc_timeout):
                for _status, version_id, session_id, value, key in codec.decode_get_responses(raw):
                    entries.append(Entry(key or "", bytes(value), version_id, session_id is not None))
            return entries

        return await retries.retrying("range scan", once, timeout=self.op_timeout, check_open=self.router.check_open)

    def reader(self, shard: int) -> ShardReader:
        reader = self._readers.get(shard)
        if reader is None:
            reader = self._readers[shard] = ShardReader(self, shard)
        return reader

    async def close(self) -> None:
        for r in list(self._readers.values()):
            await r.close()
        self._readers.clear()


class _ReadOp:
    __slots__ = ("payload", "future", "deadline", "alone")

    def __init__(self, payload: bytes, future: asyncio.Future, deadline: float) -> None:
        self.payload = payload
        self.future = future
        self.deadline = deadline
        self.alone = False  # its batch failed: send it by itself, so that one bad get fails only itself


class ShardReader:
    """Coalesces the gets of one shard into Read calls."""

    def __init__(self, reads: Reads, shard: int) -> None:
        self.reads = reads
        self.shard = shard
        self.queue: deque[_ReadOp] = deque()
        self.wakeup = asyncio.Event()
        self.slot_free = asyncio.Event()
        self.inflight = 0
        self.calls: set[asyncio.Task] = set()
        self.backoff = retries.Backoff()
        self.requests_sent = 0  # statistics: Read calls and the gets they carried
        self.ops_sent = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, op: _ReadOp) -> None:
        self.queue.append(op)
        self.wakeup.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a bug: fail what waits rather than hang it
                log.exception("oxia: the reader of shard %d failed", self.shard)
                while self.queue:
                    op = self.queue.popleft()
                    if not op.future.done():
                        op.future.set_exception(MetadataError(f"oxia: internal error in the reader: {e!r}"))
                await asyncio.sleep(0.1)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            if not self.queue:
                self.wakeup.clear()
                continue
            while self.inflight >= self.reads.max_inflight:
                self.slot_free.clear()
                await self.slot_free.wait()
            ops: list[_ReadOp] = []
            max_ops = self.reads.max_batch_ops
            while self.queue and len(ops) < max_ops:
                if self.queue[0].alone and ops:
                    break
                op = self.queue.popleft()
                if not op.future.done():
                    ops.append(op)
                    if op.alone:
                        break
            if not ops:
                continue
            self.inflight += 1
            self.requests_sent += 1
            self.ops_sent += len(ops)
            t = loop.create_task(self._call(ops))
            self.calls.add(t)
            t.add_done_callback(self.calls.discard)

    async def _call(self, ops: list[_ReadOp]) -> None:
        done = 0
        try:
            try:
                conn = self.reads.router.leader_conn(self.shard)
                request = codec.encode_read_request(self.shard, [o.payload for o in ops])
                call = conn.read(request, timeout=self.reads.rpc_timeout)
                async for raw in call:
                    for res in codec.decode_get_responses(raw):
                        op = ops[done]
                        done += 1
                        if not op.future.done():
                            op.future.set_result(res)
                if done < len(ops):
                    raise retries.StreamBroken(f"oxia: read returned {done} of {len(ops)} results")
                self.backoff.reset()
            finally:
                self.inflight -= 1
                self.slot_free.set()
        except asyncio.CancelledError:
            for op in ops[done:]:
                if not op.future.done():
                    op.future.set_exception(retries.Closed("oxia: store closed"))
            raise
        except Exception as e:  # noqa: BLE001
            rest = ops[done:]
            if not retries.is_transient(e):
                if len(rest) > 1 or (rest and not rest[0].alone):
                    # The server stops a Read call at the first get it cannot serve: find which one it was.
                    for op in rest:
                        op.alone = True
                    self.queue.extendleft(reversed(rest))
                    self.wakeup.set()
                    return
                for op in rest:
                    if not op.future.done():
                        op.future.set_exception(MetadataError(f"oxia: read failed: {retries.details(e)}"))
                return
            log.debug("oxia: read on shard %d failed, retrying: %s", self.shard, retries.details(e))
            await asyncio.sleep(self.backoff.next())
            now = asyncio.get_running_loop().time()
            for op in rest:
                if op.future.done():
                    continue
                if now >= op.deadline:
                    op.future.set_exception(MetadataError(f"oxia: read failed: {retries.details(e)}"))
                else:
                    self.queue.append(op)
            self.wakeup.set()

    async def close(self) -> None:
        self.task.cancel()
        for t in list(self.calls):
            t.cancel()
        while self.queue:
            op = self.queue.popleft()
            if not op.future.done():
                op.future.set_exception(retries.Closed("oxia: store closed"))
        await asyncio.gather(self.task, *self.calls, return_exceptions=True)
