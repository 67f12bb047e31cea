"""S3 as object store (AWS, MinIO, other S3-compatible services) via aioboto3.

URL form (see open_object_store):
    s3://bucket/prefix?endpoint=http://127.0.0.1:9000&access_key_id=..&secret_access_key=..&region=..

One long-lived client is created on first use and closed by close(). Create-only puts send `If-None-Match: *`:
the service checks and writes atomically and answers 412 when the key exists. botocore retries throttling,
5xx and connection errors with exponential backoff (standard mode); on top of that this module retries
409 ConditionalRequestConflict (a concurrent conditional write in flight on AWS) and broken response bodies.

A create-only put retried after an ambiguous failure (a timeout or 5xx, after which the first attempt may have
been applied) can meet its own object and get a 412; in that case the object is read back and, if it holds
exactly our bytes, the put counts as a success instead of ObjectExistsError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
)

from dray_broker.objectstore.base import (
    Buffer,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Failures of one request that botocore's retry does not cover (409 conflicts, a body that breaks while read).
_TRANSIENT_EXC = (HTTPClientError, BotoConnectionError, IncompleteReadError, aiohttp.ClientError, asyncio.TimeoutError)
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or key.startswith("/"):
        raise ValueError(f"invalid object key {key!r}: must be a non-empty relative '/'-separated path")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid object key {key!r}: empty, '.' or '..' segment")
    return key


def _error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _retry_attempts(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


def _is_not_found(e: ClientError) -> bool:
    return _error_code(e) in _NOT_FOUND_CODES or _status(e) == 404


def _as_bool(value: bool | str) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class S3ObjectStore(ObjectStore):
    parallel_puts = 8  # a put waits mostly on the service; the connection pool has max_pool_connections (32)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        *,
        connect_timeout: float | str = 5.0,
        read_timeout: float | str = 30.0,
        max_attempts: int | str = 5,
        transient_attempts: int | str = 2,
        max_pool_connections: int | str = 32,
        path_style: bool | str | None = None,
        checksums: bool | str = False,
        payload_signing: bool | str = False,
    ) -> None:
        """bucket and prefix name where keys live ('prefix/key'); endpoint selects a non-AWS service (MinIO) and
        then path-style addressing by default. Credentials come from the arguments or the normal AWS chain
        (environment, profile, instance role). String values (from a URL query) are converted."""
        if not bucket:
            raise ValueError("S3ObjectStore needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
        self.endpoint = endpoint or None
        self.region = region or None
        self._access_key_id = access_key_id or None
        self._secret_access_key = secret_access_key or None
        self._session_token = session_token or None
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_attempts = int(max_attempts)
        self.transient_attempts = max(1, int(transient_attempts))
        self.max_pool_connections = int(max_pool_connections)
        self.path_style = (self.endpoint is not None) if path_style is None else _as_bool(path_style)
        # S3-compatible services differ in their support for the newer default CRC checksums (and the WAL has
        # its own CRC32C): send checksums only where an operation requires them unless asked to.
        self.checksums = _as_bool(checksums)
        # SigV4 payload signing hashes each body with SHA-256 on the event loop (about 10 ms per 4 MiB here) and
        # botocore always does it over plain http: off by default (UNSIGNED-PAYLOAD). Integrity in transit comes
        # from TLS (AWS) and, end to end, from the WAL's own CRC32C.
        self.payload_signing = _as_bool(payload_signing)
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        where = f", endpoint={self.endpoint!r}" if self.endpoint else ""
        return f"S3ObjectStore(bucket={self.bucket!r}, prefix={self.prefix!r}{where})"

    # -- client ------------------------------------------------------------------------------------------------

    def _config(self) -> AioConfig:
        when = "when_supported" if self.checksums else "when_required"
        return AioConfig(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            max_pool_connections=self.max_pool_connections,
            s3={
                "addressing_style": "path" if self.path_style else "auto",
                "payload_signing_enabled": self.payload_signing,
            },
            request_checksum_calculation=when,
            response_checksum_validation=when,
        )

    async def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is loop:
            return self._client
        if self._lock is None or self._client_loop is not loop:
            # The client (an aiohttp session) belongs to one event loop; a store used from a new loop gets a
            # new client (the old one cannot be closed from here and is dropped).
            self._lock = asyncio.Lock()
            self._client = None
            self._stack = None
            self._client_loop = loop
        async with self._lock:
            if self._client is None:
                import aioboto3

                session = aioboto3.Session()
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(
                    session.client(
                        "s3",
                        endpoint_url=self.endpoint,
                        region_name=self.region or ("us-east-1" if self.endpoint else None),
                        aws_access_key_id=self._access_key_id,
                        aws_secret_access_key=self._secret_access_key,
                        aws_session_token=self._session_token,
                        config=self._config(),
                    )
                )
                self._stack = stack
            return self._client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _full(self, key: str) -> str:
        return self._key_prefix + _check_key(key)

    async def _retrying(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run fn, retrying what botocore does not retry itself, with exponential backoff and jitter: 409
        conditional conflicts (up to max_attempts) and transient failures that got past botocore's own retries,
        such as a response body broken while read (up to transient_attempts)."""
        conflicts = transients = 0
        delay = 0.05
        while True:
            try:
                return await fn()
            except ClientError as e:
                if not (_error_code(e) == "ConditionalRequestConflict" or _status(e) == 409):
                    raise
                conflicts += 1
                if conflicts >= self.max_attempts:
                    raise ObjectStoreError(f"{what}: conditional conflict persisted: {e}") from e
                log.debug("%s: conditional conflict, retrying", what)
            except _TRANSIENT_EXC as e:
                transients += 1
                if transients >= self.transient_attempts:
                    raise ObjectStoreError(f"{what} failed: {e!r}") from e
                log.debug("%s: transient failure, retrying: %r", what, e)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    # -- the interface -----------------------------------------------------------------------------------------

    async def put(self, key: str, data: Buffer | Sequence[Buffer], *, create_only: bool = True) -> None:
        full = self._full(key)
        if isinstance(data, (bytes, bytearray)):
            body: bytes | bytearray = data
        elif isinstance(data, memoryview):
            body = data.tobytes()
        else:
            body = b"".join(data)  # S3 needs one body: join once
        client = await self._get_client()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full, "Body": body}
        if create_only:
            params["IfNoneMatch"] = "*"
        ambiguous = False  # an earlier attempt may have been applied by the service

        async def attempt() -> None:
            nonlocal ambiguous
            try:
                await client.put_object(**params)
            except ClientError as e:
                if _retry_attempts(e):
                    ambiguous = True
                raise
            except _TRANSIENT_EXC:
                ambiguous = True
                raise

        try:
            await self._retrying(f"put {key!r}", attempt)
        except ClientError as e:
            code = _error_code(e)
            if create_only and (code == "PreconditionFailed" or _status(e) == 412):
                if ambiguous and await self._holds(full, body):
                    return
                raise ObjectExistsError(key) from None
            if code == "NoSuchBucket":
                raise ObjectStoreError(f"put {key!r}: bucket {self.bucket!r} does not exist") from e
            raise ObjectStoreError(f"put {key!r} failed: {e}") from e
        except BotoCoreError as e:
            raise ObjectStoreError(f"put {key!r} failed: {e}") from e

    async def _holds(self, full: str, body: bytes | bytearray) -> bool:
        """Whether the object at full holds exactly body (after an ambiguous create-only put)."""
        try:
            info = await self._head_full(full)
            if info is None or info[0] != len(body):
                return False
            return await self._get_full(full, 0, None) == body
        except (ObjectStoreError, ClientError, BotoCoreError):
            return False

    async def _get_full(self, full: str, start: int, end: int | None) -> bytes:
        client = await self._get_client()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end - 1}"

        async def attempt() -> bytes:
            resp = await client.get_object(**params)
            async with resp["Body"] as stream:
                return await stream.read()

        return await self._retrying(f"get {full!r}", attempt)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        full = self._full(key)
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"invalid range [{start}, {end})")
        if end is not None and end <= start:
            # An empty range cannot be asked of S3; still report a missing key.
            if await self.head(key) is None:
                raise ObjectNotFoundError(key)
            return b""
        try:
            return await self._get_full(full, start, end)
        except ClientError as e:
            if _is_not_found(e):
                raise ObjectNotFoundError(key) from None
            if _error_code(e) == "InvalidRange" or _status(e) == 416:
                return b""  # start at or past the end of an existing object
            raise ObjectStoreError(f"get {key!r} failed: {e}") from e
        except BotoCoreError as e:
            raise ObjectStoreError(f"get {key!r} failed: {e}") from e

    async def _head_full(self, full: str) -> tuple[int, float] | None:
        client = await self._get_client()
        try:
            resp = await self._retrying(
                f"head {full!r}", lambda: client.head_object(Bucket=self.bucket, Key=full)
            )
        except ClientError as e:
            if _is_not_found(e):
                return None
            raise
        return int(resp["ContentLength"]), resp["LastModified"].timestamp()

    async def head(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        try:
            info = await self._head_full(full)
        except (ClientError, BotoCoreError) as e:
            raise ObjectStoreError(f"head {key!r} failed: {e}") from e
        if info is None:
            return None
        return ObjectInfo(key=key, size=info[0], last_modified=info[1])

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        client = await self._get_client()
        full_prefix = self._key_prefix + prefix
        strip = len(self._key_prefix)

        async def attempt() -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for obj in page.get("Contents", ()):
                    out.append(
                        ObjectInfo(
                            key=obj["Key"][strip:],
                            size=int(obj["Size"]),
                            last_modified=obj["LastModified"].timestamp(),
                        )
                    )
            return out

        try:
            out = await self._retrying(f"list {prefix!r}", attempt)
        except (ClientError, BotoCoreError) as e:
            raise ObjectStoreError(f"list {prefix!r} failed: {e}") from e
        out.sort(key=lambda info: info.key.encode())  # S3 order: UTF-8 bytes (already so; be sure)
        return out

    async def delete(self, key: str) -> None:
        full = self._full(key)
        client = await self._get_client()
        try:
            await self._retrying(f"delete {key!r}", lambda: client.delete_object(Bucket=self.bucket, Key=full))
        except ClientError as e:
            if _is_not_found(e):
                return
            raise ObjectStoreError(f"delete {key!r} failed: {e}") from e
        except BotoCoreError as e:
            raise ObjectStoreError(f"delete {key!r} failed: {e}") from e
