"""The Dagster resource that gives assets, ops and sensors the log: `dray: DrayLake`.

Its fields are the pipeline settings (dray_broker.config.LakeSettings), each optional: a field set in the resource's
config wins, as a flag does; the others come from DRAY_* variables, the config file and the defaults, read through
the same loader as every other command, when a run or a sensor asks for `settings()`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Awaitable, Callable, TypeVar, get_args

from dagster import ConfigurableResource
from pydantic import Field, create_model

from dray_broker.config import LakeSettings
from dray_pipelines.lake import Lake, open_lake

T = TypeVar("T")


class _DrayLake(ConfigurableResource):
    """Where the log and the tables are, and the pipeline's thresholds (unset: DRAY_* variables, then the defaults,
    embedded stores under ./dray-data)."""

    @classmethod
    def from_settings(cls, settings: LakeSettings) -> "DrayLake":
        """A resource that pins every setting (what `dray compact` and the Runner use)."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            value = getattr(settings, name)
            if value is not None:
                values[name] = str(value.resolve()) if isinstance(value, Path) else value
        return cls(**values)

    def settings(self) -> LakeSettings:
        return LakeSettings.load({name: getattr(self, name) for name in type(self).model_fields})

    def run(self, fn: Callable[[Lake], Awaitable[T]]) -> T:
        """Run fn(lake) on a fresh event loop with the stores open."""
        settings = self.settings()

        async def main() -> T:
            async with open_lake(settings) as lake:
                return await fn(lake)

        return asyncio.run(main())


def _config_type(annotation: Any) -> type:
    """The Dagster config type of a settings field: its type without None, a path as a string."""
    if isinstance(annotation, UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not NoneType]
    return str if annotation is Path else annotation


# One optional field per pipeline setting, with its description.
DrayLake = create_model(
    "DrayLake", __base__=_DrayLake, __module__=__name__,
    **{name: (_config_type(info.annotation) | None, Field(None, description=info.description))
       for name, info in LakeSettings.model_fields.items()},
)
