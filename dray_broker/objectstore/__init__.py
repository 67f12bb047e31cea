"""Object store backends, chosen by URL: file:///path or s3://bucket/prefix?endpoint=http://host:port."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from dray_broker.objectstore.base import (
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
)

__all__ = [
    "ObjectExistsError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStoreError",
    "open_object_store",
]


def open_object_store(url: str) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from dray_broker.objectstore.local import LocalObjectStore

        return LocalObjectStore(parsed.path)
    if parsed.scheme == "s3":
        from dray_broker.objectstore.s3 import S3ObjectStore

        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        return S3ObjectStore(bucket=parsed.netloc, prefix=parsed.path.lstrip("/"), **query)
    raise ValueError(f"unsupported object store URL {url!r}: use file:///path or s3://bucket/prefix")
