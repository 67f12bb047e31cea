"""The metadata store: one Oxia-shaped interface, two backends, chosen by URL (open_metadata_store):
sqlite:///path/meta.db (embedded) or oxia://host:6648[/namespace].

How the pieces fit:
- base.py: the interface (MetadataStore), its values (Entry, Notification, SequentialPut, Comparison), errors and
  SessionLife, the life of a store's session told the same way by every backend;
- keys.py: the hierarchical key order both backends follow (hierarchical_sort_key, KeyPrefix);
- sequence.py: sequence keys (put_sequential): one rule to build, parse and find the newest, one argument check;
- watch.py: WatchQueue, the watch every backend hands out and feeds;
- oxia/: the Oxia backend (codec, routing, retries, write and read batching, sessions, notifications, store);
- sqlite/: the SQLite backend (schema, store thread with group commit, watches, sessions, store).
Code outside this package imports from `dray_broker.metadata` only, except to name a backend's class.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from dray_broker.metadata.base import (
    MUST_NOT_EXIST,
    Comparison,
    Entry,
    KeyNotFoundError,
    MetadataError,
    MetadataStore,
    Notification,
    NotificationType,
    SequentialPut,
    SessionExpiredError,
    SessionLife,
    VersionMismatchError,
    Watch,
)
from dray_broker.metadata.keys import hierarchical_sort_key
from dray_broker.metadata.sequence import parse_sequence_key, sequence_key

__all__ = [
    "MUST_NOT_EXIST",
    "Comparison",
    "Entry",
    "KeyNotFoundError",
    "MetadataError",
    "MetadataStore",
    "Notification",
    "NotificationType",
    "SequentialPut",
    "SessionExpiredError",
    "SessionLife",
    "VersionMismatchError",
    "Watch",
    "hierarchical_sort_key",
    "open_metadata_store",
    "parse_sequence_key",
    "sequence_key",
]


async def open_metadata_store(url: str, *, session_timeout_ms: int = 10_000) -> MetadataStore:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        from dray_broker.metadata.sqlite import SqliteMetadataStore

        return await SqliteMetadataStore.open(parsed.path, session_timeout_ms=session_timeout_ms)
    if parsed.scheme == "oxia":
        from dray_broker.metadata.oxia import OxiaMetadataStore

        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        namespace = parsed.path.strip("/") or query.get("namespace", "default")
        return await OxiaMetadataStore.connect(
            parsed.netloc, namespace=namespace, session_timeout_ms=session_timeout_ms
        )
    raise ValueError(f"unsupported metadata URL {url!r}: use sqlite:///path/meta.db or oxia://host:6648")
