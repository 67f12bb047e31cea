"""The connection's memory and lifecycle (server/connection.py, server/request_budget.py), over real sockets to
connections served in this process: a length prefix allocates nothing, buffers grow as bytes arrive and are given
back, frames wait for the request budget (back-pressure), a stalled frame closes its connection, and a connection
that goes away has its pending answers awaited, never left behind. The broker-level checks (RSS, real clients) are
in tests/integration/test_memory.py."""

from __future__ import annotations

import asyncio
import gc
import struct
import warnings

import pytest

from dray_broker.server.connection import BASE_BUFFER, GROW_STEP, Connection, FrameAnswer
from dray_broker.server.handling import Deferred
from dray_broker.server.request_budget import RequestBudget

MiB = 1024 * 1024
TIMEOUT = 10


class Served:
    """Connections served in this process. A frame is [int32 size][int32 id][padding]; each is answered with its id
    (size-prefixed), at once, or, with hold=True, when the test resolves held[id] (as a produce waits for its
    flush)."""

    def __init__(self, budget_bytes: int, *, hold: bool = False, stalled_sweeps: int = 3):
        self.budget = RequestBudget(budget_bytes)
        self.hold = hold
        self.stalled_sweeps = stalled_sweeps
        self.connections: list[Connection] = []
        self.handled: list[int] = []
        self.answered: list[int] = []  # ids whose (held) answer was computed, sent or not
        self.held: dict[int, asyncio.Future] = {}

    async def __aenter__(self) -> "Served":
        self.server = await asyncio.get_running_loop().create_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for c in self.connections:
            c.close("test over")
        for f in self.held.values():
            if not f.done():
                f.set_result(None)

    def _connection(self) -> Connection:
        conn = Connection(self._handle, 200 * MiB, lambda c: None, self.budget, stalled_sweeps=self.stalled_sweeps)
        self.connections.append(conn)
        return conn

    async def _handle(self, frame: bytes, conn: Connection) -> FrameAnswer:
        (ident,) = struct.unpack_from(">i", frame)
        self.handled.append(ident)
        answer = [struct.pack(">ii", 4, ident)]
        if not self.hold:
            return answer
        held = self.held[ident] = asyncio.get_running_loop().create_future()

        async def later():
            await held  # an error here is taken by the connection, as a failed produce's would be
            self.answered.append(ident)
            return answer

        return Deferred(later())

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


def frame(ident: int, size: int) -> bytes:
    return struct.pack(">ii", size, ident) + bytes(size - 4)


async def wait_for(condition, what: str):
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.005)


async def answers(reader: asyncio.StreamReader, n: int) -> list[int]:
    out = []
    for _ in range(n):
        size, ident = struct.unpack(">ii", await asyncio.wait_for(reader.readexactly(8), TIMEOUT))
        assert size == 4
        out.append(ident)
    return out


async def test_a_length_prefix_allocates_nothing_until_bytes_arrive():
    async with Served(256 * MiB) as served:
        reader, writer = await served.connect()
        writer.write(struct.pack(">ii", 100 * MiB, 1))  # a 100 MiB frame is announced; 4 bytes of it come
        await wait_for(lambda: served.budget.used == 100 * MiB, "the frame to be reserved")
        conn = served.connections[0]
        assert conn.receive_buffer_bytes <= BASE_BUFFER
        sent = 8
        for _ in range(3):  # its bytes arrive: the buffer grows with them, never more than a step ahead
            writer.write(bytes(3 * MiB))
            sent += 3 * MiB
            await writer.drain()
            await wait_for(lambda: conn.receive_buffer_bytes >= sent, "the bytes to be read")
            assert conn.receive_buffer_bytes <= sent + max(GROW_STEP, sent)
        writer.write(bytes(100 * MiB + 4 - sent))
        assert await answers(reader, 1) == [1]
        # Answered: the bytes are given back, and the buffer goes back to its base size.
        await wait_for(lambda: served.budget.used == 0, "the reservation to be given back")
        assert conn.receive_buffer_bytes <= BASE_BUFFER
        writer.close()


