"""Every setting of Dray, declared once: the broker's, the pipelines' and those of the commands that talk to a broker
or open the stores. A setting's value comes from (lowest to highest precedence) its default, the YAML file named by
--config or DRAY_CONFIG, its DRAY_* environment variable, then its command-line flag (or the Dagster resource's
config). Every field is validated; a bad value stops the program with a message naming the setting and where the
value came from.

Sections, each a pydantic-settings model read with `Section.load(flags)`:
    StorageSettings  where the log and the tables are (data_dir, metadata, object_store, catalog, warehouse) and the
                     URLs derived from them: shared by the broker, the pipelines and `dray sql`, `dray compact`,
                     `dray cluster status --metadata`
    Settings         `dray broker` and `dray up`: the storage settings and the broker's own
    LakeSettings     the pipelines (the Dagster resource DrayLake, `dray compact`, `dray sql`, `dray up`'s daemon):
                     the storage settings, compaction, GC and retention thresholds, sensor interval, step retries
    DagsterSettings  the Dagster webserver `dray up` starts
    ClientSettings   the operator commands' connection to a broker
One YAML file can hold the settings of every section (the whole system's configuration); each section takes its own
keys, and a key that is no setting of any section is refused.
"""

from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, Self
from urllib.parse import parse_qs, urlparse, urlunparse

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dray_broker.server.listeners import Listener, make_listeners

ENV_PREFIX = "DRAY_"
WAREHOUSE_KEY_PREFIX = "iceberg"
MiB = 1024 * 1024


class ConfigError(Exception):
    pass


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The settings in a YAML file (keys as the flags, with - or _), every key checked to be a setting of some
    section. Raise ConfigError when the file cannot be read, holds no mapping or names an unknown setting."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    known = setting_names() - {"config"}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"config file {path}: {key} is not a setting{hint}")
    return values


class _ConfigFile(PydanticBaseSettingsSource):
    """The YAML file named by the `config` setting, which the sources before this one (flags, environment) give."""

    def get_field_value(self, field, field_name):  # the whole file is read at once, in __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        if not path:
            return {}
        return {k: v for k, v in read_config_file(path).items() if k in self.settings_cls.model_fields}


