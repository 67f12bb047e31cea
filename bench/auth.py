"""Security core figures on this machine (dray_broker/auth): authorizer checks per second against ACL sets of growing
size (literal, prefixed and wildcard ACLs over many topics), and the CPU cost of one SCRAM and one PLAIN login.

    .venv/bin/python -m bench.auth [--acls 100,10000,100000] [--checks 200000]
"""

from __future__ import annotations

import argparse
import random
import time

from dray_broker.auth.acls import AclBinding, Authorizer, Operation, PatternType, Permission, ResourceType
from dray_broker.auth.credentials import ScramMechanism
from dray_broker.auth.plain import check_login, parse_response
from dray_broker.auth.principal import user
from dray_broker.auth.scram import ScramServer, fake_credential, new_credential
from tests.unit.auth_clients import SCRAM_CLIENTS, kafka_python_plain


def acl_set(count: int, rng: random.Random) -> list[AclBinding]:
    """A mix like a multi-tenant cluster: per-user literal topic ACLs, per-team prefixes, a few wildcards and denies."""
    acls = []
    for i in range(count):
        kind = rng.random()
        principal = f"User:u{rng.randrange(count // 10 + 1)}"
        op = rng.choice([Operation.READ, Operation.WRITE, Operation.DESCRIBE])
        if kind < 0.7:
            acls.append(AclBinding(ResourceType.TOPIC, f"team{rng.randrange(500)}.topic{i}", PatternType.LITERAL,
                                   principal, "*", op, Permission.ALLOW))
        elif kind < 0.97:
            acls.append(AclBinding(ResourceType.TOPIC, f"team{rng.randrange(500)}.{rng.randrange(50)}",
                                   PatternType.PREFIXED, principal, "*", op, Permission.ALLOW))
        else:
            acls.append(AclBinding(ResourceType.TOPIC, "*", PatternType.LITERAL, principal, "*", op,
                                   rng.choice([Permission.ALLOW, Permission.DENY])))
    return acls


def bench_authorize(count: int, checks: int) -> float:
    rng = random.Random(count)
    authorizer = Authorizer()
    for b in acl_set(count, rng):
        authorizer.add(b)
    requests = [(user(f"u{rng.randrange(count // 10 + 1)}"), "10.0.0.1", rng.choice([Operation.READ, Operation.WRITE]),
                 ResourceType.TOPIC, f"team{rng.randrange(500)}.{rng.randrange(60)}{rng.randrange(1000)}")
                for _ in range(1000)]
    authorize = authorizer.authorize
    start = time.perf_counter()
    for i in range(checks):
        authorize(*requests[i % 1000])
    return checks / (time.perf_counter() - start)


def bench_logins(rounds: int = 20) -> None:
    for mechanism in ScramMechanism:
        credential = new_credential(mechanism, "secret")
        server_time = 0.0
        for _ in range(rounds):
            client = SCRAM_CLIENTS["kafka-python"]("alice", "secret", mechanism.mechanism_name)
            first = client.first()
            start = time.perf_counter()
            server = ScramServer(mechanism, b"bench")
            server.receive_client_first(first)
            server_first = server.server_first(credential)
            server_time += time.perf_counter() - start
            final = client.final(server_first)
            start = time.perf_counter()
            server.receive_client_final(final)
            server_time += time.perf_counter() - start
        print(f"{mechanism.mechanism_name} login, server side: {server_time / rounds * 1e6:.0f} us")
    fake = fake_credential(ScramMechanism.SCRAM_SHA_256, "alice", b"bench")
    for mechanism in ScramMechanism:
        credential = new_credential(mechanism, "secret")
        response = parse_response(kafka_python_plain("alice", "secret"))
        start = time.perf_counter()
        for _ in range(rounds):
            check_login(response, credential, fake)
        print(f"PLAIN login against a {mechanism.mechanism_name} credential (4096 iterations): "
              f"{(time.perf_counter() - start) / rounds * 1e3:.1f} ms (PBKDF2; run off the event loop)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acls", default="100,10000,100000")
    parser.add_argument("--checks", type=int, default=200_000)
    args = parser.parse_args()
    for count in map(int, args.acls.split(",")):
        rate = bench_authorize(count, args.checks)
        print(f"authorize with {count:>7} ACLs: {rate:,.0f} checks/s ({1e6 / rate:.2f} us per check)")
    bench_logins()


if __name__ == "__main__":
    main()
