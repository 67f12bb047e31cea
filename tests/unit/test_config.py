"""The one settings model (dray_broker/config.py): defaults < YAML file < DRAY_* environment < flags, for every
section; validation messages that name the setting and where its value came from; the derived store URLs; the
flags' help; the Dagster resource built from and into the model; the Dagster definitions reading it when built."""

import argparse
import os
import subprocess
import sys

import pytest

from dray_broker.config import (
    ClientSettings,
    ConfigError,
    DagsterSettings,
    LakeSettings,
    Settings,
    StorageSettings,
    add_flags,
    setting_names,
)


@pytest.fixture(autouse=True)
def _no_dray_environment(monkeypatch):
    """Each test sets the DRAY_* variables it means (the developer's own do not leak in)."""
    for name in list(os.environ):
        if name.startswith("DRAY_"):
            monkeypatch.delenv(name)


def _flags(*argv: str, section=Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, section)
    return parser.parse_args(argv)


# --- precedence -------------------------------------------------------------------------------------------------


def test_precedence_file_then_environment_then_flags(tmp_path, monkeypatch):
    config = tmp_path / "dray.yaml"
    config.write_text("flush-ms: 7\nzone: from-file\nlisten: 127.0.0.1:1111\nbroker_id: 3\n")
    monkeypatch.setenv("DRAY_ZONE", "from-env")
    monkeypatch.setenv("DRAY_LISTEN", "127.0.0.1:2222")
    s = Settings.load(_flags("--config", str(config), "--listen", "127.0.0.1:3333", "--no-auto-create-topics"))
    assert (s.flush_ms, s.zone, s.listen, s.broker_id, s.auto_create_topics) == (7.0, "from-env", "127.0.0.1:3333", 3,
                                                                                  False)
    assert Settings.load({}).flush_ms == 10.0  # no file: the default


def test_the_config_file_can_come_from_the_environment(tmp_path, monkeypatch):
    config = tmp_path / "dray.yaml"
    config.write_text("compact_bytes: 1024\nwal-gc-grace-ms: 5\n")
    monkeypatch.setenv("DRAY_CONFIG", str(config))
    monkeypatch.setenv("DRAY_WAL_GC_GRACE_MS", "6")
    lake = LakeSettings.load({})
    assert (lake.compact_bytes, lake.wal_gc_grace_ms) == (1024, 6)
    assert LakeSettings.load({"compact_bytes": "2048"}).compact_bytes == 2048


def test_one_file_holds_the_settings_of_every_section(tmp_path):
    """The broker, the pipelines, `dray up`'s Dagster UI and the operator commands read one file, each its keys."""
    config = tmp_path / "dray.yaml"
    config.write_text("data_dir: /srv/dray\nflush_ms: 5\ncompact_bytes: 9\ndagster_port: 3123\n"
                      "bootstrap: broker:9092\n")
    flags = {"config": config}
    assert Settings.load(flags).flush_ms == 5.0
    assert str(Settings.load(flags).data_dir) == "/srv/dray" == str(LakeSettings.load(flags).data_dir)
    assert LakeSettings.load(flags).compact_bytes == 9
    assert DagsterSettings.load(flags).dagster_port == 3123
    assert ClientSettings.load(flags).bootstrap == "broker:9092"


def test_an_empty_variable_is_unset(monkeypatch):
    monkeypatch.setenv("DRAY_ADVERTISE", "")
    monkeypatch.setenv("DRAY_COMPACT_BYTES", "")
    assert Settings.load({}).advertise is None
    assert LakeSettings.load({}).compact_bytes == 64 * 1024 * 1024


def test_flags_that_were_not_given_do_not_override(monkeypatch):
    monkeypatch.setenv("DRAY_FLUSH_BYTES", "4096")
    monkeypatch.setenv("DRAY_LOG_JSON", "true")
    s = Settings.load(_flags())  # every flag None: unset
    assert (s.flush_bytes, s.log_json) == (4096, True)


