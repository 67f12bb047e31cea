"""Idempotent producers: producer ids, and per-partition producer state that makes every batch land once and in
order, whatever broker is killed when (DESIGN.md sections 9 and 10).

    producer ids       a sequence: each InitProducerId takes the next id
    producer owners    ephemeral, one per broker metadata session: an "owner"
    producer states    JSON state of one producer on one partition (the partition's partition key)
(keys: dray_broker/keyspace.py)

A producer state holds the producer's epoch, its last 5 committed batches (first and last sequence, base offset)
and its pending batches: reserved by one owner, not yet known to be committed, each with the log end when it was
reserved and a deadline. Committed then pending batches form one chain of consecutive sequences.

The protocol, per (partition, producer), on the broker that receives a group of batches (owner B):

1. Resolve. Load the state and walk its pending batches in order:
   - B's own batch still being appended: stop here (it and the rest stay pending);
   - B's own batch appended: committed, at the offset its append got;
   - any other (another owner's, or B's whose append failed or is forgotten here): first establish whether its
     owner can still append it (the owner is another one, its owner key exists and the batch's deadline plus
     DEADLINE_MARGIN_S has not passed), THEN scan the index from the reservation's log end for a batch with this
     producer id, epoch and first sequence. Found: committed at that offset. Not found and its owner can no
     longer append it: void, with every later pending batch. Otherwise it is unresolved: stop.
2. Decide each batch of the group in order against the chain:
   - an older epoch: INVALID_PRODUCER_EPOCH. A newer one must start at sequence 0 (else OUT_OF_ORDER) and waits
     until nothing is pending (REQUEST_TIMED_OUT); then it starts a new chain;
   - a committed batch again: a duplicate, answered with the offset it got then;
   - a pending batch again: B's own joins the append in flight; another owner's gets REQUEST_TIMED_OUT;
   - the next sequence after the chain: reserved, unless the chain ends in another owner's unresolved batch
     (REQUEST_TIMED_OUT: that batch may still land, and its ack may already be on its way to the client);
   - anything else: OUT_OF_ORDER_SEQUENCE_NUMBER, but REQUEST_TIMED_OUT while the chain ends unresolved, or when
     the sequence expected next was voided (the state remembers it) or refused here before its reservation (a
     store failure): its client resends it before anything after it, so the later one is early, not past a gap.
3. One CAS writes the state with the group's reservations (owner B, deadline now + session timeout / 2) and what
   step 1 resolved. A version mismatch starts again at step 1.
4. Each reserved batch goes to the WAL writer with a guard checked right before its index append: the session
   generation that holds B's owner key is still live (the store's SessionLife says), the reservation's deadline
   has not passed, and the producer's previous pending batch was committed (or goes in the same index write, ahead
   of it). Otherwise the append fails with a retriable error. After a session generation ends, B makes a new
   owner (a new key) in the next one; its old reservations are resolved like another owner's.
5. Outcomes are written lazily: step 1 of the producer's next group (or the sweep of idle producers) folds them
   in, so the common case costs one CAS per group of batches.

Why no interleaving of brokers and crashes loses an ack or accepts a sequence past a gap:
- Nothing is appended unless first reserved in the chain by a CAS, and a batch is reserved only as the direct
  successor of the chain. An owner appends its pending batches in chain order, each only if its predecessor was
  committed (guard, step 4), so committed batches are always a prefix of the chain: never one after a gap.
- A pending batch leaves the chain only as committed or as void. Void needs proof that its owner can no longer
  append it: its owner key is gone (the session ended: a killed broker writes nothing more, and a live one's guard
  refuses once its store tells it the session generation ended) or its deadline plus a margin passed (the owner's
  guard refuses after the deadline, on its own clock; clocks of brokers must agree within DEADLINE_MARGIN_S). The
  index is scanned after that proof, so a committed batch is always found: a void batch is never in the log, and
  was never acked. Every retry of a committed batch gets its offset.
- OUT_OF_ORDER_SEQUENCE_NUMBER makes librdkafka die when it holds the acks of every earlier batch, and otherwise
  bump its epoch and renumber every unacknowledged batch, of every partition, including batches that may be
  committed (a connection closed before their answer): those are then written twice (rdkafka_request.c, and
  librdkafka issue 4953; measured here with brokers stalled past the session timeout: 5 records written twice
  after an OUT_OF_ORDER answered for a gap left by a voided batch). So it is answered only for a gap that stays:
  never while the chain ends in an unresolved batch (every batch the client can hold an ack for is in the chain
  otherwise), nor while the missing batch is one the client resends anyway (voided, or refused before its
  reservation). Those get the retriable REQUEST_TIMED_OUT, and nothing past a gap is accepted either way.
- A crashed owner's reservations are resolved as soon as its session ends (session timeout), not after a TTL.
  The owner's deadline is half the session timeout: with keepalives every third of it, the session cannot end
  before every deadline of the owner has passed, so the owner has stopped appending by the time others void.

What is not airtight: a broker that stalls between its guard check and the index append being applied, for longer
than the time until its session is seen ended, may commit a batch another broker already appended again: a
duplicate, never a loss. Closing that needs a store-side fence on the index append (a condition on a session),
which neither Oxia's put with sequence keys nor the store interface offers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypedDict

from kio.schema.errors import ErrorCode

from dray_broker import keyspace
from dray_broker.index.offsets import IndexEntry, OffsetIndex, PartitionRef
from dray_broker.keyspace import PRODUCER_IDS
from dray_broker.metadata import MUST_NOT_EXIST, MetadataStore, SessionLife, VersionMismatchError
from dray_broker.records.batch import BatchSummary, iter_batch_positions

log = logging.getLogger(__name__)

OWNERS_PARTITION_KEY = keyspace.PRODUCER_OWNERS.partition_key
MAX_REMEMBERED_BATCHES = 5
# Others void a live owner's reservation this long after its deadline (clock differences, writes in flight).
DEADLINE_MARGIN_S = 2.0
# Outcomes of a producer idle this long are written to its state (so memory does not grow with idle producers).
SWEEP_IDLE_S = 30.0
# How long a group refused before its reservation explains a gap (its client resends it soon).
FAILED_MEMORY_S = 60.0
MAX_SCAN_MARKS = 10_000
DEFAULT_EXPIRATION_MS = 86_400_000  # producer.id.expiration.ms
MAX_SEQUENCE = 0x7FFFFFFF


async def allocate_producer_id(store: MetadataStore) -> int:
    entry = await store.put_sequential(PRODUCER_IDS.prefix, b"", [1], partition_key=PRODUCER_IDS.partition_key)
    producer_id = PRODUCER_IDS.parse(entry.key)
    assert producer_id is not None, entry.key  # put_sequential made it under the prefix
    return producer_id


def state_key(p: PartitionRef, producer_id: int) -> str:
    return keyspace.producer_state_key(p.topic_id, p.partition, producer_id)


async def purge_producer_states(store: MetadataStore, p: PartitionRef) -> None:
    """Delete the producer states of p: the partition of a deleted topic, once no broker can need them."""
    d = keyspace.producer_states(p.topic_id, p.partition)
    await store.delete_range(d.prefix, d.end, partition_key=d.partition_key)


class ProduceRejected(Exception):
    def __init__(self, error: ErrorCode, message: str):
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class Duplicate:
    """The batch was committed before: answer with the offset it got then."""

    base_offset: int


@dataclass(frozen=True)
class _Reserve:
    """Append the batch for owner; previous_first is the sequence of the pending batch it is chained after (or
    None)."""

    previous_first: int | None
    owner: _Owner


class _Pending(TypedDict):
    """A reserved batch not yet known to be committed or void, as stored in the producer state."""

    first: int
    last: int
    leo: int  # a lower bound of the log end when it was reserved: the batch cannot be indexed below it
    deadline_ms: int


@dataclass
class _State:
    epoch: int = -1
    batches: list[list[int]] = field(default_factory=list)  # [first_seq, last_seq, base_offset], oldest first
    owner: str | None = None  # owner of every pending batch
    pending: list[_Pending] = field(default_factory=list)  # in chain order
    updated_ms: int = 0
    voided_from: int | None = None  # the chain's next sequence was reserved once and voided: the client resends it
    version: int = MUST_NOT_EXIST

    def encode(self) -> bytes:
        return json.dumps({"epoch": self.epoch, "batches": self.batches, "owner": self.owner,
                           "pending": self.pending, "updated_ms": self.updated_ms,
                           "voided_from": self.voided_from}).encode()

    @classmethod
    def decode(cls, value: bytes, version: int) -> "_State":
        d = json.loads(value)
        return cls(d["epoch"], d["batches"], d["owner"], d["pending"], d["updated_ms"], d.get("voided_from"),
                   version)

    def last_seq(self) -> int | None:
        if self.pending:
            return self.pending[-1]["last"]
        return self.batches[-1][1] if self.batches else None

    def commit_first_pending(self, base_offset: int) -> None:
        p = self.pending.pop(0)
        self.batches.append([p["first"], p["last"], base_offset])
        del self.batches[:-MAX_REMEMBERED_BATCHES]
        if not self.pending:
            self.owner = None

    def void_pending(self) -> None:
        self.voided_from = self.pending[0]["first"]
        self.pending = []
        self.owner = None


def _next_seq(seq: int) -> int:
    return 0 if seq == MAX_SEQUENCE else seq + 1


def _last_seq(s: BatchSummary) -> int:
    """The last sequence of the batches (sequences wrap to 0 after MAX_SEQUENCE, as in Kafka)."""
    return s.last_sequence - MAX_SEQUENCE - 1 if s.last_sequence > MAX_SEQUENCE else s.last_sequence


def _retrieve(f: asyncio.Future) -> None:
    """Mark a future's exception as retrieved: whoever waited for it (a produce response) may be gone."""
    if not f.cancelled():
        f.exception()


