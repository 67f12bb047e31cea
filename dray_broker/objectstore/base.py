"""The object store interface: the only durable storage a broker writes to."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

Buffer = bytes | bytearray | memoryview


class ObjectStoreError(Exception):
    """A backend failure; the caller may retry."""


class ObjectExistsError(ObjectStoreError):
    """A create-only put found the key already present."""


class ObjectNotFoundError(ObjectStoreError):
    """The key does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: float  # seconds since the epoch


class ObjectStore(abc.ABC):
    """Keys are '/'-separated relative paths such as 'wal/01J...'. Writes are whole-object and atomic."""

    # How many puts a writer may keep in flight at once (the WAL writer's flushes): more where a put waits on the
    # network (S3) than where it waits on one disk.
    parallel_puts = 2

    @abc.abstractmethod
    async def put(self, key: str, data: Buffer | Sequence[Buffer], *, create_only: bool = True) -> None:
        """Store data (one buffer or a sequence of buffers, concatenated) under key.

        With create_only, raise ObjectExistsError if the key exists; the check and the write are atomic."""

    @abc.abstractmethod
    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the object (end None = to the end). Raise ObjectNotFoundError."""

    async def get_writable(self, key: str, start: int, end: int) -> bytearray:
        """Bytes [start, end) of the object in a bytearray the caller owns and may change in place (the fetch path
        patches offsets into the chunks it caches). Backends that can read straight into one override this; here
        it is a copy of what get returns."""
        return bytearray(await self.get(key, start, end))

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and age, or None if it does not exist."""

    @abc.abstractmethod
    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with prefix, sorted by key."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete key; deleting a missing key is not an error."""

    async def close(self) -> None:
        """Release connections."""
