"""What a request handler is given, what it gives back, and the route that binds it to a Kafka API.

A handler is `async def handle_x(service, ctx, req)`:
- service: the typed service it works with (server/services.py: ProduceService, FetchService, ...), never the Broker;
- ctx: the RequestContext, who sent the request (client id, client host; the principal once there is one);
- req: the decoded request (protocol/codec.py Request: API key, version, correlation id, kio body).

It returns one of:
- Response(body): the answer, now. The connection handles its next request only once this one is answered.
- Deferred(answer): the request is taken (e.g. its batches are in the WAL writer's buffer, in request order) and its
  answer comes when `answer` completes. The connection handles its next requests meanwhile (pipelining) and writes
  the answers in request order. Only routes declared deferred may return it: their handlers are typed so (checked by
  mypy, tests/unit/test_types.py) and the dispatcher refuses a Deferred from any other route.
- NO_RESPONSE: nothing is sent back (Produce with acks=0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Iterable, Iterator, TypeAlias, TypeVar

from dray_broker.auth.principal import ANONYMOUS, KafkaPrincipal
from dray_broker.auth.api_checks import API_CHECKS, ApiChecks
from dray_broker.protocol.codec import Request, decode_request
from dray_broker.server.listeners import DEFAULT_LISTENER

T = TypeVar("T")
S = TypeVar("S")


# RequestContext, Response and Deferred are made for every request: plain slotted dataclasses (a frozen one costs
# twice as much to make).


@dataclass(slots=True)
class RequestContext:
    """Who sent a request, as the handlers and the authorizer need it."""

    client_id: str | None
    client_host: str  # "/<ip>" of the peer, as Kafka reports it (JoinGroup, ConsumerGroupHeartbeat keep it)
    # Who the connection authenticated as (SASL or a TLS client certificate); User:ANONYMOUS otherwise, as in Kafka.
    principal: KafkaPrincipal = ANONYMOUS
    # The name of the listener the client connected on (server/listeners.py): the endpoints it is given are that
    # listener's.
    listener: str = DEFAULT_LISTENER
    # Topics of this Produce or Fetch the principal may not write or read (auth/enforce.py): answered with
    # TOPIC_AUTHORIZATION_FAILED by the handler, which encodes its answer by hand.
    denied_topics: frozenset[str] = frozenset()


@dataclass(slots=True)
class Response:
    """An answer to send: a kio response entity of the request's version, or an EncodedBody (protocol/codec.py) the
    handler encoded itself."""

    body: Any  # kio's response payloads share no nominal base type (kio.static.protocol.ResponsePayload)


class NoResponse:
    """Nothing is sent back for this request (Produce with acks=0). Use the one instance, NO_RESPONSE."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_RESPONSE"


NO_RESPONSE = NoResponse()


@dataclass(slots=True)
class Deferred(Generic[T]):
    """An answer that comes later: `answer` is awaited after the connection moved on to its next request."""

    answer: Awaitable[T]


Answer: TypeAlias = Response | NoResponse
HandlerResult: TypeAlias = Answer | Deferred[Answer]
# The two kinds of handler a route can hold: one that answers before the next request is read, and one that may
# defer its answer (pipelined).
Handler: TypeAlias = Callable[[S, RequestContext, Request], Awaitable[Answer]]
DeferringHandler: TypeAlias = Callable[[S, RequestContext, Request], Awaitable[HandlerResult]]


class NoService:
    """The service of handlers that need none: their answer is built from the request alone."""


@dataclass(frozen=True, slots=True)
class Route(Generic[S]):
    """One Kafka API as this broker serves it."""

    key: int
    name: str
    min_version: int
    max_version: int
    service: type[S]  # the dispatcher calls handler(<the broker's instance of this type>, ctx, req)
    handler: DeferringHandler[S]
    deferred: bool  # the handler may return Deferred (its answer comes while later requests are handled)
    advertised: bool  # listed in ApiVersions (the transaction APIs are answered, with errors, but not advertised)
    checks: ApiChecks  # the ACL checks the API needs (auth/api_checks.py), for the authorizer when it is on
    decode: Callable[[bytes], Request] = field(default=decode_request)

    def accepts(self, version: int) -> bool:
        return self.min_version <= version <= self.max_version


def route(key: int, name: str, versions: tuple[int, int], service: type[S], handler: Handler[S], *,
          advertised: bool = True, decode: Callable[[bytes], Request] = decode_request) -> Route[S]:
    """A route whose handler answers before the connection's next request is handled."""
    return Route(key, name, versions[0], versions[1], service, handler, False, advertised, _checks(key, name),
                 decode)


def deferred_route(key: int, name: str, versions: tuple[int, int], service: type[S], handler: DeferringHandler[S],
                   *, decode: Callable[[bytes], Request] = decode_request) -> Route[S]:
    """A route whose handler may defer its answer (Deferred), so that the connection pipelines its requests."""
    return Route(key, name, versions[0], versions[1], service, handler, True, True, _checks(key, name), decode)


def _checks(key: int, name: str) -> ApiChecks:
    checks = API_CHECKS[key]
    if checks.name != name:
        raise ValueError(f"API {key} is {checks.name} in auth/api_checks.py, not {name}")
    return checks


class RouteTable:
    """Every API this broker answers, by key."""

    def __init__(self, routes: Iterable[Route[Any]]):
        self._routes: dict[int, Route[Any]] = {}
        for r in routes:
            if r.key in self._routes:
                raise ValueError(f"two routes for API {r.key}")
            self._routes[r.key] = r

    def get(self, api_key: int) -> Route[Any] | None:
        return self._routes.get(api_key)

    def __iter__(self) -> Iterator[Route[Any]]:
        return iter(sorted(self._routes.values(), key=lambda r: r.key))

    def advertised(self) -> list[Route[Any]]:
        """What ApiVersions lists, by key."""
        return [r for r in self if r.advertised]
