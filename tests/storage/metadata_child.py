"""Helper process for the metadata contract tests.

Usage: metadata_child.py URL KEY [SESSION_TIMEOUT_MS]

Opens the metadata store at URL, writes KEY as an ephemeral key of its session, prints 'ready' and then sleeps
until it is killed. The tests SIGKILL it and wait for the key to go when the session expires.
"""

from __future__ import annotations

import asyncio
import os
import sys


async def main() -> None:
    url, key = sys.argv[1], sys.argv[2]
    timeout_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    from dray_broker.metadata import open_metadata_store

    store = await open_metadata_store(url, session_timeout_ms=timeout_ms)
    await store.put(key, f"pid={os.getpid()}".encode(), ephemeral=True)
    print("ready", flush=True)
    while True:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())