class DraySettings(BaseSettings):
    """What every section shares: the DRAY_ prefix, the config file, the sources and their order, load()."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid",
                                      validate_assignment=True)
    what: ClassVar[str] = "settings"  # as error messages name the section

    config: Path | None = Field(None, description="YAML file with settings (keys as the flags, with _)")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ConfigFile(settings_cls)

    @classmethod
    def load(cls, flags: argparse.Namespace | Mapping[str, Any] | None = None) -> Self:
        """The settings: flags (an argparse namespace or a mapping; None is unset, other keys are ignored) over
        DRAY_* variables over the config file over defaults. Raise ConfigError with every problem listed."""
        flags = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
        given = {k: v for k, v in flags.items() if k in cls.model_fields and v is not None}
        try:
            return cls(**given)
        except ValidationError as e:
            problems = "; ".join(_problem(err, given) for err in e.errors())
            raise ConfigError(f"invalid {cls.what}: {problems}") from None

    def env(self) -> dict[str, str]:
        """These settings as DRAY_* environment variables (for child processes)."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None and name != "config":
                value = value.resolve() if isinstance(value, Path) else value
                out[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def _problem(err: dict, given: Mapping[str, Any]) -> str:
    """One validation error: the setting, what is wrong, and where the value came from."""
    if not err["loc"]:  # a problem of several settings together: its message names them
        return err["msg"].removeprefix("Value error, ")
    name = str(err["loc"][0])
    env = ENV_PREFIX + name.upper()
    if name in given:
        origin = "--" + name.replace("_", "-")
    elif os.environ.get(env):
        origin = env
    else:
        origin = f"config file {given.get('config') or os.environ.get(ENV_PREFIX + 'CONFIG')}"
    message = err["msg"].removeprefix("Value error, ")
    return f"{name}: {message} (from {origin})"


class StorageSettings(DraySettings):
    """Where the log and the tables are."""

    data_dir: Path = Field(Path("./dray-data"), description="where embedded defaults keep their files")
    metadata: str | None = Field(None, description="metadata store: sqlite:///path/meta.db or oxia://host:6648 "
                                  "(default <data-dir>/meta.db)")
    object_store: str | None = Field(None, description="object store: file:///path or s3://bucket/prefix?endpoint=... "
                                      "(default <data-dir>/objects)")
    catalog: str | None = Field(None, description="Iceberg catalog: sqlite:///path (default <data-dir>/catalog.db), "
                                "postgresql://..., or an http(s):// REST catalog")
    warehouse: str | None = Field(None, description="where Iceberg table data goes (default: iceberg/ in the object "
                                  "store)")

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

    @field_validator("catalog")
    @classmethod
    def _check_catalog(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite://", "postgresql://", "postgresql+", "http://", "https://")):
            raise ValueError("use sqlite:///path/catalog.db, postgresql://user@host/db or an Iceberg REST catalog "
                             "http(s)://host/...")
        return v

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

    def storage(self) -> dict[str, Any]:
        """The storage settings alone (to give another section the same stores)."""
        return {name: getattr(self, name) for name in StorageSettings.model_fields if name != "config"}


class Settings(StorageSettings):
    """`dray broker` (and the broker of `dray up`)."""

    listen: str = Field("127.0.0.1:9092", description="Kafka listener: PROTOCOL://HOST:PORT it binds (plaintext, ssl, "
                        "sasl_plaintext or sasl_ssl; a bare HOST:PORT is plaintext), repeatable (comma-separated in "
                        "the environment)")
    advertise: str | None = Field(None, description="PROTOCOL://HOST:PORT clients of that protocol's listener are told "
                                  "to connect to, repeatable (default: the listener's host and port)")
    tls_cert: Path | None = Field(None, description="PEM certificate (chain) of the ssl and sasl_ssl listeners; "
                                  "reloaded when the file changes or on SIGHUP")
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert (unencrypted)")
    tls_ca: Path | None = Field(None, description="PEM CA certificate(s) that sign client certificates: ssl and "
                                "sasl_ssl clients must present one (mTLS; the principal of an ssl client is its "
                                "certificate's subject)")
    tls_principal_mapping_rules: str = Field("DEFAULT", description="how a client certificate's subject names the "
                                             "principal, as Kafka's ssl.principal.mapping.rules "
                                             "(RULE:pattern/replacement/[LU],...,DEFAULT)")
    tls_check_ms: int = Field(1000, ge=0, description="how often the TLS files are checked for changes (0: reloaded "
                              "on SIGHUP only)")
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
    fetch_cache_bytes: int = Field(1024 * 1024 * 1024, ge=0, description="bytes of record batches cached for "
                                   "fetch (recent commits and chunks read back), least recently used out first")
    sasl_mechanisms: str = Field("SCRAM-SHA-256,SCRAM-SHA-512,PLAIN", description="SASL mechanisms of the "
                                 "sasl_plaintext and sasl_ssl listeners, comma-separated: SCRAM-SHA-256, "
                                 "SCRAM-SHA-512, PLAIN (checked against the SCRAM credential), OAUTHBEARER (needs "
                                 "--sasl-oauthbearer-jwks-url)")
    connections_max_reauth_ms: int = Field(0, ge=0, description="longest a SASL login lasts before the client must "
                                           "re-authenticate (KIP-368; 0: until the connection closes, or the "
                                           "OAUTHBEARER token expires)")
    sasl_oauthbearer_jwks_url: str | None = Field(None, description="the JSON Web Key Set that OAUTHBEARER tokens "
                                                  "are checked with: a file path, file:// or https:// URL")
    sasl_oauthbearer_jwks_refresh_ms: int = Field(3_600_000, gt=0, description="how often the JWKS is read again "
                                                  "(also at once, at most every 10 s, for a token with an unknown kid)")
    sasl_oauthbearer_expected_audience: str | None = Field(None, description="audiences a token's aud claim must "
                                                           "name one of (comma-separated; unset: not checked)")
    sasl_oauthbearer_expected_issuer: str | None = Field(None, description="the issuer a token's iss claim must be "
                                                         "(unset: not checked)")
    sasl_failed_login_limit: int = Field(20, ge=0, description="failed SASL logins from one client address within "
                                         "--sasl-failed-login-window-ms after which its logins fail at once (0: no "
                                         "limit)")
    sasl_failed_login_window_ms: int = Field(60_000, gt=0, description="the window of --sasl-failed-login-limit")
    connection_failed_authentication_delay_ms: int = Field(100, ge=0, description="how long the answer to a failed "
                                                           "login (and the close after it) waits, as Kafka's "
                                                           "connection.failed.authentication.delay.ms: slows down "
                                                           "clients that retry at once")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_json: bool = Field(False, description="log one JSON object per line")
    acls: bool = Field(False, description="authorize every request by the cluster's ACLs (Kafka's "
                       "authorizer.class.name); off: everyone may do everything")
    super_users: str | None = Field(None, description="principals allowed everything, comma-separated "
                                    "(User:admin,User:ops), as Kafka's super.users")
    allow_everyone_if_no_acl_found: bool = Field(False, description="allow a request on a resource that has no ACL "
                                                 "at all, as Kafka's allow.everyone.if.no.acl.found")

    @field_validator("listen", "advertise", mode="before")
    @classmethod
    def _join_endpoints(cls, v: Any) -> Any:
        """A repeated flag (or a YAML list) is the endpoints one after another."""
        return ",".join(str(e).strip() for e in v) if isinstance(v, (list, tuple)) else v

    @field_validator("http_listen")
    @classmethod
    def _check_host_port(cls, v: str | None) -> str | None:
        return None if v is None else _host_port(v)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        make_listeners(v)
        return v

    @field_validator("advertise")
    @classmethod
    def _check_advertise(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and "listen" in info.data:  # (a bad listen is reported by itself)
            make_listeners(info.data["listen"], v)
        return v

    @field_validator("tls_principal_mapping_rules")
    @classmethod
    def _check_mapping_rules(cls, v: str) -> str:
        from dray_broker.auth.principal import SslPrincipalMapper

        SslPrincipalMapper(v)
        return v

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        """TLS listeners need a certificate and its key; the files themselves are read when the broker starts."""
        try:
            needing = [str(listener) for listener in self.listeners if listener.tls]
        except ValueError:  # reported by the listen or advertise setting
            return self
        if needing and (self.tls_cert is None or self.tls_key is None):
            raise ValueError(f"{' and '.join(needing)} need{'s' if len(needing) == 1 else ''} --tls-cert and "
                             "--tls-key (DRAY_TLS_CERT, DRAY_TLS_KEY): PEM files of the broker's certificate and key")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        return self

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("use DEBUG, INFO, WARNING or ERROR")
        return v.upper()

    @field_validator("super_users")
    @classmethod
    def _check_super_users(cls, v: str | None) -> str | None:
        if v is not None:
            for name in v.split(","):
                if ":" not in name.strip():
                    raise ValueError(f"{name.strip()!r} is not a principal (Type:name, e.g. User:admin)")
        return v

    @property
    def super_user_list(self) -> list[str]:
        return [s.strip() for s in (self.super_users or "").split(",") if s.strip()]

    @field_validator("sasl_mechanisms")
    @classmethod
    def _check_mechanisms(cls, v: str) -> str:
        from dray_broker.auth.sasl import MECHANISMS

        names = [m.strip().upper() for m in v.split(",") if m.strip()]
        unknown = [m for m in names if m not in MECHANISMS]
        if not names or unknown or len(set(names)) != len(names):
            raise ValueError(f"list each of {', '.join(MECHANISMS)} at most once" +
                             (f" ({', '.join(unknown)} is not one)" if unknown else ""))
        return ",".join(names)

    @model_validator(mode="after")
    def _check_oauthbearer(self) -> Self:
        if "OAUTHBEARER" in self.enabled_sasl_mechanisms and not self.sasl_oauthbearer_jwks_url:
            raise ValueError("sasl_mechanisms has OAUTHBEARER: set sasl_oauthbearer_jwks_url too")
        return self

    @property
    def enabled_sasl_mechanisms(self) -> tuple[str, ...]:
        return tuple(self.sasl_mechanisms.split(","))

    @property
    def listeners(self) -> list[Listener]:
        """The Kafka listeners (port 0 ones not bound yet), in the order given."""
        return make_listeners(self.listen, self.advertise)

    @property
    def advertised(self) -> tuple[str, int]:
        """Where clients of the first listener are told to connect (port 0: the bound port, once bound)."""
        first = self.listeners[0]
        return first.advertised_host, first.advertised_port or first.port


class LakeSettings(StorageSettings):
    """The pipelines: where the tables go, and the thresholds of compaction, garbage collection and retention."""

    model_config = SettingsConfigDict(frozen=True)
    what: ClassVar[str] = "pipeline settings"

    namespace: str = Field("dray", description="Iceberg namespace of the topic tables")
    compact_bytes: int = Field(64 * MiB, ge=0, description="uncompacted WAL bytes of a partition that start a run")
    compact_age_ms: int = Field(10 * 60_000, ge=0, description="age of the oldest uncompacted WAL entry that starts a "
                                "run")
    compact_max_bytes: int = Field(256 * MiB, gt=0, description="most WAL bytes one compaction run takes")
    row_group_bytes: int = Field(8 * MiB, gt=0, description="record bytes per Parquet row group (one fetch unit)")
    row_group_records: int = Field(32_768, gt=0, description="most records per Parquet row group")
    wal_gc_grace_ms: int = Field(5 * 60_000, ge=0, description="time a compacted WAL object stays readable")
    orphan_ttl_ms: int = Field(60 * 60_000, ge=0, description="age after which an unindexed WAL object is deleted")
    snapshot_retention_ms: int = Field(24 * 3600_000, ge=0, description="Iceberg snapshots kept for time travel")
    sensor_interval_s: int = Field(15, gt=0, description="seconds between sensor evaluations in the daemon")
    step_retries: int = Field(3, ge=0, description="retries of a failed pipeline step before its run fails")
    step_retry_delay_s: float = Field(0.5, ge=0, description="wait before a step's first retry (doubling with each "
                                      "retry)")


class DagsterSettings(DraySettings):
    """The Dagster webserver (the UI) that `dray up` starts."""

    dagster_host: str = Field("127.0.0.1", description="host the Dagster UI binds")
    dagster_port: int = Field(3000, gt=0, le=65535, description="port of the Dagster UI")


class ClientSettings(DraySettings):
    """How the operator commands (`dray topics`, `dray produce`...) reach a broker."""

    bootstrap: str = Field("127.0.0.1:9092", description="broker(s) to talk to")
    client_debug: bool = Field(False, description="show the Kafka client's (librdkafka's) log lines")
    command_config: Path | None = Field(None, description="Kafka client properties file (as kafka-topics.sh "
                                        "--command-config takes): how to connect to a secured cluster")

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, v: str) -> str:
        for server in v.split(","):
            _host_port(server.strip())
        return v


SECTIONS: tuple[type[DraySettings], ...] = (Settings, LakeSettings, DagsterSettings, ClientSettings)


def setting_names() -> set[str]:
    """Every setting of every section."""
    return {name for section in SECTIONS for name in section.model_fields}


# --- flags ----------------------------------------------------------------------------------------------------------


# Settings whose flag may be given more than once (each a value of the comma-separated list).
REPEATABLE = frozenset({"listen", "advertise"})


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


def _metavar(name: str, annotation: Any) -> str:
    if name.endswith("_ms"):
        return "MS"
    if name.endswith("_bytes"):
        return "BYTES"
    if name.endswith("_s"):
        return "SECONDS"
    if name in ("listen", "advertise"):
        return "[PROTOCOL://]HOST:PORT"
    if name == "http_listen":
        return "HOST:PORT"
    if name == "bootstrap":
        return "HOST:PORT[,...]"
    if name in ("metadata", "object_store", "catalog", "warehouse") or name.endswith("_url"):
        return "URL"
    if name == "sasl_mechanisms":
        return "MECHANISM[,...]"
    if name == "sasl_oauthbearer_expected_audience":
        return "AUDIENCE[,...]"
    if name == "sasl_oauthbearer_expected_issuer":
        return "ISSUER"
    if name == "data_dir":
        return "DIR"
    if name in ("config", "tls_cert", "tls_key", "tls_ca", "command_config"):
        return "FILE"
    if name.endswith(("_port", "_host")):
        return name.rsplit("_", 1)[1].upper()
    if annotation is int:
        return "N"
    return name.upper()


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, section: type[DraySettings] = Settings,
              fields: list[str] | None = None, config: bool = True) -> None:
    """Add a --flag for each field of section (default None, so unset flags do not override), or for the given
    fields only; with config, also --config. The help of each says its DRAY_* variable and its default."""
    if config:
        parser.add_argument("--config", type=Path, metavar="FILE",
                            help=f"YAML file with settings (keys as the flags, with _) [env {ENV_PREFIX}CONFIG]")
    for name, info in section.model_fields.items():
        if name == "config" or (fields is not None and name not in fields):
            continue
        flag = "--" + name.replace("_", "-")
        text = flag_help(info.description or "", ENV_PREFIX + name.upper(), info.default)
        if info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif name in REPEATABLE:
            parser.add_argument(flag, action="append", default=None, help=text, metavar=_metavar(name, info.annotation))
        else:
            parser.add_argument(flag, default=None, help=text, metavar=_metavar(name, info.annotation))
