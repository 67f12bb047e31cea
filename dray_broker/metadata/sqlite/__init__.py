"""The embedded backend of the metadata store: one SQLite file (see store.py for how the pieces fit)."""

from dray_broker.metadata.sqlite.store import SqliteMetadataStore

__all__ = ["SqliteMetadataStore"]
