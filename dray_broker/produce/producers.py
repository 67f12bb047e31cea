"""Idempotent producers: producer ids, and per-partition producer state that makes retried batches land once.

    producer ids       sequence keys: each InitProducerId takes the next id
    producer states    JSON state of one producer on one partition (keys: dray_broker/keyspace.py)

A producer state holds the producer's epoch, the sequence ranges and base offsets of its last 5 committed batches,
and the batches reserved but not yet known to be committed ("pending"). Any broker validates a batch against it:

1. Reserve: one CAS on the state key records the batch as pending (owner instance, time, log end at that time).
   Of two brokers racing with the same batch, exactly one reservation succeeds; the other re-reads and sees it.
   Batches of one producer queued while a CAS is under way are reserved together by the next one.
2. Append the batch through the WAL writer and the offset index as usual; the reservation's deadline is checked
   right before the index append, so an owner that stalled past RESERVATION_TTL_S / 2 fails instead of appending.
3. The outcome lands in the state at the next reservation (batches move from pending to committed with their
   offsets), so the common case costs one extra store write per group of batches.

A batch found pending under another owner is resolved by scanning the index from the log end recorded with the
reservation: if an entry holds the batch, the retry gets that offset; if not, and the reservation is older than
RESERVATION_TTL_S (so its owner can no longer append it), the batch is reserved again and appended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from kio.schema.errors import ErrorCode

from dray_broker import keyspace
from dray_broker.index.offsets import OffsetIndex, PartitionRef
from dray_broker.keyspace import PRODUCER_IDS, IndexFamily
from dray_broker.metadata import MUST_NOT_EXIST, MetadataStore, VersionMismatchError
from dray_broker.records.batch import BatchSummary, iter_batch_positions

log = logging.getLogger(__name__)

MAX_REMEMBERED_BATCHES = 5
RESERVATION_TTL_S = 30.0
DEFAULT_EXPIRATION_MS = 86_400_000  # producer.id.expiration.ms


async def allocate_producer_id(store: MetadataStore) -> int:
    entry = await store.put_sequential(PRODUCER_IDS.prefix, b"", [1], partition_key=PRODUCER_IDS.partition_key)
    producer_id = PRODUCER_IDS.parse(entry.key)
    assert producer_id is not None, entry.key  # put_sequential made it under the prefix
    return producer_id


class ProduceRejected(Exception):
    def __init__(self, error: ErrorCode, message: str):
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class Duplicate:
    """The batch was committed before: answer with the offset it got then."""

    base_offset: int


@dataclass
class _State:
    epoch: int = -1
    batches: list[list[int]] = field(default_factory=list)  # [first_seq, last_seq, base_offset, count]
    pending: list[dict] = field(default_factory=list)  # {first, last, owner, since, leo}
    updated_ms: int = 0
    version: int = MUST_NOT_EXIST

    def encode(self) -> bytes:
        return json.dumps({"epoch": self.epoch, "batches": self.batches, "pending": self.pending,
                           "updated_ms": self.updated_ms}).encode()

    @classmethod
    def decode(cls, value: bytes, version: int) -> "_State":
        d = json.loads(value)
        return cls(d["epoch"], d["batches"], d["pending"], d["updated_ms"], version)

    def last_seq(self) -> int | None:
        seqs = [b[1] for b in self.batches] + [p["last"] for p in self.pending]
        return seqs[-1] if seqs else None


def _next_seq(seq: int) -> int:
    return 0 if seq == 0x7FFFFFFF else seq + 1


@dataclass
class _Submitted:
    """One batch waiting for its reservation, and the caller's way to append it once reserved."""

    summary: BatchSummary
    log_end: int
    append: Callable[[float], asyncio.Future]  # (reservation deadline) -> future of the base offset
    future: asyncio.Future  # what the produce response waits for: the base offset


