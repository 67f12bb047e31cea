"""Idempotent producers: producer ids, and per-partition producer state that makes retried batches land once.

    /dray/producer-ids-<n>                          sequence keys: each InitProducerId takes the next id
    /dray/idx/<topic_id>/<partition>/pid-<id>       JSON producer state of one producer on one partition

A producer state holds the producer's epoch, the sequence ranges and base offsets of its last 5 committed batches,
and the batches reserved but not yet known to be committed ("pending"). Any broker validates a batch against it:

1. Reserve: one CAS on the state key records the batch as pending (owner instance, time, log end at that time).
   Of two brokers racing with the same batch, exactly one reservation succeeds; the other re-reads and sees it.
2. Append the batch through the WAL writer and the offset index as usual; the reservation's deadline is checked
   right before the index append, so an owner that stalled past RESERVATION_TTL_S / 2 fails instead of appending.
3. The outcome lands in the state at the next reservation (batches move from pending to committed with their
   offsets), so the common case costs one extra store write per batch.

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

from kio.schema.errors import ErrorCode

from dray_broker.index.offsets import OffsetIndex, PartitionRef
from dray_broker.metadata import MUST_NOT_EXIST, MetadataStore, VersionMismatchError
from dray_broker.records.batch import BatchSummary, iter_batch_positions

log = logging.getLogger(__name__)

ID_SEQUENCE = "/dray/producer-ids"
MAX_REMEMBERED_BATCHES = 5
RESERVATION_TTL_S = 30.0
DEFAULT_EXPIRATION_MS = 86_400_000  # producer.id.expiration.ms


async def allocate_producer_id(store: MetadataStore) -> int:
    entry = await store.put_sequential(ID_SEQUENCE, b"", [1], partition_key="producer-ids")
    return int(entry.key.rsplit("-", 1)[1])


class ProduceRejected(Exception):
    def __init__(self, error: ErrorCode, message: str):
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class Duplicate:
    """The batch was committed before: answer with the offset it got then."""

    base_offset: int


@dataclass
class Reservation:
    """A batch reserved for appending: the caller appends it and reports the outcome."""

    state: "ProducerStates"
    key: tuple[PartitionRef, int]
    first_seq: int
    last_seq: int
    deadline: float  # monotonic time after which the owner must not append it any more

    def committed(self, base_offset: int, record_count: int) -> None:
        self.state._committed(self, base_offset, record_count)

    def failed(self) -> None:
        self.state._failed(self)


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


class ProducerStates:
    """Validates and reserves idempotent batches for this broker (one instance per broker process)."""

    def __init__(self, store: MetadataStore, index: OffsetIndex, read_batch_headers, *,
                 expiration_ms: int = DEFAULT_EXPIRATION_MS):
        self.store = store
        self.index = index
        self.read_batch_headers = read_batch_headers  # async (PartitionRef, IndexEntry) -> [(pid, epoch, first_seq, offset)]
        self.expiration_ms = expiration_ms
        self.instance = uuid.uuid4().hex  # owner of this process's reservations
        self._locks: dict[tuple[PartitionRef, int], asyncio.Lock] = {}
        # Outcomes known here but not yet written to the state key: (key) -> {first_seq: (base_offset, count) | None}
        self._outcomes: dict[tuple[PartitionRef, int], dict[int, tuple[int, int] | None]] = {}
        self._in_flight: dict[tuple[PartitionRef, int, int], asyncio.Future] = {}

    def _key(self, p: PartitionRef, pid: int) -> str:
        return f"{p.dir}pid-{pid:020d}"

    async def reserve(self, p: PartitionRef, summary: BatchSummary, log_end: int) -> Reservation | Duplicate | asyncio.Future:
        """Check the batch against the producer's state and reserve it. Returns a Reservation (append it), a
        Duplicate (answer with its offset), or a future of the base offset (the same batch is in flight here).
        Raises ProduceRejected."""
        pid, epoch, first, last = summary.producer_id, summary.producer_epoch, summary.base_sequence, summary.last_sequence
        key = (p, pid)
        in_flight = self._in_flight.get((p, pid, first))
        if in_flight is not None and not in_flight.done():
            return in_flight
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            while True:
                state = await self._load(p, pid)
                self._fold_outcomes(key, state)
                try:
                    verdict = await self._check(p, pid, state, epoch, first, last)
                except ProduceRejected as e:
                    log.info("producer %d epoch %d seq %d-%d on %s refused: %s", pid, epoch, first, last, p, e)
                    raise
                if verdict is not None:
                    log.debug("producer %d epoch %d seq %d-%d on %s: %s", pid, epoch, first, last, p, verdict)
                    return verdict
                now_ms = int(time.time() * 1000)
                if epoch != state.epoch:
                    state.epoch, state.batches, state.pending = epoch, [], []
                state.pending.append({"first": first, "last": last, "owner": self.instance, "since": now_ms,
                                      "leo": log_end})
                state.updated_ms = now_ms
                try:
                    await self.store.put(self._key(p, pid), state.encode(), expected_version=state.version,
                                         partition_key=p.partition_key)
                except VersionMismatchError:
                    continue  # another broker changed it: check again against what it wrote
                # The store now holds the outcomes folded in above: forget them here.
                outcomes = self._outcomes.setdefault(key, {})
                for b in state.batches:
                    if outcomes.get(b[0]) is not None:
                        del outcomes[b[0]]
                outcomes[first] = None
                self._in_flight[(p, pid, first)] = asyncio.get_running_loop().create_future()
                return Reservation(self, key, first, last, time.monotonic() + RESERVATION_TTL_S / 2)

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
        for entry in await self.index.entries(p, "wal-"):
            if entry.end <= from_offset:
                continue
            for h_pid, h_epoch, h_seq, offset in await self.read_batch_headers(p, entry):
                if (h_pid, h_epoch, h_seq) == (pid, epoch, first_seq):
                    return offset
        return None

    def _committed(self, r: Reservation, base_offset: int, count: int) -> None:
        self._outcomes.setdefault(r.key, {})[r.first_seq] = (base_offset, count)
        self._settle(r, base_offset)

    def _failed(self, r: Reservation) -> None:
        self._outcomes.get(r.key, {}).pop(r.first_seq, None)
        self._settle(r, None)

    def _settle(self, r: Reservation, base_offset: int | None) -> None:
        p, pid = r.key
        future = self._in_flight.pop((p, pid, r.first_seq), None)
        if future is not None and not future.done():
            if base_offset is None:
                future.set_exception(ProduceRejected(ErrorCode.kafka_storage_error, "the original append failed"))
                future.exception()  # retrieved: a retry that joined it handles it
            else:
                future.set_result(base_offset)


def batch_headers(data) -> list[tuple[int, int, int, int]]:
    """(producer id, epoch, base sequence, offset) of each batch in patched chunk bytes."""
    return [(h.producer_id, h.producer_epoch, h.base_sequence, h.base_offset) for _, h in iter_batch_positions(data)]
