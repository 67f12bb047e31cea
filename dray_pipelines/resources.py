"""The Dagster resource that gives assets, ops and sensors the log: `dray: DrayLake`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from dagster import ConfigurableResource

from dray_pipelines.lake import Lake, open_lake
from dray_pipelines.settings import LakeSettings, load_lake_settings

T = TypeVar("T")


class DrayLake(ConfigurableResource):
    """Where the log and the tables are, and the pipeline's thresholds. Unset fields come from DRAY_* variables
    (the same ones `dray broker` reads), then from the defaults (embedded stores under ./dray-data)."""

    data_dir: str | None = None
    metadata: str | None = None
    object_store: str | None = None
    catalog: str | None = None
    warehouse: str | None = None
    compact_bytes: int | None = None
    compact_age_ms: int | None = None
    compact_max_bytes: int | None = None
    row_group_bytes: int | None = None
    row_group_records: int | None = None
    wal_gc_grace_ms: int | None = None
    orphan_ttl_ms: int | None = None
    snapshot_retention_ms: int | None = None

    @classmethod
    def from_settings(cls, settings: LakeSettings) -> "DrayLake":
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            value = getattr(settings, name, None)
            if value is not None:
                values[name] = str(value.resolve()) if isinstance(value, Path) else value
        return cls(**values)

    def settings(self) -> LakeSettings:
        return load_lake_settings({name: getattr(self, name) for name in type(self).model_fields})

    def run(self, fn: Callable[[Lake], Awaitable[T]]) -> T:
        """Run fn(lake) on a fresh event loop with the stores open."""
        settings = self.settings()

        async def main() -> T:
            async with open_lake(settings) as lake:
                return await fn(lake)

        return asyncio.run(main())