class ProducerStates:
    """Validates and reserves idempotent batches for this broker (one instance per broker process).

    Batches are submitted without waiting; per (partition, producer) one task takes every batch queued so far,
    checks them in order against the stored state and reserves them all with one CAS, then appends them in order.
    So a producer with several requests in flight pays one store round trip per group, not per batch."""

    def __init__(self, store: MetadataStore, index: OffsetIndex, read_batch_headers, *,
                 expiration_ms: int = DEFAULT_EXPIRATION_MS):
        self.store = store
        self.index = index
        self.read_batch_headers = read_batch_headers  # async (PartitionRef, IndexEntry) -> [(pid, epoch, first_seq, offset)]
        self.expiration_ms = expiration_ms
        self.instance = uuid.uuid4().hex  # owner of this process's reservations
        self._queues: dict[tuple[PartitionRef, int], list[_Submitted]] = {}
        # Outcomes known here but not yet written to the state key: (key) -> {first_seq: (base_offset, count) | None}
        self._outcomes: dict[tuple[PartitionRef, int], dict[int, tuple[int, int] | None]] = {}
        self._in_flight: dict[tuple[PartitionRef, int, int], asyncio.Future] = {}

    def _key(self, p: PartitionRef, pid: int) -> str:
        return f"{keyspace.index_dir(p.topic_id, p.partition).prefix}pid-{pid:020d}"

    def submit(self, p: PartitionRef, summary: BatchSummary, log_end: int,
               append: Callable[[float], asyncio.Future]) -> asyncio.Future:
        """Queue an idempotent batch; the future gives its base offset (the first one's, for a duplicate) or
        fails with ProduceRejected or the append's error. append(deadline) is called, in submission order, once
        the batch is reserved."""
        key = (p, summary.producer_id)
        future = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = []
            asyncio.create_task(self._drain(key), name=f"producer-{summary.producer_id}-{p.partition}")
        queue.append(_Submitted(summary, log_end, append, future))
        return future

    async def _drain(self, key: tuple[PartitionRef, int]) -> None:
        try:
            while self._queues[key]:
                group, self._queues[key] = self._queues[key], []
                try:
                    await self._reserve_group(key, group)
                except Exception as e:  # a store failure: every batch of the group fails, retriably
                    log.warning("reserving idempotent batches of producer %d on %s failed: %r", key[1], key[0], e)
                    for item in group:
                        if not item.future.done():
                            item.future.set_exception(ProduceRejected(ErrorCode.kafka_storage_error, str(e)))
        finally:
            del self._queues[key]

    async def _reserve_group(self, key: tuple[PartitionRef, int], group: list[_Submitted]) -> None:
        p, pid = key
        while True:
            state = await self._load(p, pid)
            self._fold_outcomes(key, state)
            decisions = []
            now_ms = int(time.time() * 1000)
            for item in group:
                s = item.summary
                joined = self._in_flight.get((p, pid, s.base_sequence))
                if joined is not None and not joined.done():
                    decisions.append(joined)
                    continue
                try:
                    verdict = await self._check(p, pid, state, s.producer_epoch, s.base_sequence, s.last_sequence)
                except ProduceRejected as e:
                    log.info("producer %d epoch %d seq %d-%d on %s refused: %s", pid, s.producer_epoch,
                             s.base_sequence, s.last_sequence, p, e)
                    decisions.append(e)
                    continue
                if verdict is None:
                    if s.producer_epoch != state.epoch:
                        state.epoch, state.batches, state.pending = s.producer_epoch, [], []
                    state.pending.append({"first": s.base_sequence, "last": s.last_sequence, "owner": self.instance,
                                          "since": now_ms, "leo": item.log_end})
                    state.updated_ms = now_ms
                decisions.append(verdict)
            if any(d is None for d in decisions):
                try:
                    await self.store.put(self._key(p, pid), state.encode(), expected_version=state.version,
                                         partition_key=p.partition_key)
                except VersionMismatchError:
                    continue  # another broker changed it: check the whole group again against what it wrote
                # The store now holds the outcomes folded in above: forget them here.
                outcomes = self._outcomes.setdefault(key, {})
                for b in state.batches:
                    if outcomes.get(b[0]) is not None:
                        del outcomes[b[0]]
            break
        deadline = time.monotonic() + RESERVATION_TTL_S / 2
        for item, decision in zip(group, decisions):
            if decision is None:
                self._append_reserved(key, item, deadline)
            elif isinstance(decision, Duplicate):
                item.future.set_result(decision.base_offset)
            elif isinstance(decision, ProduceRejected):
                item.future.set_exception(decision)
            else:  # the same batch is being appended here: answer with its outcome
                _chain(decision, item.future)

    def _append_reserved(self, key, item: _Submitted, deadline: float) -> None:
        p, pid = key
        first = item.summary.base_sequence
        self._outcomes.setdefault(key, {})[first] = None
        in_flight = asyncio.get_running_loop().create_future()
        self._in_flight[(p, pid, first)] = in_flight
        appended = item.append(deadline)

        def done(f: asyncio.Future, count=item.summary.record_count) -> None:
            self._in_flight.pop((p, pid, first), None)
            outcomes = self._outcomes.setdefault(key, {})
            if f.cancelled() or f.exception() is not None:
                outcomes.pop(first, None)
            else:
                outcomes[first] = (f.result(), count)
            _chain(f, in_flight)
            _chain(f, item.future)

        appended.add_done_callback(done)

    async def _load(self, p: PartitionRef, pid: int) -> _State:
        found = await self.store.get(self._key(p, pid), partition_key=p.partition_key)
        if found is None:
            return _State()
        state = _State.decode(found.value, found.version)
        if state.updated_ms < time.time() * 1000 - self.expiration_ms:
            return _State(version=found.version)  # expired: behaves like an unknown producer
        return state

    def _fold_outcomes(self, key, state: _State) -> None:
        """Move this broker's finished reservations from pending to committed batches (in this copy of the
        state; the outcomes are forgotten only once a state holding them is written)."""
        outcomes = self._outcomes.get(key, {})
        still = []
        for pending in state.pending:
            result = outcomes.get(pending["first"]) if pending["owner"] == self.instance else None
            if result is not None:
                state.batches.append([pending["first"], pending["last"], result[0], result[1]])
            elif pending["owner"] == self.instance and pending["first"] not in outcomes:
                continue  # it failed here: drop it, the producer retries it
            else:
                still.append(pending)
        state.pending = still
        del state.batches[:-MAX_REMEMBERED_BATCHES]

    async def _check(self, p, pid, state: _State, epoch, first, last):
        if state.epoch >= 0 and epoch < state.epoch:
            raise ProduceRejected(ErrorCode.invalid_producer_epoch,
                                  f"producer {pid} epoch {epoch} is older than the current epoch {state.epoch}")
        if epoch == state.epoch:
            for b in state.batches:
                if b[0] == first and b[1] == last:
                    return Duplicate(b[2])
            for pending in list(state.pending):
                if pending["first"] == first and pending["last"] == last:
                    return await self._resolve(p, pid, state, pending, epoch)
            last_seq = state.last_seq()
            if last_seq is not None and first != _next_seq(last_seq):
                raise ProduceRejected(ErrorCode.out_of_order_sequence_number,
                                      f"producer {pid} sent sequence {first}, expected {_next_seq(last_seq)}")
        elif state.epoch >= 0 and first != 0:
            raise ProduceRejected(ErrorCode.out_of_order_sequence_number,
                                  f"producer {pid} started epoch {epoch} at sequence {first}, not 0")
        return None

    async def _resolve(self, p, pid, state: _State, pending: dict, epoch: int):
        """A batch reserved by someone else (or an earlier life of this broker) is retried here."""
        found = await self._find_in_index(p, pid, epoch, pending["first"], pending["leo"])
        if found is not None:
            return Duplicate(found)
        age_s = time.time() - pending["since"] / 1000
        if age_s < RESERVATION_TTL_S:
            raise ProduceRejected(ErrorCode.request_timed_out,
                                  f"producer {pid} sequence {pending['first']} is being appended by another broker")
        state.pending.remove(pending)  # its owner can no longer append it: reserve it again
        return None

    async def _find_in_index(self, p, pid, epoch, first_seq, from_offset) -> int | None:
        for entry in await self.index.entries(p, IndexFamily.WAL):
            if entry.end <= from_offset:
                continue
            for h_pid, h_epoch, h_seq, offset in await self.read_batch_headers(p, entry):
                if (h_pid, h_epoch, h_seq) == (pid, epoch, first_seq):
                    return offset
        return None



def _chain(source: asyncio.Future, target: asyncio.Future) -> None:
    """Complete target like source, now or when source completes."""
    def copy(f: asyncio.Future) -> None:
        if target.done():
            return
        if f.cancelled():
            target.cancel()
        elif f.exception() is not None:
            target.set_exception(f.exception())
        else:
            target.set_result(f.result())

    if source.done():
        copy(source)
    else:
        source.add_done_callback(copy)


def batch_headers(data) -> list[tuple[int, int, int, int]]:
    """(producer id, epoch, base sequence, offset) of each batch in patched chunk bytes."""
    return [(h.producer_id, h.producer_epoch, h.base_sequence, h.base_offset) for _, h in iter_batch_positions(data)]
