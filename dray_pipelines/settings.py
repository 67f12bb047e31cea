"""Settings of the lakehouse pipeline: where the log is (the broker's metadata and object stores), where the
Iceberg tables go, and the thresholds of compaction, garbage collection and retention.

Read like the broker's settings: defaults < DRAY_* environment variables < explicit values (flags). The storage
settings have the broker's names and defaults (DRAY_DATA_DIR, DRAY_METADATA, DRAY_OBJECT_STORE), so a broker and
the pipeline started with the same environment see the same log.

Catalog URLs (--catalog / DRAY_CATALOG):
    sqlite:///path/catalog.db          SQL catalog on SQLite (default: <data-dir>/catalog.db)
    postgresql://user:pw@host/db       SQL catalog on PostgreSQL
    http(s)://host:port/...            Iceberg REST catalog
The warehouse (--warehouse / DRAY_WAREHOUSE) defaults to `iceberg/` inside the object store, so Parquet files live
next to the WAL, and brokers read them through the same object store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, urlparse, urlunparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "DRAY_"
WAREHOUSE_KEY_PREFIX = "iceberg"
MiB = 1024 * 1024


class LakeSettingsError(Exception):
    pass


class LakeSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True, frozen=True)

    data_dir: Path = Field(Path("./dray-data"), description="where embedded defaults keep their files")
    metadata: str | None = Field(None, description="sqlite:///path/meta.db or oxia://host:6648")
    object_store: str | None = Field(None, description="file:///path or s3://bucket/prefix?endpoint=...")
    catalog: str | None = Field(None, description="Iceberg catalog: sqlite:///path, postgresql://..., http(s)://")
    warehouse: str | None = Field(None, description="where table data goes (default: iceberg/ in the object store)")
    namespace: str = Field("dray", description="Iceberg namespace of the topic tables")

    compact_bytes: int = Field(64 * MiB, ge=0, description="uncompacted WAL bytes of a partition that start a run")
    compact_age_ms: int = Field(10 * 60_000, ge=0, description="age of the oldest uncompacted WAL entry that starts a run")
    compact_max_bytes: int = Field(256 * MiB, gt=0, description="most WAL bytes one compaction run takes")
    row_group_bytes: int = Field(8 * MiB, gt=0, description="record bytes per Parquet row group (one fetch unit)")
    row_group_records: int = Field(32_768, gt=0, description="most records per Parquet row group")
    wal_gc_grace_ms: int = Field(5 * 60_000, ge=0, description="time a compacted WAL object stays readable")
    orphan_ttl_ms: int = Field(60 * 60_000, ge=0, description="age after which an unindexed WAL object is deleted")
    snapshot_retention_ms: int = Field(24 * 3600_000, ge=0, description="Iceberg snapshots kept for time travel")
    sensor_interval_s: int = Field(15, gt=0, description="seconds between sensor evaluations in the daemon")

    # --- derived locations ------------------------------------------------------------------------------------

    @property
    def metadata_url(self) -> str:
        return self.metadata or f"sqlite://{self.data_dir.resolve()}/meta.db"

    @property
    def object_store_url(self) -> str:
        return self.object_store or f"file://{self.data_dir.resolve()}/objects"

    @property
    def catalog_url(self) -> str:
        return self.catalog or f"sqlite:///{self.data_dir.resolve()}/catalog.db"

    @property
    def warehouse_url(self) -> str:
        """The warehouse as a URI: file:///..., or s3://bucket/prefix (query parameters removed)."""
        if self.warehouse:
            return self.warehouse.rstrip("/")
        parsed = urlparse(self.object_store_url)
        path = parsed.path.rstrip("/") + "/" + WAREHOUSE_KEY_PREFIX
        return urlunparse((parsed.scheme, parsed.netloc, path, "", "", ""))

    @property
    def warehouse_key_prefix(self) -> str | None:
        """Object store key under which warehouse files are (when the warehouse is inside the object store)."""
        return None if self.warehouse else WAREHOUSE_KEY_PREFIX

    def object_key(self, uri: str) -> str | None:
        """The object store key of a warehouse file URI, or None when it is not inside the object store."""
        parsed = urlparse(self.object_store_url)
        base = urlunparse((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", "", "")) + "/"
        if parsed.scheme == "file":
            uri = "file://" + urlparse(uri).path if uri.startswith(("file:", "/")) else uri
            base = "file://" + parsed.path.rstrip("/") + "/"
        return uri[len(base):] if uri.startswith(base) else None

    def s3_options(self) -> dict[str, str]:
        """Endpoint and credentials from an s3:// object store URL (for pyiceberg's FileIO and DuckDB)."""
        parsed = urlparse(self.object_store_url)
        if parsed.scheme != "s3":
            return {}
        return {k: v[-1] for k, v in parse_qs(parsed.query).items()}

    def fileio_properties(self) -> dict[str, str]:
        """pyiceberg FileIO properties for the warehouse."""
        props: dict[str, str] = {}
        q = self.s3_options()
        if q.get("endpoint"):
            props["s3.endpoint"] = q["endpoint"]
            props["s3.force-virtual-addressing"] = "false"
        if q.get("access_key_id"):
            props["s3.access-key-id"] = q["access_key_id"]
        if q.get("secret_access_key"):
            props["s3.secret-access-key"] = q["secret_access_key"]
        if q.get("session_token"):
            props["s3.session-token"] = q["session_token"]
        props["s3.region"] = q.get("region") or os.environ.get("AWS_REGION") or "us-east-1"
        return props

    def env(self) -> dict[str, str]:
        """These settings as DRAY_* environment variables (for the Dagster processes)."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None:
                out[ENV_PREFIX + name.upper()] = str(value.resolve() if isinstance(value, Path) else value)
        return out


def load_lake_settings(values: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> LakeSettings:
    """Defaults < DRAY_* environment < values (None values are ignored)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    for name in LakeSettings.model_fields:
        env = environ.get(ENV_PREFIX + name.upper())
        if env is not None and env != "":
            merged[name] = env
    for name, value in (values or {}).items():
        if name in LakeSettings.model_fields and value is not None:
            merged[name] = value
    try:
        return LakeSettings(**merged)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise LakeSettingsError(f"invalid pipeline settings: {problems}") from None
