"""The Oxia backend of the metadata store (DESIGN.md section 4): an asyncio client of Oxia's gRPC protocol.

How the pieces fit, from the bottom up:
- codec.py: protobuf encoding of the requests and decoding of the responses (the hot ones by hand);
- retries.py: which failures are transient, backoff, retrying an idempotent call;
- routing.py: Router, the namespace's shards and leaders (a shard-assignment stream) and the gRPC channels;
- own_keys.py: Oxia's own keys under __oxia/, kept out of every answer;
- writes.py: Writes, per shard a writer that coalesces puts and deletes into WriteRequests on a stream;
- reads.py: Reads, per shard a reader that coalesces gets into Read calls; lists and scans;
- sessions.py: ShardSessions, a session per shard (created on demand, kept alive), told as one SessionLife;
- notifications.py: Feeds, a notification stream per shard, fanned out to the watches (watch.py's WatchQueue);
- store.py: OxiaMetadataStore, the MetadataStore that composes them.
Each piece talks to the others through their public methods only; the store owns one of each.
"""

from dray_broker.metadata.oxia.store import OxiaMetadataStore

__all__ = ["OxiaMetadataStore"]
