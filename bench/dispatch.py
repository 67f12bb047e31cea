"""The dispatcher's own cost per produce request, in process and without I/O: a Produce v9 frame (2 partitions of 2 KB)
is decoded, routed to a handler that defers a pre-encoded answer, and the answer encoded, as server/dispatch.py does
for every request. CPU time of this process (time.process_time), so that other load on the machine counts less than
in the end-to-end figures of bench/produce_consume.py.

    .venv/bin/python bench/dispatch.py [--requests 20000] [--rounds 7] [--acls]

--acls: with the authorizer on (auth/enforce.py), the request's topic allowed by one of a few hundred ACLs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kio.index import load_request_schema  # noqa: E402
from kio.serial import entity_writer  # noqa: E402

from dray_broker.auth.acls import (  # noqa: E402
    AclBinding,
    Authorizer,
    Operation,
    PatternType,
    Permission,
    ResourceType,
)
from dray_broker.auth.enforce import Enforcer  # noqa: E402
from dray_broker.observability.metrics import BrokerMetrics  # noqa: E402
from dray_broker.protocol.codec import ChunkWriter, EncodedBody, Request, make  # noqa: E402
from dray_broker.server.connection import Connection  # noqa: E402
from dray_broker.server.dispatch import Dispatcher  # noqa: E402
from dray_broker.server.handling import (  # noqa: E402
    Deferred,
    HandlerResult,
    RequestContext,
    Response,
    RouteTable,
    deferred_route,
)
from dray_broker.server.request_budget import RequestBudget  # noqa: E402
from dray_broker.topics.catalog import TopicCatalog  # noqa: E402

ANSWER = EncodedBody(b"\x00" * 40, flexible_header=True)


def produce_frame() -> bytes:
    import kio.schema.produce.v9.request as M

    cls = load_request_schema(0, 9)
    header = cls.__header_schema__
    out = ChunkWriter()
    entity_writer(header)(out, header(request_api_key=0, request_api_version=9, correlation_id=1, client_id="bench"))
    entity_writer(cls)(out, make(M.ProduceRequest, transactional_id=None, acks=-1, timeout=30_000, topic_data=tuple(
        make(M.TopicProduceData, name="t", partition_data=(
            make(M.PartitionProduceData, index=p, records=b"x" * 2000),)) for p in range(2))))
    return b"".join(out)


class Nothing:
    """The service of the bench's handler."""


async def handle(_: Nothing, ctx: RequestContext, req: Request) -> HandlerResult:
    async def answer() -> Response:
        return Response(ANSWER)

    return Deferred(answer())


def enforcer() -> Enforcer:
    authorizer = Authorizer()
    authorizer.add(AclBinding(ResourceType.TOPIC, "t", PatternType.LITERAL, "User:ANONYMOUS", "*", Operation.WRITE,
                              Permission.ALLOW))
    for i in range(300):
        authorizer.add(AclBinding(ResourceType.TOPIC, f"team{i}.", PatternType.PREFIXED, f"User:u{i}", "*",
                                  Operation.READ, Permission.ALLOW))
    return Enforcer(authorizer, TopicCatalog(None), [0])  # type: ignore[arg-type]  # (ids are never resolved)


async def main(requests: int, rounds: int, acls: bool) -> None:
    frame = produce_frame()
    routes = RouteTable([deferred_route(0, "Produce", (0, 13), Nothing, handle)])
    dispatcher = Dispatcher(routes, [Nothing()], BrokerMetrics(), enforcer=enforcer() if acls else None)
    conn = Connection(dispatcher.dispatch, 1 << 20, lambda c: None, RequestBudget(1 << 20))

    async def one() -> None:
        answer = await dispatcher.dispatch(frame, conn)
        assert isinstance(answer, Deferred)
        await answer.answer

    for _ in range(2000):
        await one()
    runs = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(requests):
            await one()
        runs.append((time.process_time() - started) / requests * 1e6)
    label = "dispatch (authorizer on)" if acls else "dispatch"
    print(f"{label}: {statistics.median(runs):.2f} us of CPU per produce request (median of {rounds} x {requests}; "
          f"min {min(runs):.2f}, max {max(runs):.2f})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--acls", action="store_true", help="with the authorizer on")
    args = p.parse_args()
    asyncio.run(main(args.requests, args.rounds, args.acls))