async def test_an_idle_connection_gives_its_buffer_back():
    async with Served(256 * MiB) as served:
        reader, writer = await served.connect()
        writer.write(frame(1, 100))
        assert await answers(reader, 1) == [1]
        conn = served.connections[0]
        assert 0 < conn.receive_buffer_bytes <= BASE_BUFFER
        conn.sweep()  # bytes came since the last sweep: kept
        assert conn.receive_buffer_bytes > 0
        conn.sweep()  # idle for a whole sweep: given back
        assert conn.receive_buffer_bytes == 0
        writer.write(frame(2, 100))  # and made again when bytes come
        assert await answers(reader, 1) == [2]
        writer.close()


async def test_pipelined_large_frames_reuse_one_buffer():
    async with Served(256 * MiB) as served:
        reader, writer = await served.connect()
        writer.write(b"".join(frame(i, MiB) for i in range(20)))
        assert await answers(reader, 20) == list(range(20))
        assert served.budget.used == 0
        writer.close()


async def test_frames_wait_for_the_budget_and_go_in_turn():
    """Two 600 KiB requests do not fit in a 1 MiB budget at once: the second connection stops reading (its frame is
    not handled, not even read) until the first request is answered."""
    async with Served(MiB, hold=True) as served:
        reader_a, writer_a = await served.connect()
        writer_a.write(frame(1, 600 * 1024))
        await wait_for(lambda: served.handled == [1], "the first request")
        reader_b, writer_b = await served.connect()
        writer_b.write(frame(2, 600 * 1024) + frame(3, 100))
        await wait_for(lambda: served.budget.waiting == 1, "the second connection to wait")
        await asyncio.sleep(0.05)
        assert served.handled == [1] and served.budget.used == 600 * 1024
        served.held[1].set_result(None)
        assert await answers(reader_a, 1) == [1]
        await wait_for(lambda: served.handled == [1, 2, 3], "the waiting requests")
        assert served.budget.waiting == 0
        served.held[2].set_result(None)
        served.held[3].set_result(None)
        assert await answers(reader_b, 2) == [2, 3]
        await wait_for(lambda: served.budget.used == 0, "every reservation to be given back")
        writer_a.close()
        writer_b.close()


async def test_a_frame_larger_than_the_budget_passes_alone():
    async with Served(MiB) as served:
        reader, writer = await served.connect()
        writer.write(frame(1, 3 * MiB) + frame(2, 3 * MiB))
        assert await answers(reader, 2) == [1, 2]
        assert served.budget.used == 0
        writer.close()


async def test_a_stalled_frame_closes_its_connection():
    async with Served(256 * MiB, stalled_sweeps=3) as served:
        reader, writer = await served.connect()
        writer.write(struct.pack(">ii", 50 * MiB, 1) + bytes(1000))
        await wait_for(lambda: served.budget.used == 50 * MiB, "the frame to be reserved")
        conn = served.connections[0]
        conn.sweep()  # bytes came since the last sweep
        conn.sweep()
        conn.sweep()
        assert not reader.at_eof()
        conn.sweep()  # three sweeps without a byte of the frame
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        await wait_for(lambda: served.budget.used == 0, "the reservation to be given back")
        writer.close()