# --- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, env, message", [
    ({"listen": "nope"}, {}, "invalid settings: listen: 'nope' is not [PROTOCOL://]HOST:PORT (from --listen)"),
    ({"listen": "tls://h:1"}, {}, "listen: 'tls://h:1': unknown protocol 'tls' (use plaintext, ssl, sasl_plaintext"),
    ({"listen": "h:1", "advertise": "ssl://x:2"}, {}, "advertise: advertised SSL://x:2 has no SSL listener"),
    ({}, {"DRAY_LISTEN": "ssl://h:1,SSL://h:2"}, "listen: two SSL listeners (SSL://h:1 and SSL://h:2)"),
    ({"tls_principal_mapping_rules": "RULE:[/x/"}, {}, "tls_principal_mapping_rules: Invalid rule: 'RULE:[/x/'"),
    ({}, {"DRAY_FLUSH_MS": "-1"}, "flush_ms: Input should be greater than 0 (from DRAY_FLUSH_MS)"),
    ({"metadata": "redis://x"}, {}, "metadata: use sqlite:///path/meta.db or oxia://host:port (from --metadata)"),
    ({"object_store": "gs://b"}, {}, "object_store: use file:///path or s3://"),
    ({"catalog": "hive://x"}, {}, "catalog: use sqlite:///path/catalog.db, postgresql://user@host/db or an Iceberg "
                                  "REST catalog"),
    ({"log_level": "LOUD"}, {}, "log_level: use DEBUG, INFO, WARNING or ERROR"),
    ({"broker_id": "x"}, {}, "broker_id: Input should be a valid integer"),
    ({}, {"DRAY_AUTO_CREATE_TOPICS": "perhaps"}, "auto_create_topics: Input should be a valid boolean"),
])
def test_bad_values_are_refused_with_the_setting_and_its_origin_named(flags, env, message, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        Settings.load(flags)
    assert message in str(e.value)


def test_every_problem_is_listed(tmp_path):
    config = tmp_path / "dray.yaml"
    config.write_text("row_group_records: 0\n")
    with pytest.raises(ConfigError) as e:
        LakeSettings.load({"config": config, "compact_bytes": "-5"})
    assert str(e.value) == (f"invalid pipeline settings: compact_bytes: Input should be greater than or equal to 0 "
                            f"(from --compact-bytes); row_group_records: Input should be greater than 0 (from config "
                            f"file {config})")


def test_unknown_keys_and_unreadable_files_are_refused(tmp_path):
    config = tmp_path / "dray.yaml"
    config.write_text("flush_ms: 5\nfluhs_bytes: 9\n")
    with pytest.raises(ConfigError, match="fluhs_bytes is not a setting \\(did you mean flush_bytes\\?\\)"):
        Settings.load({"config": str(config)})
    config.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        Settings.load({"config": str(config)})
    config.write_text("flush_ms: [5\n")
    with pytest.raises(ConfigError, match=f"cannot read config file {config}"):
        LakeSettings.load({"config": str(config)})
    with pytest.raises(ConfigError, match="cannot read config file /nowhere/dray.yaml"):
        ClientSettings.load({"config": "/nowhere/dray.yaml"})


def test_bootstrap_and_dagster_port_are_checked(monkeypatch):
    monkeypatch.setenv("DRAY_BOOTSTRAP", "a:9092,b")
    with pytest.raises(ConfigError, match="bootstrap: 'b' is not HOST:PORT \\(from DRAY_BOOTSTRAP\\)"):
        ClientSettings.load({})
    with pytest.raises(ConfigError, match="dagster_port: Input should be less than or equal to 65535"):
        DagsterSettings.load({"dagster_port": "70000"})


# --- derived locations ------------------------------------------------------------------------------------------


def test_defaults_put_everything_under_the_data_dir(tmp_path):
    s = Settings.load(_flags("--data-dir", str(tmp_path)))
    assert s.metadata_url == f"sqlite://{tmp_path}/meta.db"
    assert s.object_store_url == f"file://{tmp_path}/objects"
    assert s.catalog_url == f"sqlite:///{tmp_path}/catalog.db"
    assert s.warehouse_url == f"file://{tmp_path}/objects/iceberg"
    assert s.warehouse_key_prefix == "iceberg"
    key = "iceberg/dray/t/data/0-0-5.parquet"
    assert s.object_key(f"file://{tmp_path}/objects/{key}") == key
    assert s.object_key("file:///elsewhere/x.parquet") is None
    assert s.advertised == ("127.0.0.1", 9092)
    assert Settings.load({"listen": "0.0.0.0:19092"}).advertised == ("127.0.0.1", 19092)


def test_listeners_come_from_repeated_flags_the_environment_or_a_yaml_list(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    add_flags(parser)
    flags = parser.parse_args(["--listen", "0.0.0.0:9092", "--listen", "SASL_SSL://0.0.0.0:9094",
                               "--advertise", "sasl_ssl://kafka.example:19094", "--tls-cert", "b.pem",
                               "--tls-key", "b.key"])
    s = Settings.load(flags)
    assert [(x.name, x.host, x.port, x.advertised_host, x.advertised_port) for x in s.listeners] == [
        ("PLAINTEXT", "0.0.0.0", 9092, "127.0.0.1", 0), ("SASL_SSL", "0.0.0.0", 9094, "kafka.example", 19094)]
    assert s.advertised == ("127.0.0.1", 9092)
    monkeypatch.setenv("DRAY_LISTEN", "ssl://127.0.0.1:9093,127.0.0.1:9092")
    with pytest.raises(ConfigError, match="SSL://127.0.0.1:9093 needs --tls-cert and --tls-key"):
        Settings.load({})
    monkeypatch.setenv("DRAY_TLS_CERT", "b.pem")
    monkeypatch.setenv("DRAY_TLS_KEY", "b.key")
    from_env = Settings.load({})
    assert [(x.name, x.port, x.tls, x.sasl) for x in from_env.listeners] == [("SSL", 9093, True, False),
                                                                             ("PLAINTEXT", 9092, False, False)]
    for name, value in from_env.env().items():  # as `dray up` hands them on
        monkeypatch.setenv(name, value)
    assert Settings.load({}).listeners == from_env.listeners
    monkeypatch.delenv("DRAY_LISTEN")
    config = tmp_path / "dray.yaml"
    monkeypatch.delenv("DRAY_TLS_CERT")
    monkeypatch.delenv("DRAY_TLS_KEY")
    config.write_text("listen: [sasl_plaintext://h:1, 'h:2']\ntls_key: x\n")
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        Settings.load({"config": config})
    config.write_text("listen: [sasl_plaintext://h:1, 'h:2']\n")
    assert [x.name for x in Settings.load({"config": config}).listeners] == ["SASL_PLAINTEXT", "PLAINTEXT"]


def test_an_s3_object_store_gives_the_warehouse_and_its_credentials():
    lake = LakeSettings.load({"object_store": "s3://bucket/pre?endpoint=http://minio:9000&access_key_id=k"
                                              "&secret_access_key=s&region=eu-west-3"})
    assert lake.warehouse_url == "s3://bucket/pre/iceberg"
    assert lake.object_key("s3://bucket/pre/iceberg/dray/t/x.parquet") == "iceberg/dray/t/x.parquet"
    assert lake.fileio_properties() == {"s3.endpoint": "http://minio:9000", "s3.force-virtual-addressing": "false",
                                        "s3.access-key-id": "k", "s3.secret-access-key": "s", "s3.region": "eu-west-3"}
    elsewhere = LakeSettings.load({"object_store": "s3://bucket/pre", "warehouse": "s3://lake/wh/"})
    assert (elsewhere.warehouse_url, elsewhere.warehouse_key_prefix) == ("s3://lake/wh", None)


def test_sections_share_the_storage_settings(tmp_path):
    broker = Settings.load({"data_dir": tmp_path, "metadata": "oxia://oxia:6648", "zone": "a"})
    lake = LakeSettings.load(broker.storage())
    assert (lake.metadata_url, lake.object_store_url, lake.catalog_url) == (
        broker.metadata_url, broker.object_store_url, broker.catalog_url)
    assert set(StorageSettings.model_fields) <= set(Settings.model_fields) & set(LakeSettings.model_fields)


def test_a_section_as_environment_variables_reads_back_the_same(tmp_path, monkeypatch):
    """What `dray up` hands its Dagster processes: every setting as a DRAY_* variable."""
    lake = LakeSettings.load({"data_dir": tmp_path, "compact_bytes": 1, "step_retry_delay_s": 0.1})
    for name, value in lake.env().items():
        monkeypatch.setenv(name, value)
    assert LakeSettings.load({}) == lake
    broker = Settings.load({"data_dir": tmp_path, "log_json": True, "auto_create_topics": False})
    for name, value in broker.env().items():
        monkeypatch.setenv(name, value)
    assert Settings.load({}) == broker


# --- flags ------------------------------------------------------------------------------------------------------


def test_every_setting_has_a_flag_that_says_its_variable_and_default():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    assert set(vars(parser.parse_args([]))) == set(Settings.model_fields)
    shown = " ".join(parser.format_help().split())
    assert "--flush-bytes BYTES buffered bytes that trigger a WAL flush [env DRAY_FLUSH_BYTES, default 4194304]" \
        in shown
    assert "--data-dir DIR where embedded defaults keep their files [env DRAY_DATA_DIR, default ./dray-data]" in shown
    assert ("--advertise [PROTOCOL://]HOST:PORT PROTOCOL://HOST:PORT clients of that protocol's listener are told to "
            "connect to, repeatable") in shown
    assert "--auto-create-topics, --no-auto-create-topics" in shown and "--config FILE" in shown
    assert setting_names() >= {"listen", "compact_bytes", "dagster_port", "bootstrap", "step_retries"}


# --- the Dagster resource and definitions -----------------------------------------------------------------------


def test_the_dagster_resource_round_trip(tmp_path, monkeypatch):
    from dray_pipelines.resources import DrayLake

    assert set(DrayLake.model_fields) == set(LakeSettings.model_fields)
    lake = LakeSettings.load({"data_dir": tmp_path, "metadata": "oxia://h:6648", "compact_bytes": 5,
                              "step_retry_delay_s": 0.25})
    monkeypatch.setenv("DRAY_COMPACT_BYTES", "77")  # the resource pins every value: the environment does not win
    assert DrayLake.from_settings(lake).settings() == lake
    # Unset fields of the resource come from the environment, set ones win.
    assert DrayLake().settings().compact_bytes == 77
    assert DrayLake(compact_bytes=3).settings().compact_bytes == 3
    with pytest.raises(ConfigError, match="compact_max_bytes: Input should be greater than 0"):
        DrayLake(compact_max_bytes=0).settings()


def test_the_resource_is_configured_through_dagster_run_config(tmp_path):
    from dagster import Definitions, asset, define_asset_job

    from dray_pipelines.resources import DrayLake

    @asset
    def thresholds(dray: DrayLake) -> tuple:
        s = dray.settings()
        return s.compact_bytes, s.orphan_ttl_ms, str(s.data_dir)

    job = define_asset_job("j", selection=[thresholds])
    defs = Definitions(assets=[thresholds], jobs=[job], resources={"dray": DrayLake(data_dir=str(tmp_path))})
    result = defs.resolve_job_def("j").execute_in_process(
        run_config={"resources": {"dray": {"config": {"compact_bytes": 11, "data_dir": str(tmp_path)}}}})
    assert result.output_for_node("thresholds") == (11, 3_600_000, str(tmp_path))


def test_definitions_read_the_settings_when_built_not_at_import(monkeypatch):
    import dray_pipelines.definitions as d
    from dray_pipelines.resources import DrayLake

    monkeypatch.setenv("DRAY_SENSOR_INTERVAL_S", "zero")  # invalid: only building the definitions may read it
    imported = subprocess.run([sys.executable, "-c", "import dray_pipelines.definitions"], capture_output=True,
                              text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    with pytest.raises(ConfigError, match="sensor_interval_s: Input should be a valid integer"):
        d.make_definitions()
    monkeypatch.setenv("DRAY_SENSOR_INTERVAL_S", "4")
    monkeypatch.setenv("DRAY_STEP_RETRIES", "6")
    defs = d.make_definitions()
    assert defs.resolve_sensor_def("compaction_sensor").minimum_interval_seconds == 4
    assert defs.resolve_sensor_def("orphan_gc_sensor").minimum_interval_seconds == 60
    for job in ("compaction", "wal_gc", "retention"):
        assert defs.resolve_job_def(job).op_retry_policy.max_retries == 6
    pinned = d.make_definitions(DrayLake(sensor_interval_s=9, step_retries=1))
    assert pinned.resolve_sensor_def("wal_gc_sensor").minimum_interval_seconds == 9
    assert pinned.resolve_job_def("compaction").op_retry_policy.max_retries == 1
