"""Helper process for the metadata contract tests.

Usage: metadata_child.py URL KEY [SESSION_TIMEOUT_MS]

Opens the metadata store at URL and holds KEY as an ephemeral key of its session, as a broker holds its
registration: it writes the key in every session generation (after an expiry, in the renewed session) and prints
'ready <generation>' each time. It runs until it is killed. The tests SIGKILL it and wait for the key to go when
the session expires, or SIGSTOP it past the session timeout and wait for it to come back in a new generation.
"""

from __future__ import annotations

import asyncio
import os
import sys


async def main() -> None:
    url, key = sys.argv[1], sys.argv[2]
    timeout_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    from dray_broker.metadata import MetadataError, open_metadata_store

    store = await open_metadata_store(url, session_timeout_ms=timeout_ms)
    while True:
        generation = await store.session.wait_alive()
        try:
            await store.put(key, f"pid={os.getpid()} generation={generation}".encode(), ephemeral=True,
                            session=generation)
        except MetadataError as e:  # the generation ended meanwhile (or the store is unreachable): next one
            print(f"put failed: {e!r}", file=sys.stderr, flush=True)
            await asyncio.sleep(0.1)
            continue
        print(f"ready {generation}", flush=True)
        await store.session.wait_ended(generation)


if __name__ == "__main__":
    asyncio.run(main())
