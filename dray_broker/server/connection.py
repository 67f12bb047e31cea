"""One client connection: frames in, responses out in request order.

Requests are handled one after another, as Kafka does, but a handler may return an awaitable (a produce that
waits for its WAL flush): the connection then reads and handles the next request while that one waits, and the
writer sends responses strictly in request order. Malformed frames close this connection only.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from typing import Any, Awaitable, Callable

from dray_broker.protocol.codec import MalformedRequestError

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")

# A handler's answer: response chunks, an awaitable of them, or NO_RESPONSE (acks=0 produce).
NO_RESPONSE = object()
FrameHandler = Callable[[bytes, "Connection"], Awaitable[Any]]

# Pause reading while this many requests wait for their responses.
MAX_IN_FLIGHT = 64
INITIAL_BUFFER = 1 << 20


class Connection(asyncio.BufferedProtocol):
    def __init__(self, handle_frame: FrameHandler, max_frame_bytes: int, on_close: Callable[["Connection"], None]):
        self._handle_frame = handle_frame
        self._max_frame = max_frame_bytes
        self._on_close = on_close
        # The socket reads straight into this buffer; each whole frame is copied out once, as bytes (kio wants
        # bytes), and the unread tail is moved to the front.
        self._buffer = bytearray(INITIAL_BUFFER)
        self._view = memoryview(self._buffer)
        self._filled = 0
        self._frames: deque[bytes] = deque()
        self._frame_ready = asyncio.Event()
        self._responses: asyncio.Queue = asyncio.Queue()
        self._transport: asyncio.Transport | None = None
        self._tasks: list[asyncio.Task] = []
        self._paused = False
        self._closing = False
        self.peer = "?"
        self.host = ""
        self.client_id: str | None = None
        self._unanswered = 0  # requests read whose response is not written yet
        self._answered = asyncio.Event()

    # --- asyncio.BufferedProtocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.host = f"/{peer[0]}" if peer else ""
        self._tasks = [
            asyncio.create_task(self._process(), name=f"conn-process-{self.peer}"),
            asyncio.create_task(self._write(), name=f"conn-write-{self.peer}"),
        ]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filled == len(self._buffer):
            self._grow(len(self._buffer) * 2)
        return self._view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        view = self._view
        pos = 0
        filled = self._filled
        while filled - pos >= 4:
            (size,) = _SIZE.unpack_from(view, pos)
            if size < 0 or size > self._max_frame:
                self.close(f"frame of {size} bytes is outside 0..{self._max_frame}")
                return
            if filled - pos - 4 < size:
                if 4 + size > len(self._buffer):
                    self._grow(4 + size, keep_from=pos)
                    filled = self._filled
                    view = self._view
                    pos = 0
                break
            self._frames.append(bytes(view[pos + 4 : pos + 4 + size]))
            self._unanswered += 1
            pos += 4 + size
        if pos:
            rest = filled - pos
            view[:rest] = view[pos:filled]
            self._filled = rest
            self._frame_ready.set()
            if len(self._frames) + self._responses.qsize() > MAX_IN_FLIGHT and not self._paused:
                self._paused = True
                self._transport.pause_reading()

    def _grow(self, size: int, keep_from: int = 0) -> None:
        """A larger buffer holding the unread bytes from keep_from at its start."""
        rest = self._filled - keep_from
        bigger = bytearray(max(size, INITIAL_BUFFER))
        bigger[:rest] = self._view[keep_from : self._filled]
        self._view.release()
        self._buffer = bigger
        self._view = memoryview(bigger)
        self._filled = rest

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        self._on_close(self)

    # --- processing -------------------------------------------------------------------------------------------

    async def _process(self) -> None:
        try:
            while True:
                if not self._frames:
                    self._frame_ready.clear()
                    await self._frame_ready.wait()
                    continue
                frame = self._frames.popleft()
                try:
                    result = await self._handle_frame(frame, self)
                except MalformedRequestError as e:
                    self.close(str(e))
                    return
                if result is NO_RESPONSE:
                    self._done_one()
                else:
                    await self._responses.put(result)
                self._maybe_resume()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection %s failed", self.peer)
            self.close("internal error")

    async def _write(self) -> None:
        try:
            while True:
                result = await self._responses.get()
                if not isinstance(result, list):
                    result = await result
                if result is None:  # the handler decided the connection must close
                    self.close("request refused")
                    return
                self._transport.writelines(result)
                self._done_one()
                self._maybe_resume()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection %s failed while answering", self.peer)
            self.close("internal error")

    def _maybe_resume(self) -> None:
        if self._paused and len(self._frames) + self._responses.qsize() <= MAX_IN_FLIGHT // 2:
            self._paused = False
            self._transport.resume_reading()

    def _done_one(self) -> None:
        self._unanswered -= 1
        if self._unanswered == 0:
            self._answered.set()

    @property
    def unanswered(self) -> int:
        return self._unanswered

    async def drain(self) -> None:
        """Stop reading requests and wait until every request read so far is answered."""
        if self._transport is not None and not self._closing:
            self._transport.pause_reading()
            self._paused = True
        while self._unanswered > 0 and not self._closing:
            self._answered.clear()
            await self._answered.wait()

    def close(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        log.warning("closing connection from %s (client %s): %s", self.peer, self.client_id, reason)
        if self._transport is not None:
            self._transport.close()