async def test_a_closed_connection_awaits_its_pending_answers():
    """A client pipelines 30 requests whose answers wait (as produces wait for their flush) and goes away: every
    pending answer is still awaited, errors included, and nothing is left behind: no coroutine never awaited, no
    future whose exception nobody read, no bytes kept in the budget."""
    problems = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: problems.append(context["message"]))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with Served(256 * MiB, hold=True) as served:
                reader, writer = await served.connect()
                writer.write(b"".join(frame(i, 1000) for i in range(30)))
                await wait_for(lambda: len(served.handled) == 30, "the requests to be handled")
                writer.transport.abort()
                await wait_for(lambda: served.connections[0].unanswered == 30, "the close to be seen")
                await asyncio.sleep(0.05)
                for i, f in served.held.items():
                    f.set_exception(RuntimeError("flush failed")) if i % 3 == 0 else f.set_result(None)
                await wait_for(lambda: served.connections[0].unanswered == 0, "every answer to be awaited")
                assert served.answered == [i for i in range(30) if i % 3]
                assert served.budget.used == 0
            gc.collect()
            await asyncio.sleep(0)
        assert not [w for w in caught if "never awaited" in str(w.message)]
        assert not [p for p in problems if "never retrieved" in p or "destroyed" in p], problems
    finally:
        loop.set_exception_handler(previous)


async def test_answers_wait_while_the_client_does_not_read():
    """Large answers to a client that does not read pause the writer (the transport's buffer stays bounded) and
    all arrive, in order, once it reads."""
    big = 512 * 1024

    async def handle(frame: bytes, conn):
        (ident,) = struct.unpack_from(">i", frame)
        return [struct.pack(">ii", 4 + big, ident), bytes(big)]

    budget = RequestBudget(256 * MiB)
    conns: list[Connection] = []

    def make():
        conns.append(Connection(handle, MiB, lambda c: None, budget))
        return conns[-1]

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1],
                                                       limit=2 * big)
        writer.transport.pause_reading()
        writer.write(b"".join(frame(i, 100) for i in range(40)))  # 20 MiB of answers
        await wait_for(lambda: conns and conns[0].unanswered > 0, "the requests")
        await asyncio.sleep(0.2)
        transport = conns[0]._transport
        assert conns[0].unanswered > 20  # the writer stopped
        assert transport.get_write_buffer_size() <= 4 * big
        writer.transport.resume_reading()
        for i in range(40):
            size, ident = struct.unpack(">ii", await asyncio.wait_for(reader.readexactly(8), TIMEOUT))
            assert (size, ident) == (4 + big, i)
            await reader.readexactly(big)
        writer.close()
    finally:
        server.close()


@pytest.mark.parametrize("limit, sizes", [(10, [4, 4, 4]), (10, [20])])
def test_budget_reserves_while_it_fits_or_is_empty(limit, sizes):
    budget = RequestBudget(limit)
    got = [budget.try_reserve(n) for n in sizes]
    assert got[0] and budget.used == sum(n for n, ok in zip(sizes, got) if ok)
    if sizes == [4, 4, 4]:
        assert got == [True, True, False]
        woken = []
        budget.wait(lambda: woken.append(1) or budget.try_reserve(4))
        budget.release(4)
        assert woken == [1] and budget.used == 8 and budget.waiting == 0


async def test_a_last_answer_is_written_then_the_connection_closes():
    """A LastAnswer (a failed SASL login's) goes out whole, then the connection closes: the requests pipelined after
    it are not handled."""
    from dray_broker.server.connection import LastAnswer

    class LastAtTwo(Served):
        async def _handle(self, frame: bytes, conn: Connection) -> FrameAnswer:
            answer = await super()._handle(frame, conn)
            (ident,) = struct.unpack_from(">i", frame)
            return LastAnswer(answer, "login failed") if ident == 2 else answer  # type: ignore[arg-type]

    async with LastAtTwo(64 * MiB) as served:
        reader, writer = await served.connect()
        writer.write(b"".join(frame(i, 16) for i in range(1, 6)))
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            received = await reader.read()  # to EOF: the broker closed
        assert received == struct.pack(">ii", 4, 1) + struct.pack(">ii", 4, 2)
        assert served.handled == [1, 2]
        await wait_for(lambda: served.budget.used == 0, "the dropped frames' bytes given back")
        writer.close()
