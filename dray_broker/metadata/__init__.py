"""Metadata store backends, chosen by URL: sqlite:///path/meta.db or oxia://host:6648[/namespace]."""

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
    "open_metadata_store",
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
