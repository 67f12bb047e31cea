"""The metadata store interface, shaped like Oxia's primitives (DESIGN.md section 4).

Keys sort hierarchically, as in Oxia: segment by segment, a key with fewer '/' after the current segment sorts
first. Keep each key family at one depth so that a range within a directory is contiguous.
Every multi-key protocol is built from these single-key operations; there are no transactions.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import enum
import logging
from dataclasses import dataclass
from typing import Sequence

log = logging.getLogger(__name__)

# expected_version for a put that must create the key.
MUST_NOT_EXIST = -1


class Comparison(enum.Enum):
    EQUAL = 0
    FLOOR = 1  # the greatest key <= the given key
    CEILING = 2  # the smallest key >= the given key
    LOWER = 3  # the greatest key < the given key
    HIGHER = 4  # the smallest key > the given key


class NotificationType(enum.Enum):
    CREATED = 0
    MODIFIED = 1
    DELETED = 2
    RANGE_DELETED = 3


class MetadataError(Exception):
    """A backend failure; the caller may retry."""


class VersionMismatchError(MetadataError):
    """A conditional put or delete found another version (or the key exists when it must not)."""


class KeyNotFoundError(VersionMismatchError):
    """A conditional delete or put found no key (a version mismatch too: CAS loops that catch
    VersionMismatchError also see a key deleted under them)."""


class SessionExpiredError(MetadataError):
    """The session that ephemeral keys belong to is gone."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    version: int  # changes on every write of the key; compare with expected_version
    ephemeral: bool = False


@dataclass(frozen=True)
class SequentialPut:
    """One put_sequential of a put_sequential_batch."""

    prefix: str
    value: bytes
    deltas: Sequence[int]
    partition_key: str


@dataclass(frozen=True)
class Notification:
    key: str
    type: NotificationType
    version: int | None  # None for deletions
    key_range_end: str | None = None  # for RANGE_DELETED: [key, key_range_end)


class Watch(abc.ABC):
    """An async iterator of notifications; aclose() ends it (iteration then stops)."""

    def __aiter__(self) -> "Watch":
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Notification: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class SessionLife:
    """The life of a store's session, told the same way by every backend.

    A store holds at most one live session at a time; `generation` numbers them (1, 2, ...; 0 before the first).
    A session ends when the store cannot keep it alive within the session timeout (a stalled process, store or
    network) or the server drops it; its ephemeral keys go with it. The store then opens the next generation by
    itself as soon as it can, and ephemeral puts work again, in the new session. Whoever holds ephemeral keys
    follows the generations and re-creates them:

        while True:
            generation = await store.session.wait_alive()
            ... create ephemeral keys with put(..., ephemeral=True, session=generation)
            await store.session.wait_ended(generation)
            ... forget what belonged to that generation

    put(..., session=g) refuses (SessionExpiredError) once generation g is over, so a key never lands in a
    generation its writer did not see begin; a put that succeeded just before g ended is followed by g's end, as
    every other key of g. The backend calls begin() and end() on the event loop of the store."""

    def __init__(self) -> None:
        self.generation = 0
        self.alive = False
        self.closed = False
        self._changed: asyncio.Future | None = None

    # --- told by the backend ----------------------------------------------------------------------------------

    def begin(self, generation: int | None = None) -> int:
        """A new session is live (the next generation, unless the backend numbers them itself)."""
        generation = self.generation + 1 if generation is None else generation
        if generation <= self.generation:
            raise ValueError(f"session generation {generation} after {self.generation}")
        self.generation, self.alive = generation, True
        if generation > 1:
            log.warning("metadata session renewed: generation %d", generation)
        self._notify()
        return generation

    def end(self, generation: int, reason: str) -> bool:
        """Generation `generation` is over (its ephemeral keys are gone or going); False if it was already."""
        if generation != self.generation or not self.alive:
            return False
        self.alive = False
        log.warning("metadata session generation %d expired: %s", generation, reason)
        self._notify()
        return True

    def close(self) -> None:
        self.alive, self.closed = False, True
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    # --- for holders of ephemeral keys ------------------------------------------------------------------------

    def require(self, generation: int | None = None) -> int:
        """The live generation (which must be `generation` if given), else SessionExpiredError."""
        if self.closed:
            raise MetadataError("the metadata store is closed")
        if not self.alive:
            raise SessionExpiredError(f"metadata session generation {self.generation} expired; renewing")
        if generation is not None and generation != self.generation:
            raise SessionExpiredError(
                f"metadata session generation {generation} is over (generation {self.generation} is live)")
        return self.generation

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)

    async def wait_alive(self) -> int:
        """The live generation, once there is one. MetadataError once the store is closed."""
        while not self.alive:
            if self.closed:
                raise MetadataError("the metadata store is closed")
            await self._wait_change()
        return self.generation

    async def wait_ended(self, generation: int) -> None:
        """Return once generation `generation` is over (at once if it is)."""
        while self.alive and self.generation == generation:
            await self._wait_change()


