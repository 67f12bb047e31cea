"""One client connection: frames in, responses out in request order.

Requests are handled one after another, as Kafka does, but the frame handler may defer an answer (Deferred: a
produce that waits for its WAL flush): the connection then reads and handles the next request while that one
waits, and the writer sends responses strictly in request order. Malformed frames close this connection only.

Memory. The socket reads into a receive buffer of BASE_BUFFER bytes, made when bytes come and dropped when the
connection has been idle for a sweep (the broker calls sweep() about once a second): an idle connection holds no
buffer. Each frame's size is reserved in the broker's RequestBudget when its length prefix is read, and given back
when the request is answered; a frame that does not fit stops this connection's reading until it does
(back-pressure, not allocation). A reserved frame larger than the buffer grows it as its bytes arrive (in steps of
at most GROW_STEP or of what already came); once the frame is taken out, the buffer goes back to its base size
unless the next reserved frame needs it (pipelined large requests reuse one buffer). Reading also pauses while
MAX_IN_FLIGHT requests wait for their answers, and answers wait while the transport's write buffer is full.

A connection that goes away lets the requests it already handles finish: what they did stays done (a produce that
was committed stays committed), their answers are awaited and dropped, never left pending.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from typing import Awaitable, Callable, TypeAlias, cast

from dray_broker.auth.principal import ANONYMOUS, KafkaPrincipal
from dray_broker.auth.sasl import SaslConnection
from dray_broker.protocol.codec import MalformedRequestError
from dray_broker.server.handling import Deferred, NoResponse
from dray_broker.server.listeners import PLAINTEXT_LISTENER, Listener
from dray_broker.server.request_budget import RequestBudget

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")



class LastAnswer:
    """A response after which the connection closes (a failed SASL login): the requests read after it are dropped."""

    __slots__ = ("chunks", "reason")

    def __init__(self, chunks: list[bytes], reason: str):
        self.chunks = chunks
        self.reason = reason


# What is written for a request: its response frame (chunks), its last response (LastAnswer), nothing (NO_RESPONSE),
# or None: close the connection.
Written: TypeAlias = list[bytes] | LastAnswer | NoResponse | None
# What the frame handler gives for a frame: that now, or later (Deferred: the writer awaits it, in request order,
# while the next frames are handled).
FrameAnswer: TypeAlias = Written | Deferred[Written]
FrameHandler = Callable[[bytes, "Connection"], Awaitable[FrameAnswer]]


class _End:
    """The writer's last item."""


_END = _End()

# Pause reading while this many requests wait for their responses.
MAX_IN_FLIGHT = 64
BASE_BUFFER = 16 * 1024
GROW_STEP = 1024 * 1024
# Sweeps in a row during which a reserved frame may get no byte (while this connection reads) before the
# connection is closed: a client that announces a frame and stops would hold its reservation for ever.
STALLED_SWEEPS = 30