def _succeeded(f: asyncio.Future) -> bool:
    return f.done() and not f.cancelled() and f.exception() is None


@dataclass
class _Owner:
    """This broker's identity as the owner of reservations, for one generation of its metadata session: its
    ephemeral key goes when that generation ends."""

    id: str
    generation: int
    session: SessionLife
    released: bool = False  # the broker stopped

    @property
    def key(self) -> str:
        return keyspace.producer_owner_key(self.id)

    @property
    def alive(self) -> bool:
        return not self.released and self.session.alive and self.session.generation == self.generation


@dataclass
class _Submitted:
    """One group of batches waiting for its reservation, and the caller's way to append it once reserved."""

    summary: BatchSummary
    append: Callable[[Callable[[], str | None], asyncio.Future | None], asyncio.Future]  # (guard, after) -> offset
    future: asyncio.Future  # what the produce response waits for: the base offset


@dataclass
class _Appends:
    """This process's appends of one producer on one partition, by (epoch, first sequence): the WAL writer's
    futures of their base offsets."""

    futures: dict[tuple[int, int], asyncio.Future] = field(default_factory=dict)
    touched: float = 0.0


Key = tuple[PartitionRef, int]


class ProducerStates:
    """Validates and reserves idempotent batches for this broker (one instance per broker process).

    Batches are submitted without waiting; per (partition, producer) one task takes every batch queued so far,
    resolves and checks them against the stored state, reserves them with one CAS, then appends them in order.
    So a producer with several requests in flight pays one store round trip per group, not per batch."""

    def __init__(self, store: MetadataStore, index: OffsetIndex,
                 read_batch_headers: Callable[[PartitionRef, IndexEntry], Awaitable[list]],
                 log_end_hint: Callable[[PartitionRef], int], *, session_timeout_ms: int, broker_id: int = -1,
                 expiration_ms: int = DEFAULT_EXPIRATION_MS):
        self.store = store
        self.index = index
        self.read_batch_headers = read_batch_headers  # (p, entry) -> [(pid, epoch, first_seq, offset)]
        self.log_end_hint = log_end_hint  # a lower bound of the log end, without a store read (0 if unknown)
        self.reservation_ttl_s = session_timeout_ms / 2000
        self.broker_id = broker_id
        self.expiration_ms = expiration_ms
        self._owner: _Owner | None = None
        self._my_owners: set[str] = set()  # every owner id of this process (its reservations are known here)
        self._new_owner: asyncio.Future | None = None
        self._queues: dict[Key, list[_Submitted]] = {}
        self._appends: dict[Key, _Appends] = {}
        self._scanned: dict[tuple[Key, int, int], int] = {}  # (key, epoch, first) -> index scanned up to here
        # Groups refused here before their reservation (a store failure): (epoch, first sequences, when).
        self._failed: dict[Key, tuple[int, set[int], float]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._next_sweep = 0.0

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.session.wait_alive()
        await self._current_owner()

    async def stop(self) -> None:
        """After the WAL writer drained: nothing of this broker is in flight, so its reservations can go."""
        owner = self._owner
        if owner is not None and owner.alive:
            owner.released = True
            try:
                await self.store.delete(owner.key, partition_key=OWNERS_PARTITION_KEY)
            except Exception as e:  # the session's end removes it anyway
                log.debug("could not delete producer owner key: %r", e)

    async def _current_owner(self) -> _Owner:
        """This broker's owner: a new one (with a new ephemeral key) in each generation of the metadata session.
        SessionExpiredError while there is no live session (the store is renewing it)."""
        if self._owner is not None and self._owner.alive:
            return self._owner
        if self._new_owner is None:
            self._new_owner = asyncio.ensure_future(self._create_owner())
            self._new_owner.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(self._new_owner)
        finally:
            if self._new_owner is not None and self._new_owner.done():
                self._new_owner = None

    async def _create_owner(self) -> _Owner:
        session = self.store.session
        owner = _Owner(uuid.uuid4().hex, session.require(), session)
        value = json.dumps({"broker": self.broker_id, "since_ms": int(time.time() * 1000)}).encode()
        await self.store.put(owner.key, value, ephemeral=True, expected_version=MUST_NOT_EXIST,
                             session=owner.generation, partition_key=OWNERS_PARTITION_KEY)
        self._my_owners.add(owner.id)
        self._owner = owner
        log.info("idempotent producer reservations of this broker belong to owner %s (metadata session generation "
                 "%d)", owner.id, owner.generation)
        return owner

    # --- submitting -------------------------------------------------------------------------------------------

    def submit(self, p: PartitionRef, summary: BatchSummary,
               append: Callable[[Callable[[], str | None], asyncio.Future | None], asyncio.Future]) -> asyncio.Future:
        """Queue an idempotent producer's batches for one partition; the future gives their base offset (the
        first one's, for a duplicate) or fails with ProduceRejected or the append's error. append(guard, after) is
        called, in submission order, once the batches are reserved: the WAL writer must not index them when
        guard() returns a reason, nor unless the append `after` committed first (or together with them)."""
        key = (p, summary.producer_id)
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        if key not in self._queues:
            self._start(key)
        self._queues[key].append(_Submitted(summary, append, future))
        self._sweep_idle()
        return future

    def _start(self, key: Key) -> None:
        self._queues[key] = []
        task = asyncio.create_task(self._drain(key), name=f"producer-{key[1]}-{key[0].partition}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: Key) -> None:
        try:
            while True:
                group, self._queues[key] = self._queues[key], []
                try:
                    await self._reserve_group(key, group)
                except Exception as e:  # a store failure: every batch of the group fails, retriably
                    log.warning("reserving idempotent batches of producer %d on %s failed: %r", key[1], key[0], e)
                    if group:
                        self._failed[key] = (group[0].summary.producer_epoch,
                                             {item.summary.base_sequence for item in group}, time.monotonic())
                    for item in group:
                        if not item.future.done():
                            item.future.set_exception(ProduceRejected(ErrorCode.kafka_storage_error, str(e)))
                if not self._queues[key]:
                    return
        finally:
            del self._queues[key]

    def _sweep_idle(self) -> None:
        """Write the outcomes of producers idle for a while, then forget them (an empty group does that)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_IDLE_S
        for key, (_, _, when) in list(self._failed.items()):
            if now - when > FAILED_MEMORY_S:
                del self._failed[key]
        for key, appends in list(self._appends.items()):
            if (key not in self._queues and now - appends.touched > SWEEP_IDLE_S
                    and all(f.done() for f in appends.futures.values())):
                self._start(key)

    # --- one group --------------------------------------------------------------------------------------------

    async def _reserve_group(self, key: Key, group: list[_Submitted]) -> None:
        p, pid = key
        owner = await self._current_owner() if group else None
        leo = await self._log_end(p) if group else 0
        while True:
            state = await self._load(p, pid)
            changed = await self._resolve(key, state, own_only=not group)
            now_ms = int(time.time() * 1000)
            deadline = time.monotonic() + self.reservation_ttl_s  # taken before the CAS: on the safe side
            decisions = ([self._decide(key, state, item.summary, owner, leo, now_ms) for item in group]
                         if owner is not None else [])  # no owner: the sweep, without a group
            reserving = any(isinstance(d, _Reserve) for d in decisions)
            if reserving or changed:
                if reserving:
                    state.updated_ms = now_ms
                try:
                    entry = await self.store.put(state_key(p, pid), state.encode(), expected_version=state.version,
                                                 partition_key=p.partition_key)
                except VersionMismatchError:
                    continue  # another broker changed it: resolve and check the whole group again
                state.version = entry.version
            break
        self._forget(key, state)
        if reserving:
            self._touch(key)
        for item, decision in zip(group, decisions):
            if isinstance(decision, _Reserve):  # appended even if nobody waits for it any more: it is reserved
                self._append(key, item, decision.owner, deadline, decision.previous_first)
            elif item.future.done():  # cancelled: its request went away with its connection
                continue
            elif isinstance(decision, Duplicate):
                item.future.set_result(decision.base_offset)
            elif isinstance(decision, ProduceRejected):
                log.log(logging.DEBUG if decision.error == ErrorCode.request_timed_out else logging.INFO,
                        "producer %d on %s refused: %s", pid, p, decision)
                item.future.set_exception(decision)
            else:  # the same batch is being appended here: answer with its outcome
                _chain(decision, item.future)

    def _append(self, key: Key, item: _Submitted, owner: _Owner, deadline: float, previous_first: int | None) -> None:
        appends = self._appends.setdefault(key, _Appends())
        epoch = item.summary.producer_epoch
        after = appends.futures.get((epoch, previous_first)) if previous_first is not None else None

        def guard() -> str | None:
            if not owner.alive:
                return "this broker's metadata session ended: its reservation is void"
            if time.monotonic() > deadline:
                return f"the reservation expired ({self.reservation_ttl_s:.1f} s) before the index append"
            return None

        appended = item.append(guard, after)
        appends.futures[(epoch, item.summary.base_sequence)] = appended
        _chain(appended, item.future)

    async def _log_end(self, p: PartitionRef) -> int:
        """A lower bound of the log end now: where a batch reserved now can be appended at the earliest."""
        hint = self.log_end_hint(p)
        return hint if hint > 0 else await self.index.log_end_offset(p)

    async def _load(self, p: PartitionRef, pid: int) -> _State:
        found = await self.store.get(state_key(p, pid), partition_key=p.partition_key)
        if found is None:
            return _State()
        state = _State.decode(found.value, found.version)
        if state.updated_ms < time.time() * 1000 - self.expiration_ms:
            return _State(version=found.version)  # expired: behaves like an unknown producer
        return state

    async def _resolve(self, key: Key, state: _State, own_only: bool = False) -> bool:
        """Step 1: move pending batches whose fate is known to committed, or void them. Returns whether the
        state changed. own_only: leave another owner's batches alone (the sweep of idle producers)."""
        if not state.pending:
            return False
        p, pid = key
        mine = state.owner in self._my_owners
        if own_only and not mine:
            return False
        futures = self._appends[key].futures if mine and key in self._appends else {}
        # Which batches need the index, and whether their owner can still append them: established before the
        # index is read, so that the scan sees every append that owner could ever make.
        need = []
        for pending in state.pending:
            f = futures.get((state.epoch, pending["first"]))
            if f is not None and not f.done():
                break
            if f is None or not _succeeded(f):
                need.append(pending)
        found: dict[int, int] = {}
        owner_gone = mine
        now_ms = int(time.time() * 1000)
        if need:
            if not mine:
                owner_gone = state.owner is None or await self.store.get(
                    keyspace.producer_owner_key(state.owner), partition_key=OWNERS_PARTITION_KEY) is None
            found = await self._find_in_index(key, state.epoch, need)
        changed = False
        while state.pending:
            pending = state.pending[0]
            f = futures.get((state.epoch, pending["first"]))
            if f is not None and not f.done():
                break  # being appended here
            if f is not None and _succeeded(f):
                state.commit_first_pending(f.result())
            elif pending["first"] in found:
                state.commit_first_pending(found[pending["first"]])
            elif owner_gone or now_ms > pending["deadline_ms"] + DEADLINE_MARGIN_S * 1000:
                log.info("producer %d on %s: sequences %d-%d of owner %s were never committed: void", pid, p,
                         pending["first"], state.pending[-1]["last"], state.owner)
                state.void_pending()
            else:
                break  # its owner may still append it
            changed = True
        still = {p["first"] for p in state.pending}
        for n in need:
            if n["first"] not in still:
                self._scanned.pop((key, state.epoch, n["first"]), None)
        return changed

    async def _find_in_index(self, key: Key, epoch: int, wanted: list[_Pending]) -> dict[int, int]:
        """first sequence -> base offset of the wanted batches found in the index (WAL entries)."""
        p, pid = key
        progress = [self._scanned.get((key, epoch, w["first"]), w["leo"]) for w in wanted]
        sought = {w["first"] for w in wanted}
        found: dict[int, int] = {}
        scanned_to = min(progress)
        for entry in await self.index.entries_from(p, scanned_to):
            for h_pid, h_epoch, h_seq, offset in await self.read_batch_headers(p, entry):
                if h_pid == pid and h_epoch == epoch and h_seq in sought:
                    found.setdefault(h_seq, offset)
            scanned_to = entry.end
            if len(found) == len(sought):
                break
        if len(self._scanned) > MAX_SCAN_MARKS:  # marks of states that other brokers resolved
            self._scanned.clear()
        for w in wanted:  # not found below scanned_to: the next scan starts there
            if w["first"] not in found:
                self._scanned[(key, epoch, w["first"])] = max(scanned_to, w["leo"])
        return found

    def _decide(self, key: Key, state: _State, s: BatchSummary, owner: _Owner, leo: int,
                now_ms: int) -> ProduceRejected | Duplicate | _Reserve | asyncio.Future:
        """Step 2 for one group of batches; a reservation is made in `state` (written by the caller)."""
        pid, epoch, first, last = s.producer_id, s.producer_epoch, s.base_sequence, _last_seq(s)
        unresolved = bool(state.pending) and state.owner != owner.id  # another owner's batch may still land
        if state.epoch >= 0 and epoch < state.epoch:
            return ProduceRejected(ErrorCode.invalid_producer_epoch,
                                   f"producer {pid} epoch {epoch} is older than the current epoch {state.epoch}")
        if epoch != state.epoch:
            if state.epoch >= 0 and first != 0:
                return ProduceRejected(ErrorCode.out_of_order_sequence_number,
                                       f"producer {pid} started epoch {epoch} at sequence {first}, not 0")
            if state.pending:
                return ProduceRejected(ErrorCode.request_timed_out,
                                       f"producer {pid}: batches of epoch {state.epoch} are still being appended")
            state.epoch, state.batches, state.voided_from = epoch, [], None
            return self._reserve(state, owner, first, last, leo, now_ms)
        for b in state.batches:
            if b[0] == first and b[1] == last:
                return Duplicate(b[2])
        for pending in state.pending:
            if pending["first"] == first and pending["last"] == last:
                if unresolved:
                    return ProduceRejected(ErrorCode.request_timed_out, f"producer {pid} sequence {first} is being "
                                           f"appended by another broker (owner {state.owner})")
                in_flight = self._appends.get(key, _Appends()).futures.get((epoch, first))
                if in_flight is None:
                    return ProduceRejected(ErrorCode.request_timed_out,
                                           f"producer {pid} sequence {first} is being appended")
                return in_flight
        last_seq = state.last_seq()
        if unresolved:
            return ProduceRejected(ErrorCode.request_timed_out,
                                   f"producer {pid} sent sequence {first}, but whether sequences up to {last_seq} "
                                   f"were committed is not known yet (owner {state.owner})")
        expected = _next_seq(last_seq) if last_seq is not None else state.voided_from
        if expected is not None and first != expected:
            if self._retried_soon(key, state, epoch, expected):
                return ProduceRejected(ErrorCode.request_timed_out,
                                       f"producer {pid} sent sequence {first}; sequence {expected} failed and comes "
                                       f"again first")
            return ProduceRejected(ErrorCode.out_of_order_sequence_number,
                                   f"producer {pid} sent sequence {first}, expected {expected}")
        state.voided_from = None
        return self._reserve(state, owner, first, last, leo, now_ms)

    def _retried_soon(self, key: Key, state: _State, epoch: int, expected: int) -> bool:
        """Whether the batch expected next failed (voided, or refused here before its reservation): its client
        retries it before anything after it, so a later sequence is early, not past a gap for good."""
        if state.voided_from == expected:
            return True
        failed = self._failed.get(key)
        return failed is not None and failed[0] == epoch and expected in failed[1]

    def _reserve(self, state: _State, owner: _Owner, first: int, last: int, leo: int, now_ms: int) -> _Reserve:
        previous = state.pending[-1]["first"] if state.pending else None
        state.owner = owner.id
        state.pending.append({"first": first, "last": last, "leo": leo,
                              "deadline_ms": now_ms + int(self.reservation_ttl_s * 1000)})
        return _Reserve(previous, owner)

    def _forget(self, key: Key, written: _State) -> None:
        """Drop finished appends the stored state no longer needs (they are committed or void in it)."""
        appends = self._appends.get(key)
        if appends is None:
            return
        pending = {(written.epoch, p["first"]) for p in written.pending} if written.owner in self._my_owners else ()
        for batch, f in list(appends.futures.items()):
            if f.done() and batch not in pending:
                del appends.futures[batch]
        if not appends.futures:
            del self._appends[key]

    def _touch(self, key: Key) -> None:
        self._appends.setdefault(key, _Appends()).touched = time.monotonic()


def _chain(source: asyncio.Future, target: asyncio.Future) -> None:
    """Complete target like source, now or when source completes."""
    def copy(f: asyncio.Future) -> None:
        if target.done():
            return
        if f.cancelled():
            target.cancel()
        elif (error := f.exception()) is not None:
            target.set_exception(error)
        else:
            target.set_result(f.result())

    if source.done():
        copy(source)
    else:
        source.add_done_callback(copy)


def batch_headers(data: bytes | bytearray | memoryview) -> list[tuple[int, int, int, int]]:
    """(producer id, epoch, base sequence, offset) of each batch in patched chunk bytes."""
    return [(h.producer_id, h.producer_epoch, h.base_sequence, h.base_offset) for _, h in iter_batch_positions(data)]
