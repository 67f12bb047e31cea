"""One settings object, read from (lowest to highest precedence) defaults, a YAML file, DRAY_* environment
variables and command-line flags. Every field is validated; a bad value stops the program with a clear message."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "DRAY_"


class ConfigError(Exception):
    pass


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data_dir: Path = Field(Path("./dray-data"), description="where embedded defaults keep their files")
    metadata: str | None = Field(None, description="metadata store: sqlite:///path/meta.db or oxia://host:6648 "
                                  "(default <data-dir>/meta.db)")
    object_store: str | None = Field(None, description="object store: file:///path or s3://bucket/prefix?endpoint=... "
                                      "(default <data-dir>/objects)")
    catalog: str | None = Field(None, description="Iceberg catalog: sqlite:///path (default <data-dir>/catalog.db), "
                                "postgresql://..., or an http(s):// REST catalog")
    warehouse: str | None = Field(None, description="where Iceberg table data goes (default: iceberg/ in the object "
                                  "store)")
    listen: str = Field("127.0.0.1:9092", description="HOST:PORT the Kafka listener binds")
    advertise: str | None = Field(None, description="HOST:PORT clients are told to connect to")
    http_listen: str | None = Field(None, description="HOST:PORT for /metrics, /healthz and /readyz (off if unset)")
    broker_id: int | None = Field(None, ge=0, description="broker id (default: the one kept in "
                                 "<data-dir>/meta.properties, else a new one from the metadata store)")
    zone: str | None = Field(None, description="availability zone (broker.rack)")
    flush_ms: float = Field(10.0, gt=0, description="longest a produced batch waits for its WAL flush while other "
                            "flushes are being written (with none in flight, a flush starts at once)")
    flush_bytes: int = Field(4 * 1024 * 1024, gt=0, description="buffered bytes that trigger a WAL flush")
    max_request_bytes: int = Field(100 * 1024 * 1024, gt=0, description="largest request frame accepted")
    queued_max_request_bytes: int = Field(256 * 1024 * 1024, gt=0, description="bytes of requests being received or "
                                          "waiting for their answers, across all connections (Kafka's "
                                          "queued.max.request.bytes): past it, connections stop reading until "
                                          "answers go out (one request larger than this still passes, alone)")
    auto_create_topics: bool = Field(True, description="create unknown topics on Metadata/Produce")
    default_partitions: int = Field(1, gt=0, description="partitions of an auto-created topic")
    session_timeout_ms: int = Field(6000, ge=1000, description="metadata store session: a dead broker's keys "
                                    "(registration, leases) go this long after it stops heartbeating")
    enforce_owner: bool = Field(False, description="answer NOT_LEADER_OR_FOLLOWER for partitions another broker "
                                "owns (steers clients to their zone's pseudo-leader)")
    group_initial_rebalance_delay_ms: int = Field(3000, ge=0, description="how long a new group waits for more "
                                                  "members before its first rebalance")
    group_min_session_timeout_ms: int = Field(6000, gt=0, description="smallest session timeout a member may ask for")
    group_max_session_timeout_ms: int = Field(1_800_000, gt=0, description="largest session timeout a member may ask for")
    group_consumer_session_timeout_ms: int = Field(45_000, gt=0, description="session timeout of KIP-848 "
                                                   "(group.protocol=consumer) members")
    group_consumer_heartbeat_interval_ms: int = Field(5_000, gt=0, description="heartbeat interval KIP-848 members "
                                                      "are told to use")
    offsets_retention_minutes: float = Field(10_080, gt=0, description="committed offsets of an empty group are "
                                             "deleted this long after it became empty")
    offsets_retention_check_interval_ms: int = Field(600_000, gt=0, description="how often expired offsets are looked for")
    producer_id_expiration_ms: int = Field(86_400_000, gt=0, description="an idempotent producer's state on a "
                                           "partition is forgotten this long after its last write")
    fetch_cache_bytes: int = Field(256 * 1024 * 1024, ge=0, description="bytes of WAL chunks cached for fetch")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_json: bool = Field(False, description="log one JSON object per line")

    @field_validator("listen", "advertise", "http_listen")
    @classmethod
    def _check_host_port(cls, v: str | None) -> str | None:
        return None if v is None else _host_port(v)

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite://", "oxia://")):
            raise ValueError("use sqlite:///path/meta.db or oxia://host:port")
        return v

    @field_validator("object_store")
    @classmethod
    def _check_object_store(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("file://", "s3://")):
            raise ValueError("use file:///path or s3://bucket/prefix?endpoint=http://host:port")
        return v

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("use DEBUG, INFO, WARNING or ERROR")
        return v.upper()

    @property
    def metadata_url(self) -> str:
        return self.metadata or f"sqlite://{self.data_dir.resolve()}/meta.db"

    @property
    def object_store_url(self) -> str:
        return self.object_store or f"file://{self.data_dir.resolve()}/objects"

    @property
    def advertised(self) -> tuple[str, int]:
        host, _, port = (self.advertise or self.listen).rpartition(":")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return host, int(port)


def flag_help(description: str, env: str, default: Any) -> str:
    """A flag's help: what it is, then its DRAY_* variable and its default in brackets (argparse %-escaped)."""
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, Path) and not default.is_absolute():
        shown = f"./{default}"
    else:
        shown = default
    said = f"{description} [env {env}" + (f", default {shown}]" if shown is not None else "]")
    return said.replace("%", "%%")


def _metavar(name: str) -> str:
    if name.endswith("_ms"):
        return "MS"
    if name.endswith("_bytes"):
        return "BYTES"
    if name in ("listen", "advertise", "http_listen"):
        return "HOST:PORT"
    if name in ("metadata", "object_store", "catalog", "warehouse"):
        return "URL"
    if name == "data_dir":
        return "DIR"
    return name.upper()


def add_flags(parser: argparse.ArgumentParser, fields: list[str] | None = None) -> None:
    """Add a --flag for each settings field (default None, so unset flags do not override); the help of each says
    its DRAY_* variable and its default."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"YAML file with settings (keys as the flags, with _) [env {ENV_PREFIX}CONFIG]")
    for name, info in Settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        flag = "--" + name.replace("_", "-")
        text = flag_help(info.description or "", ENV_PREFIX + name.upper(), info.default)
        if info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, default=None, help=text, metavar=_metavar(name))


def load_settings(
    flags: argparse.Namespace | Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Merge YAML file < environment < flags and validate. Raise ConfigError with every problem listed."""
    flags = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = flags.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config file {config_file}: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping of settings")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    for name in Settings.model_fields:
        env = environ.get(ENV_PREFIX + name.upper())
        if env is not None:
            values[name] = env
    for name, value in flags.items():
        if name in Settings.model_fields and value is not None:
            values[name] = value
    try:
        return Settings(**values)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
