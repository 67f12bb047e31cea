"""The embedded (SQLite) backend (see store.py)."""

from dray_broker.metadata.sqlite.store import SqliteMetadataStore

__all__ = ["SqliteMetadataStore"]
