"""How long an ACL created through one broker takes to be enforced by another: two brokers with --acls on one
metadata store (SQLite file by default, or --metadata oxia://HOST:PORT with --object-store s3://...), CreateAcls sent
to broker A, DescribeAcls (answered from the broker's own authorizer) polled on broker B every millisecond.

    .venv/bin/python -m bench.acl_propagation [--acls 20] [--metadata URL --object-store URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from kafka.protocol.admin.acl import CreateAclsRequest, CreateAclsResponse, DescribeAclsRequest, DescribeAclsResponse

from dray_broker.auth.acl_store import AclStore
from dray_broker.auth.acls import CLUSTER_NAME, AclBinding, Authorizer, Operation, PatternType, Permission
from dray_broker.auth.acls import ResourceType as R
from dray_broker.metadata import open_metadata_store
from tests.integration.brokers import BrokerProcess
from tests.integration.clients import RawClient

ANON = "User:ANONYMOUS"


async def seed(metadata: str) -> None:
    store = await open_metadata_store(metadata)
    try:
        await AclStore(store, Authorizer()).create(AclBinding(R.CLUSTER, CLUSTER_NAME, PatternType.LITERAL, ANON, "*",
                                                               Operation.ALTER, Permission.ALLOW))
    finally:
        await store.close()


def main(count: int, metadata: str | None, object_store: str | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dray-acl-bench-"))
    metadata = metadata or f"sqlite://{tmp}/meta.db"
    object_store = object_store or f"file://{tmp}/objects"
    asyncio.run(seed(metadata))
    a, b = (BrokerProcess(tmp / n, metadata=metadata, object_store=object_store, extra_args=["--acls"]).start()
            for n in ("a", "b"))
    delays = []
    try:
        with RawClient(a.bootstrap) as to_a, RawClient(b.bootstrap) as to_b:
            for i in range(count):
                topic = f"bench-{time.time_ns()}-{i}"
                started = time.perf_counter()
                created = to_a.call(CreateAclsRequest(creations=[CreateAclsRequest.AclCreation(
                    resource_type=2, resource_name=topic, resource_pattern_type=3, principal=ANON, host="*",
                    operation=3, permission_type=3)]), CreateAclsResponse, 3)
                assert created.results[0].error_code == 0, created
                while True:
                    seen = to_b.call(DescribeAclsRequest(
                        resource_type_filter=2, resource_name_filter=topic, pattern_type_filter=3,
                        principal_filter=None, host_filter=None, operation=1, permission_type=1),
                        DescribeAclsResponse, 3)
                    if seen.resources:
                        break
                    time.sleep(0.001)
                delays.append((time.perf_counter() - started) * 1000)
    finally:
        a.stop()
        b.stop()
    print(f"ACL created on broker A, enforced on broker B after: median {statistics.median(delays):.1f} ms, "
          f"max {max(delays):.1f} ms ({count} ACLs, metadata {metadata.split(':')[0]})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--acls", type=int, default=20)
    p.add_argument("--metadata")
    p.add_argument("--object-store")
    args = p.parse_args()
    main(args.acls, args.metadata, args.object_store)
