"""The Oxia backend (see store.py)."""

from dray_broker.metadata.oxia.store import OxiaMetadataStore

__all__ = ["OxiaMetadataStore"]
