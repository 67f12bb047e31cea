"""Which failures of an Oxia call are worth retrying, and the backoff between tries.

A transient failure (the connection dropped, a leader changed or is not ready yet, a deadline passed) is retried
by whoever can do so safely: reads and idempotent writes until the operation's deadline. What is not transient
(or not safe to send again) is reported to the caller as MetadataError.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable, TypeVar

import grpc
import grpc.aio

from dray_broker.metadata.base import MetadataError

log = logging.getLogger("dray.metadata.oxia")

T = TypeVar("T")

# The server's gRPC status codes (common/constant/grpc_errors.go). grpc-python maps codes above 16 to UNKNOWN,
# so the messages are matched as well.
_RETRIABLE_DETAILS = (
    "not leader",  # 106 CodeNodeIsNotLeader
    "invalid status",  # 102 CodeInvalidStatus (leader fenced)
    "already closed",  # 104 CodeAlreadyClosed (leader closing)
    "not initialized",  # 100 CodeNotInitialized
    "operation was cancelled",  # 103 CodeCancelled (assignment dispatcher restarting)
)
_SESSION_NOT_FOUND = "session not found"  # 108


class StreamBroken(Exception):
    """A stream ended or answered out of turn, or a shard has no leader yet: transient."""


class Closed(MetadataError):
    """The store was closed while the operation waited."""


def details(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (StreamBroken, asyncio.TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return True
        text = (exc.details() or "").lower()
        return any(d in text for d in _RETRIABLE_DETAILS)
    return False


def is_not_leader(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and "not leader" in (exc.details() or "").lower()


def is_session_not_found(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and _SESSION_NOT_FOUND in (exc.details() or "").lower()


class Backoff:
    """Exponential backoff with jitter: each delay is half to all of the current step, which doubles."""

    def __init__(self, initial: float = 0.05, maximum: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.current = initial

    def reset(self) -> None:
        self.current = self.initial

    def next(self) -> float:
        delay = self.current * (0.5 + random.random() / 2)
        self.current = min(self.current * 2, self.maximum)
        return delay


async def retrying(what: str, fn: Callable[[], Awaitable[T]], *, timeout: float, check_open: Callable[[], None]) -> T:
    """Run an idempotent call, retrying transient failures with backoff for up to `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    backoff = Backoff()
    while True:
        check_open()
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except MetadataError:
            raise
        except Exception as e:  # noqa: BLE001
            if not is_transient(e) or loop.time() + backoff.current > deadline:
                raise MetadataError(f"oxia: {what} failed: {details(e)}") from e
            log.debug("oxia: %s failed, retrying: %s", what, details(e))
            await asyncio.sleep(backoff.next())
