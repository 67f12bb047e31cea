"""How long a second KIP-848 consumer (group.protocol=consumer) waits for its partitions, and how soon the first
one is told to revoke them. confluent-kafka consumers, a topic of 6 partitions, one fresh group per round.

    .venv/bin/python bench/second_member.py [--rounds 5] [--heartbeat-interval-ms 5000]
    .venv/bin/python bench/second_member.py --bootstrap HOST:PORT   # another broker (e.g. Apache Kafka 4.x)

Without --bootstrap it starts a broker with embedded defaults and the given
--group-consumer-heartbeat-interval-ms (Kafka's group.consumer.heartbeat.interval.ms, 5000 by default).
The second consumer subscribes at a random point of the first one's heartbeat cycle (the same points for every
broker, --seed). Prints, per round and as medians: the time from the second consumer's subscribe() to the first
one's revocation callback, and to the second one's first non-empty assignment."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from tests.integration.brokers import BrokerProcess  # noqa: E402

PARTITIONS = 6


class Member:
    """One consumer polled in its own thread; records when its assignment changes."""

    def __init__(self, bootstrap: str, group: str, topic: str):
        self.owned: set[int] = set()
        self.revoked_at: float | None = None
        self.assigned_at: float | None = None
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "group.protocol": "consumer",
                                  "enable.auto.commit": False})
        self.started = time.monotonic()
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_assign(self, _c, tps) -> None:
        self.owned.update(tp.partition for tp in tps)
        if tps and self.assigned_at is None:
            self.assigned_at = time.monotonic()

    def _on_revoke(self, _c, tps) -> None:
        self.owned.difference_update(tp.partition for tp in tps)
        if tps and self.revoked_at is None:
            self.revoked_at = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.consumer.poll(0.05)
        self.consumer.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(30)


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.005)


def one_round(bootstrap: str, phase_s: float) -> tuple[float, float]:
    topic = f"second-member-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    group = f"g-{topic}"
    first = Member(bootstrap, group, topic)
    second = None
    try:
        wait(lambda: len(first.owned) == PARTITIONS, 60, "the first member's partitions")
        time.sleep(phase_s)  # join at some point of the first member's heartbeat cycle
        second = Member(bootstrap, group, topic)
        wait(lambda: second.owned and len(first.owned) + len(second.owned) == PARTITIONS, 60, "the hand-over")
        return first.revoked_at - second.started, second.assigned_at - second.started
    finally:
        for m in (first, second):
            if m is not None:
                m.close()
        admin.delete_topics([topic])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bootstrap", help="measure this broker instead of starting one")
    p.add_argument("--heartbeat-interval-ms", type=int, default=5000,
                   help="the broker's (tell it for --bootstrap: the second member joins at a random point of it)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            broker = BrokerProcess(Path(tmp), extra_args=[
                "--group-consumer-heartbeat-interval-ms", str(args.heartbeat_interval_ms),
                "--group-initial-rebalance-delay-ms", "0"]).start()
            bootstrap = broker.bootstrap
        try:
            revokes, assigns = [], []
            phases = random.Random(args.seed)
            for i in range(args.rounds):
                revoke, assign = one_round(bootstrap, phases.uniform(0, args.heartbeat_interval_ms / 1000))
                revokes.append(revoke)
                assigns.append(assign)
                print(f"round {i + 1}: first member revokes after {revoke:.2f} s, "
                      f"second member has partitions after {assign:.2f} s", flush=True)
            print(f"{'Dray' if broker else bootstrap}: median revoke {statistics.median(revokes):.2f} s, "
                  f"median assignment {statistics.median(assigns):.2f} s (max {max(assigns):.2f} s) "
                  f"over {args.rounds} rounds")
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