class MetadataStore(abc.ABC):
    """partition_key routes a key to a shard (Oxia); keys of one partition must share it. Backends that do
    not shard ignore it. Comparisons other than EQUAL search the whole shard: check the returned key's prefix.

    `session` tells the life of the store's session (SessionLife): its generation, whether it is alive, and
    waits for its end and its renewal. Backends set it in their constructor."""

    session: SessionLife

    @abc.abstractmethod
    async def get(
        self,
        key: str,
        comparison: Comparison = Comparison.EQUAL,
        *,
        partition_key: str | None = None,
    ) -> Entry | None: ...

    @abc.abstractmethod
    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None = None,
        ephemeral: bool = False,
        session: int | None = None,
        partition_key: str | None = None,
    ) -> Entry:
        """Write key. expected_version None = unconditional, MUST_NOT_EXIST = create only, n = compare-and-set.

        Raise VersionMismatchError when the condition fails. An ephemeral key belongs to this store's session and
        disappears when the session closes or expires; SessionExpiredError while there is no live session, or
        when `session` (a generation) is given and is not the live one when the put is applied."""

    @abc.abstractmethod
    async def put_sequential(
        self, prefix: str, value: bytes, deltas: Sequence[int], *, partition_key: str
    ) -> Entry:
        """Append under prefix: the store adds deltas to the running sums taken from the newest existing key
        'prefix-%020d-%020d...' and writes the new key with the sums. Atomic: concurrent callers never get the same
        sums. Deleting the newest key rewinds the sums."""

    async def put_sequential_batch(self, puts: Sequence[SequentialPut]) -> list[Entry | Exception]:
        """Several put_sequential as one unit where the backend can (SQLite: one transaction; Oxia: one write
        request). Puts under one prefix are applied in the order given. Each succeeds or fails by itself: the
        result holds its Entry or its exception, in the order of puts. This default issues the puts of different
        prefixes concurrently, and those of one prefix one after another."""
        results: list[Entry | Exception | None] = [None] * len(puts)
        by_prefix: dict[str, list[int]] = {}
        for i, p in enumerate(puts):
            by_prefix.setdefault(p.prefix, []).append(i)

        async def in_order(indexes: list[int]) -> None:
            for i in indexes:
                p = puts[i]
                try:
                    results[i] = await self.put_sequential(p.prefix, p.value, p.deltas, partition_key=p.partition_key)
                except Exception as e:  # noqa: BLE001 - reported in the result
                    results[i] = e

        await asyncio.gather(*(in_order(indexes) for indexes in by_prefix.values()))
        return results  # type: ignore[return-value]

    @abc.abstractmethod
    async def delete(
        self, key: str, *, expected_version: int | None = None, partition_key: str | None = None
    ) -> bool:
        """Delete key; return whether it existed. Raise VersionMismatchError if expected_version differs."""

    @abc.abstractmethod
    async def delete_range(self, start: str, end: str, *, partition_key: str | None = None) -> None:
        """Delete every key in [start, end) (hierarchical order)."""

    @abc.abstractmethod
    async def list(self, start: str, end: str, *, partition_key: str | None = None) -> list[str]:
        """Keys in [start, end), in hierarchical order."""

    @abc.abstractmethod
    async def range_scan(
        self, start: str, end: str, *, partition_key: str | None = None
    ) -> builtins.list[Entry]:  # `list`: the method above
        """Entries in [start, end), in hierarchical order."""

    @abc.abstractmethod
    async def watch(self, prefix: str) -> "Watch":
        """Every change to keys starting with prefix, in order, from the moment this call returns: a change
        made after the await completes is always seen. Close the watch with aclose()."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the session (its ephemeral keys go) and release connections."""