class Connection(asyncio.BufferedProtocol):
    # Slots and waiter futures made only when a task waits: thousands of idle connections stay small.
    __slots__ = ("_handle_frame", "_max_frame", "_on_open", "_on_close", "_budget", "_stalled_sweeps", "_buffer",
                 "_view", "_filled", "_frame_size", "_frames", "_responses", "_transport", "_tasks", "_paused",
                 "_waiting_for_budget", "_too_many_in_flight", "_draining", "_write_paused", "_closing", "_lost",
                 "_received", "_stalled", "_unanswered", "_frames_waiter", "_responses_waiter",
                 "_writable_waiter", "_answered_waiter", "peer", "host", "client_id", "listener", "principal",
                 "_identify", "sasl", "_ending")

    def __init__(self, handle_frame: FrameHandler, max_frame_bytes: int, on_close: Callable[["Connection"], None],
                 budget: RequestBudget, *, listener: Listener = PLAINTEXT_LISTENER,
                 identify: Callable[[asyncio.BaseTransport], KafkaPrincipal] | None = None,
                 on_open: Callable[["Connection"], None] | None = None, stalled_sweeps: int = STALLED_SWEEPS):
        """on_open and on_close: called when the connection is made and when it is lost. A TLS connection is made
        once its handshake is done; one whose handshake fails is never made (nor lost). identify: the principal
        of a client from its transport once connected (a TLS client certificate's subject); ValueError refuses the
        client."""
        self._handle_frame = handle_frame
        self._max_frame = max_frame_bytes
        self._on_open = on_open
        self._on_close = on_close
        self._budget = budget
        self._stalled_sweeps = stalled_sweeps
        # The socket reads into _buffer; each whole frame is copied out once, as bytes (kio wants bytes), and the
        # unread tail is moved to the front.
        self._buffer = bytearray()
        self._view = memoryview(self._buffer)
        self._filled = 0
        self._frame_size: int | None = None  # the frame at the buffer's start, once its size is reserved
        self._frames: deque[bytes] = deque()  # whole frames not handled yet; each holds len(frame) of the budget
        self._responses: deque[tuple[FrameAnswer | _End, int]] = deque()  # (answer, bytes its request holds)
        self._transport: asyncio.Transport | None = None
        self._tasks: list[asyncio.Task] = []
        self._paused = False
        self._waiting_for_budget = False
        self._too_many_in_flight = False
        self._draining = False
        self._write_paused = False  # the transport's write buffer is full
        self._closing = False  # no request is read or answered any more
        self._ending = False  # a LastAnswer is queued: no request is handled any more
        self._lost = False  # the transport is gone
        self._received = False  # bytes arrived since the last sweep
        self._stalled = 0  # sweeps in a row the reserved frame got no byte
        self._unanswered = 0  # requests read whose response is not written (or dropped) yet
        self._frames_waiter: asyncio.Future | None = None
        self._responses_waiter: asyncio.Future | None = None
        self._writable_waiter: asyncio.Future | None = None
        self._answered_waiter: asyncio.Future | None = None
        self.peer = "?"
        self.host = ""
        self.client_id: str | None = None
        self.listener = listener  # the listener the client connected on
        self.principal: KafkaPrincipal = ANONYMOUS  # who the client authenticated as (TLS certificate or SASL)
        self._identify = identify
        # The SASL state of a connection to a SASL listener (server/authentication.py attaches it), else None.
        self.sasl: SaslConnection | None = None

    @property
    def max_frame_bytes(self) -> int:
        return self._max_frame

    @max_frame_bytes.setter
    def max_frame_bytes(self, size: int) -> None:
        """Before a SASL login only small frames are accepted (Kafka's sasl.server.max.receive.size)."""
        self._max_frame = size

    # --- asyncio.BufferedProtocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream server's
        if self._on_open is not None:
            self._on_open(self)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.host = f"/{peer[0]}" if peer else ""
        self._tasks = [
            asyncio.create_task(self._process(), name=f"conn-process-{self.peer}"),
            asyncio.create_task(self._write(), name=f"conn-write-{self.peer}"),
        ]
        if self._identify is not None:
            try:
                self.principal = self._identify(transport)
            except ValueError as e:
                self.close(f"{self.listener.name} client refused: {e}")
                return
            log.debug("connection from %s on %s as %s", self.peer, self.listener.name, self.principal)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filled == len(self._buffer):
            self._resize(self._grown_size())
        return self._view[self._filled :]

    def _grown_size(self) -> int:
        size = len(self._buffer)
        if size < BASE_BUFFER:
            return BASE_BUFFER
        # A full buffer holds the start of a reserved frame larger than it: grow as the frame's bytes arrive, by
        # GROW_STEP or by doubling (never more than what already came), never past the frame.
        if self._frame_size is not None and 4 + self._frame_size > size:
            return min(4 + self._frame_size, size + max(GROW_STEP, size))
        return 2 * size

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        self._received = True
        self._split_frames()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._writable_waiter)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stop()
        while self._frames:  # read but not handled: nobody would read their answers
            self._finish(len(self._frames.popleft()))
        if self._frame_size is not None:
            self._budget.release(self._frame_size)
            self._frame_size = None
        self._filled = 0
        self._resize(0)
        self._on_close(self)

    # --- frames -----------------------------------------------------------------------------------------------

    def _split_frames(self) -> None:
        """Copy out the whole frames at the start of the buffer, reserving each frame's size when its prefix is
        read; stop at a frame that does not fit in the budget (reading pauses until it does)."""
        if self._closing:
            return
        view = self._view
        filled = self._filled
        pos = 0
        while filled - pos >= 4:
            size = self._frame_size
            if size is None:
                (size,) = _SIZE.unpack_from(view, pos)
                if size < 0 or size > self._max_frame:
                    self.close(f"frame of {size} bytes is outside 0..{self._max_frame}")
                    return
                if not self._budget.try_reserve(size):
                    if not self._waiting_for_budget:
                        self._waiting_for_budget = True
                        self._budget.wait(self._budget_freed)
                    break
                self._frame_size = size
            if filled - pos - 4 < size:
                break
            self._frames.append(bytes(view[pos + 4 : pos + 4 + size]))
            self._frame_size = None
            self._unanswered += 1
            pos += 4 + size
        if pos:
            rest = filled - pos
            view[:rest] = view[pos:filled]
            self._filled = rest
            _wake(self._frames_waiter)
            self._fit_buffer()
        self._update_reading()

    def _fit_buffer(self) -> None:
        """After frames were taken out: a buffer grown for a large frame is kept only for a reserved frame that will
        fill most of it (pipelined large requests reuse it); otherwise it goes back to what it holds."""
        size = len(self._buffer)
        if size <= BASE_BUFFER:
            return
        if self._frame_size is not None and 2 * (4 + self._frame_size) >= size:
            return
        target = max(BASE_BUFFER, self._filled)
        if target < size:
            self._resize(target)

    def _budget_freed(self) -> bool:
        """The budget gave bytes back: reserve the waiting frame (at the buffer's start) if it fits now."""
        if self._closing:
            self._waiting_for_budget = False
            return True
        (size,) = _SIZE.unpack_from(self._view, 0)
        if not self._budget.try_reserve(size):
            return False
        self._waiting_for_budget = False
        self._frame_size = size
        self._split_frames()
        return True

    def _resize(self, size: int) -> None:
        """A receive buffer of size bytes holding the unread bytes."""
        buffer = bytearray(size)
        buffer[: self._filled] = self._view[: self._filled]
        self._buffer = buffer
        self._view = memoryview(buffer)

    def sweep(self) -> None:
        """About once a second: give the buffer of a connection idle since the last sweep back; close the
        connection if a reserved frame has stopped arriving."""
        if self._lost:
            return
        received, self._received = self._received, False
        if self._frame_size is not None and not received and not self._paused:
            self._stalled += 1
            if self._stalled >= self._stalled_sweeps:
                self.close(f"a frame of {self._frame_size} bytes stopped arriving")
            return
        self._stalled = 0
        if not received and self._filled == 0 and len(self._buffer):
            self._resize(0)

    # --- processing -------------------------------------------------------------------------------------------

    async def _process(self) -> None:
        """Handle frames in order; every frame taken goes to the writer with its result (and its reservation)."""
        try:
            while not self._closing:
                if self._ending:
                    break  # the connection closes once its last answer is written: handle nothing more
                if self._frames:
                    # One call per frame: nothing of a request stays referenced here once it is handed on.
                    await self._handle(self._frames.popleft())
                else:
                    await self._wait("_frames_waiter")
        finally:
            self._answer(_END, 0)

    async def _handle(self, frame: bytes) -> None:
        result: FrameAnswer
        try:
            result = await self._handle_frame(frame, self)
        except MalformedRequestError as e:
            result = None
            self.close(str(e))
        except Exception:
            log.exception("connection %s failed", self.peer)
            result = None
            self.close("internal error")
        self._answer(result, len(frame))
        self._update_reading()

    def _answer(self, result: FrameAnswer | _End, reserved: int) -> None:
        if isinstance(result, LastAnswer):
            self._ending = True
        self._responses.append((result, reserved))
        _wake(self._responses_waiter)

    async def _write(self) -> None:
        """Answer in request order. Once the connection is closing, results are still awaited (so that produce
        outcomes and errors are taken), but not written."""
        while True:
            if not self._responses:
                await self._wait("_responses_waiter")
            elif not await self._write_one(*self._responses.popleft()):
                return

    async def _write_one(self, answer: FrameAnswer | _End, reserved: int) -> bool:
        """Write one answer (False at the end)."""
        if isinstance(answer, _End):
            return False
        written: Written
        if isinstance(answer, Deferred):
            try:
                written = await answer.answer
            except Exception:
                log.exception("connection %s failed while answering", self.peer)
                written = None
        else:
            written = answer
        if written is None:  # the handler decided the connection must close
            self.close("request refused")
        elif not isinstance(written, NoResponse) and not self._closing:
            while self._write_paused and not self._closing:
                await self._wait("_writable_waiter")
            chunks = written.chunks if isinstance(written, LastAnswer) else written
            if not self._closing and self._transport is not None:
                self._transport.writelines(chunks)
            if isinstance(written, LastAnswer):
                self.close(written.reason)  # the transport sends what it buffered, then closes
        self._finish(reserved)
        self._update_reading()
        return True

    async def _wait(self, waiter: str) -> None:
        """Sleep until _wake(self.<waiter>) (or the connection stops)."""
        future = asyncio.get_running_loop().create_future()
        setattr(self, waiter, future)
        try:
            await future
        finally:
            setattr(self, waiter, None)

    def _stop(self) -> None:
        """No more requests: wake every waiting task so that each sees it."""
        self._closing = True
        for waiter in (self._frames_waiter, self._responses_waiter, self._writable_waiter, self._answered_waiter):
            _wake(waiter)

    def _finish(self, reserved: int) -> None:
        """One request is answered (or dropped): its bytes go back to the budget."""
        self._unanswered -= 1
        if self._unanswered == 0:
            _wake(self._answered_waiter)
        self._budget.release(reserved)

    def _update_reading(self) -> None:
        if self._closing or self._transport is None:
            return
        in_flight = len(self._frames) + len(self._responses)
        if in_flight > MAX_IN_FLIGHT:
            self._too_many_in_flight = True
        elif in_flight <= MAX_IN_FLIGHT // 2:
            self._too_many_in_flight = False
        pause = self._waiting_for_budget or self._too_many_in_flight or self._draining
        if pause != self._paused:
            self._paused = pause
            if pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    @property
    def unanswered(self) -> int:
        return self._unanswered

    @property
    def receive_buffer_bytes(self) -> int:
        return len(self._buffer)

    async def drain(self) -> None:
        """Stop reading requests and wait until every request read so far is answered."""
        self._draining = True
        self._update_reading()
        while self._unanswered > 0 and not self._closing:
            await self._wait("_answered_waiter")

    def close(self, reason: str) -> None:
        if self._closing:
            return
        self._stop()
        log.warning("closing connection from %s (client %s): %s", self.peer, self.client_id, reason)
        if self._transport is not None:
            self._transport.close()


def _wake(waiter: asyncio.Future | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
