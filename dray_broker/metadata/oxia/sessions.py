"""Sessions: Oxia has one per shard; to callers they are one session, told by SessionLife.

A shard's session is created on the first ephemeral put to that shard and kept alive at timeout/3; ephemeral keys
die with it. When the server reports one gone, or no keepalive of one got through within the session timeout, the
generation ends: the other shards' sessions of it are closed too (their keys go now, not at their expiry), and
the next generation begins at once; its sessions are created on the next ephemeral puts.
"""

from __future__ import annotations

import asyncio
import logging

from dray_broker.metadata.base import SessionLife
from dray_broker.metadata.oxia import codec, retries
from dray_broker.metadata.oxia.routing import Router

log = logging.getLogger("dray.metadata.oxia")


class Session:
    """One shard's session, of one generation."""

    def __init__(self, shard: int, session_id: int, generation: int) -> None:
        self.shard = shard
        self.id = session_id
        self.generation = generation
        self.expired = False  # the server dropped it
        self.task: asyncio.Task | None = None  # its keepalive


class ShardSessions:
    """The sessions of the live generation, by shard, and the generations' life (`life`)."""

    def __init__(
        self,
        router: Router,
        life: SessionLife,
        *,
        timeout_ms: int,
        client_identity: str,
        rpc_timeout: float,
        op_timeout: float,
    ) -> None:
        self.router = router
        self.life = life
        self.timeout_ms = timeout_ms
        self.client_identity = client_identity
        self.rpc_timeout = rpc_timeout
        self.op_timeout = op_timeout
        self._sessions: dict[int, Session] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._closing: set[asyncio.Task] = set()

    @property
    def live(self) -> list[Session]:
        return list(self._sessions.values())

    async def for_shard(self, shard: int, generation: int | None) -> Session:
        """This shard's session in the live generation (which must be `generation` if given), created on first
        use. SessionExpiredError if that generation is over."""
        while True:
            live = self.life.require(generation)
            s = self._sessions.get(shard)
            if s is not None:
                return s
            lock = self._locks.setdefault(shard, asyncio.Lock())
            async with lock:
                if self._sessions.get(shard) is not None or self.life.generation != live:
                    continue
                request = codec.encode_create_session(shard, self.timeout_ms, self.client_identity)

                async def create() -> bytes:
                    return await self.router.leader_conn(shard).create_session(request, timeout=self.rpc_timeout)

                response = await retries.retrying(
                    "create session", create, timeout=self.op_timeout, check_open=self.router.check_open)
                s = Session(shard, codec.decode_create_session_response(response), live)
                self.router.check_open()
                if self.life.generation != live or not self.life.alive:  # ended while we asked
                    self._close_later(s)
                    continue
                s.task = asyncio.get_running_loop().create_task(self._keep_alive(s))
                self._sessions[shard] = s
                return s

    def dropped(self, s: Session, reason: str) -> None:
        """The server does not know session s any more: its generation is over."""
        s.expired = True
        self._end_generation(s.generation, reason)

    async def close(self) -> None:
        """Close the live sessions now (their ephemeral keys go now rather than at expiry), and wait for those
        being closed."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for s in sessions:
            if s.task is not None:
                s.task.cancel()
        await asyncio.gather(*(self._close_session(s) for s in sessions), *self._closing, return_exceptions=True)

    async def _keep_alive(self, s: Session) -> None:
        loop = asyncio.get_running_loop()
        interval = self.timeout_ms / 3000
        request = codec.encode_shard_session(s.shard, s.id)
        last_ok = loop.time()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.router.leader_conn(s.shard).keep_alive(request, timeout=interval)
                last_ok = loop.time()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                if retries.is_session_not_found(e):
                    self.dropped(s, f"Oxia dropped session {s.id} of shard {s.shard}")
                    return
                if loop.time() - last_ok > self.timeout_ms / 1000:
                    self._end_generation(s.generation, f"no keepalive of session {s.id} of shard {s.shard} got "
                                                       f"through within the session timeout ({retries.details(e)})")
                    return
                log.info("oxia: keep-alive of session %d on shard %d failed: %s", s.id, s.shard, retries.details(e))

    def _end_generation(self, generation: int, reason: str) -> None:
        """End the session generation: close every shard's session of it (their keys go now, not at their
        expiry) and begin the next generation, whose sessions are created on demand."""
        if not self.life.end(generation, reason):
            return
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for s in sessions:
            if s.task is not None and s.task is not asyncio.current_task():
                s.task.cancel()
            self._close_later(s)
        if not self.router.closed:
            self.life.begin()

    def _close_later(self, s: Session) -> None:
        task = asyncio.get_running_loop().create_task(self._close_session(s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_session(self, s: Session) -> None:
        if s.expired:
            return
        request = codec.encode_shard_session(s.shard, s.id)
        try:
            conn = self.router.open_leader_conn(s.shard)
            if conn is not None:
                await conn.close_session(request, timeout=min(5.0, self.rpc_timeout))
        except Exception as e:  # noqa: BLE001
            log.info("oxia: closing session %d on shard %d failed: %s", s.id, s.shard, retries.details(e))
