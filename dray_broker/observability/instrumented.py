"""Store wrappers that time every call and count failures, without the stores knowing."""

from __future__ import annotations

import functools
import time

from dray_broker.metadata import MetadataStore
from dray_broker.objectstore import ObjectStore
from dray_broker.observability.metrics import BrokerMetrics

_OBJECT_OPS = ("put", "get", "get_writable", "head", "list", "delete")
_METADATA_OPS = ("get", "put", "put_sequential", "put_sequential_batch", "delete", "delete_range", "list", "range_scan")


class _Timed:
    """Delegates every attribute to the wrapped store; the listed coroutine methods are timed."""

    def __init__(self, inner, metrics: BrokerMetrics, store: str, ops: tuple[str, ...]):
        self._inner = inner
        for op in ops:
            setattr(self, op, self._timed(getattr(inner, op), metrics, store, op))

    @staticmethod
    def _timed(method, metrics: BrokerMetrics, store: str, op: str):
        # The labelled children are looked up once: labels() per call cost more than the timing itself.
        seconds = metrics.store_seconds.labels(store, op)
        errors = metrics.store_errors.labels(store, op)

        @functools.wraps(method)
        async def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            except Exception:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        return call

    def __getattr__(self, name):
        return getattr(self._inner, name)


def timed_object_store(store: ObjectStore, metrics: BrokerMetrics) -> ObjectStore:
    return _Timed(store, metrics, "object", _OBJECT_OPS)  # type: ignore[return-value]


def timed_metadata_store(store: MetadataStore, metrics: BrokerMetrics) -> MetadataStore:
    return _Timed(store, metrics, "metadata", _METADATA_OPS)  # type: ignore[return-value]
