"""Write batching: the puts, deletes and delete_ranges of one shard, coalesced into WriteRequests.

Per shard, a writer queues the writes and sends what has gathered as one WriteRequest on a WriteStream to the
shard's leader (the server applies a request as one unit, conditions per operation, and answers requests in order;
a few requests may be in flight on the stream). Writes queued in order are applied in order.

When a stream breaks, what was not sent yet is sent on the next stream. What was sent but not answered may or may
not have been applied: idempotent writes (unconditional put, unconditional delete, delete_range) are sent again;
a conditional write or a put_sequential fails with MetadataError rather than risk applying it twice (except on a
stream the leader refused before answering anything: "node is not leader" means it processed nothing). Writes
that wait longer than the operation timeout fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import grpc.aio

from dray_broker.metadata.base import MetadataError
from dray_broker.metadata.oxia import codec, retries
from dray_broker.metadata.oxia.routing import Router

log = logging.getLogger("dray.metadata.oxia")

# The kinds of writes, in the order a WriteRequest carries them.
PUT, DELETE, DELETE_RANGE = 0, 1, 2


class Writes:
    """The writers of every shard of one store, created on first use."""

    def __init__(
        self,
        router: Router,
        *,
        rpc_timeout: float,
        op_timeout: float,
        max_batch_ops: int,
        max_batch_bytes: int,
        max_inflight: int,
    ) -> None:
        self.router = router
        self.rpc_timeout = rpc_timeout
        self.op_timeout = op_timeout
        self.max_batch_ops = max_batch_ops
        self.max_batch_bytes = max_batch_bytes
        self.max_inflight = max_inflight
        self._loop = asyncio.get_running_loop()
        self._writers: dict[int, ShardWriter] = {}

    def submit(self, shard: int, kind: int, payload: bytes, idempotent: bool) -> asyncio.Future:
        """Queue a write (an encoded PutRequest, DeleteRequest or DeleteRangeRequest) on its shard's writer now;
        the future gets its decoded response, or MetadataError."""
        self.router.check_open()
        writer = self._writers.get(shard) or self.writer(shard)
        fut = self._loop.create_future()
        writer.submit(_WriteOp(kind, payload, fut, idempotent, self._loop.time() + self.op_timeout))
        return fut

    def writer(self, shard: int) -> ShardWriter:
        writer = self._writers.get(shard)
        if writer is None:
            writer = self._writers[shard] = ShardWriter(self, shard)
        return writer

    @property
    def writers(self) -> list[ShardWriter]:
        return list(self._writers.values())

    async def close(self) -> None:
        for w in list(self._writers.values()):
            await w.close()
        self._writers.clear()


class _WriteOp:
    __slots__ = ("kind", "payload", "future", "idempotent", "deadline")

    def __init__(self, kind: int, payload: bytes, future: asyncio.Future, idempotent: bool, deadline: float):
        self.kind = kind
        self.payload = payload
        self.future = future
        self.idempotent = idempotent
        self.deadline = deadline


class _WriteBatch:
    __slots__ = ("ops", "request", "timer")

    def __init__(self, ops: list[_WriteOp], request: bytes) -> None:
        self.ops = ops  # puts, then deletes, then delete ranges: the order of the request and its response
        self.request = request
        self.timer: asyncio.TimerHandle | None = None


class _WriteStream:
    """One WriteStream call to a shard leader; responses match requests in order."""

    def __init__(self, writer: "ShardWriter", call: Any) -> None:
        self.writer = writer
        self.call = call
        self.pending: deque[_WriteBatch] = deque()
        self.failed = False
        self.answered = 0
        self.reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def send(self, batch: _WriteBatch) -> None:
        self.pending.append(batch)
        batch.timer = asyncio.get_running_loop().call_later(
            self.writer.writes.rpc_timeout, self._timed_out, batch
        )
        try:
            await self.call.write(batch.request)
        except asyncio.CancelledError:
            self.fail(retries.Closed("oxia: store closed"))
            raise
        except Exception as e:  # noqa: BLE001
            # A write that fails was not handed to the transport: the server cannot have this batch.
            if self.pending and self.pending[-1] is batch:
                self.pending.pop()
                if batch.timer is not None:
                    batch.timer.cancel()
                self.writer.unsent(batch)
            # The reader sees the call's real status (e.g. "not leader"): let it report first.
            try:
                await asyncio.wait_for(asyncio.shield(self.reader), 1.0)
            except BaseException:  # noqa: BLE001
                pass
            self.fail(e)

    def _timed_out(self, batch: _WriteBatch) -> None:
        if batch in self.pending:
            self.fail(asyncio.TimeoutError(f"oxia: no write response in {self.writer.writes.rpc_timeout} s"))

    async def _read_loop(self) -> None:
        try:
            while True:
                raw = await self.call.read()
                if raw is grpc.aio.EOF:
                    raise retries.StreamBroken("oxia: write stream ended")
                if not self.pending:
                    raise retries.StreamBroken("oxia: write response without a request")
                batch = self.pending.popleft()
                self.answered += 1
                if batch.timer is not None:
                    batch.timer.cancel()
                self.writer.complete(batch, raw)
        except asyncio.CancelledError:
            self.fail(retries.Closed("oxia: store closed"))
        except Exception as e:  # noqa: BLE001
            self.fail(e)

    def fail(self, exc: BaseException) -> None:
        if self.failed:
            return
        self.failed = True
        self.call.cancel()
        pending = list(self.pending)
        self.pending.clear()
        for b in pending:
            if b.timer is not None:
                b.timer.cancel()
        # A leader that refuses the stream does so before reading any request.
        never_applied = self.answered == 0 and retries.is_not_leader(exc)
        self.writer.stream_failed(self, pending, exc, never_applied)


class ShardWriter:
    """Coalesces the writes of one shard into WriteRequests on a WriteStream."""

    def __init__(self, writes: Writes, shard: int) -> None:
        self.writes = writes
        self.shard = shard
        self.queue: deque[_WriteOp] = deque()
        self.wakeup = asyncio.Event()
        self.slot_free = asyncio.Event()
        self.inflight = 0
        self.stream: _WriteStream | None = None
        self.backoff = retries.Backoff()
        self.requests_sent = 0  # statistics: WriteRequests and the operations they carried
        self.ops_sent = 0
        self.last_error: BaseException | None = None
        self.retry_at = 0.0  # no new stream before this loop time (backoff after a failure)
        self.task = asyncio.get_running_loop().create_task(self._run())

    @property
    def connected(self) -> bool:
        """Whether a write stream is open (and has not failed)."""
        return self.stream is not None and not self.stream.failed

    def submit(self, op: _WriteOp) -> None:
        self.queue.append(op)
        self.wakeup.set()

    async def _open(self) -> _WriteStream:
        conn = self.writes.router.leader_conn(self.shard)
        call = conn.write_stream(
            metadata=(("namespace", self.writes.router.namespace), ("shard-id", str(self.shard))),
        )
        try:
            await asyncio.wait_for(call.wait_for_connection(), self.writes.rpc_timeout)
        except BaseException:
            call.cancel()
            raise
        return _WriteStream(self, call)

    def _expire(self, exc: BaseException | None) -> None:
        now = asyncio.get_running_loop().time()
        keep: deque[_WriteOp] = deque()
        for op in self.queue:
            if op.future.done():
                continue
            if now >= op.deadline:
                op.future.set_exception(
                    MetadataError(f"oxia: shard {self.shard} unavailable: {retries.details(exc) if exc else 'timeout'}")
                )
            else:
                keep.append(op)
        self.queue = keep

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a bug: fail what waits rather than hang it
                log.exception("oxia: the writer of shard %d failed", self.shard)
                self._fail_queue(MetadataError(f"oxia: internal error in the writer: {e!r}"))
                await asyncio.sleep(0.1)

    async def _step(self) -> None:
        await self.wakeup.wait()
        self._expire(self.last_error)
        if not self.queue:
            self.wakeup.clear()
            return
        stream = self.stream
        if stream is None or stream.failed:
            self.stream = None
            delay = self.retry_at - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                stream = self.stream = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self.last_error = e
                if not retries.is_transient(e) and not isinstance(e, MetadataError):
                    self._fail_queue(MetadataError(f"oxia: write to shard {self.shard} failed: {retries.details(e)}"))
                log.debug("oxia: opening the write stream of shard %d failed: %s", self.shard, retries.details(e))
                self.retry_at = asyncio.get_running_loop().time() + self.backoff.next()
                return
        while self.inflight >= self.writes.max_inflight and not stream.failed:
            self.slot_free.clear()
            await self.slot_free.wait()
        if stream.failed:
            return
        batch = self._take()
        if batch is None:
            return
        self.inflight += 1
        self.requests_sent += 1
        self.ops_sent += len(batch.ops)
        await stream.send(batch)

    def _take(self) -> _WriteBatch | None:
        puts: list[_WriteOp] = []
        deletes: list[_WriteOp] = []
        ranges: list[_WriteOp] = []
        size = 0
        n = 0
        q = self.queue
        max_ops = self.writes.max_batch_ops
        max_bytes = self.writes.max_batch_bytes
        while q and n < max_ops and size < max_bytes:
            op = q.popleft()
            if op.future.done():  # cancelled by its caller before it was sent
                continue
            (puts, deletes, ranges)[op.kind].append(op)
            size += len(op.payload) + 4
            n += 1
        if not n:
            return None
        request = codec.encode_write_request(
            self.shard, [o.payload for o in puts], [o.payload for o in deletes], [o.payload for o in ranges]
        )
        return _WriteBatch(puts + deletes + ranges, request)

    def _release(self) -> None:
        self.inflight -= 1
        self.slot_free.set()

    def complete(self, batch: _WriteBatch, raw: bytes) -> None:
        self._release()
        self.backoff.reset()
        try:
            puts, deletes, ranges = codec.decode_write_response(raw)
            results = puts + deletes + ranges
            if len(results) != len(batch.ops):
                raise MetadataError(f"oxia: write response has {len(results)} results for {len(batch.ops)} ops")
        except Exception as e:  # noqa: BLE001
            for op in batch.ops:
                if not op.future.done():
                    op.future.set_exception(MetadataError(f"oxia: bad write response: {e}"))
            return
        for op, res in zip(batch.ops, results):
            if not op.future.done():
                op.future.set_result(res)

    def unsent(self, batch: _WriteBatch) -> None:
        self._release()
        self.queue.extendleft(reversed([op for op in batch.ops if not op.future.done()]))
        self.wakeup.set()

    def stream_failed(
        self, stream: _WriteStream, pending: list[_WriteBatch], exc: BaseException, never_applied: bool
    ) -> None:
        if self.stream is stream:
            self.stream = None
        self.inflight -= len(pending)
        self.slot_free.set()
        if isinstance(exc, retries.Closed):
            for b in pending:
                for op in b.ops:
                    if not op.future.done():
                        op.future.set_exception(exc)
            return
        log.info("oxia: write stream of shard %d failed: %s", self.shard, retries.details(exc))
        self.last_error = exc
        self.retry_at = asyncio.get_running_loop().time() + self.backoff.next()
        transient = retries.is_transient(exc)
        retry: list[_WriteOp] = []
        for b in pending:
            for op in b.ops:
                if op.future.done():
                    continue
                if transient and (never_applied or op.idempotent):
                    retry.append(op)
                elif never_applied and not transient:
                    op.future.set_exception(MetadataError(f"oxia: write failed: {retries.details(exc)}"))
                else:
                    op.future.set_exception(
                        MetadataError(f"oxia: the write may or may not have been applied: {retries.details(exc)}")
                    )
        if retry:
            self.queue.extendleft(reversed(retry))
        self.wakeup.set()

    def _fail_queue(self, exc: BaseException) -> None:
        while self.queue:
            op = self.queue.popleft()
            if not op.future.done():
                op.future.set_exception(exc)

    async def close(self) -> None:
        self.task.cancel()
        stream = self.stream
        if stream is not None:
            stream.reader.cancel()
            stream.fail(retries.Closed("oxia: store closed"))
        self._fail_queue(retries.Closed("oxia: store closed"))
        await asyncio.gather(self.task, *([stream.reader] if stream else []), return_exceptions=True)
