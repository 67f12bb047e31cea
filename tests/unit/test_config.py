import argparse

import pytest

from dray_broker.config import ConfigError, Settings, add_flags, load_settings


def _flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(argv)


def test_precedence_file_then_environment_then_flags(tmp_path):
    config = tmp_path / "dray.yaml"
    config.write_text("flush-ms: 7\nzone: from-file\nlisten: 127.0.0.1:1111\nbroker_id: 3\n")
    env = {"DRAY_ZONE": "from-env", "DRAY_LISTEN": "127.0.0.1:2222"}
    s = load_settings(_flags("--config", str(config), "--listen", "127.0.0.1:3333", "--no-auto-create-topics"), env)
    assert (s.flush_ms, s.zone, s.listen, s.broker_id, s.auto_create_topics) == (7.0, "from-env", "127.0.0.1:3333", 3, False)


def test_defaults_put_everything_under_the_data_dir(tmp_path):
    s = load_settings(_flags("--data-dir", str(tmp_path)), {})
    assert s.metadata_url == f"sqlite://{tmp_path}/meta.db"
    assert s.object_store_url == f"file://{tmp_path}/objects"
    assert s.advertised == ("127.0.0.1", 9092)
    assert load_settings({"listen": "0.0.0.0:19092"}, {}).advertised == ("127.0.0.1", 19092)


@pytest.mark.parametrize("flags, env, message", [
    ({"listen": "nope"}, {}, "listen: Value error, 'nope' is not HOST:PORT"),
    ({}, {"DRAY_FLUSH_MS": "-1"}, "flush_ms: Input should be greater than 0"),
    ({"metadata": "redis://x"}, {}, "metadata: Value error, use sqlite:///path/meta.db or oxia://host:port"),
    ({"object_store": "gs://b"}, {}, "object_store: Value error, use file:///path or s3://"),
    ({"log_level": "LOUD"}, {}, "log_level: Value error, use DEBUG, INFO, WARNING or ERROR"),
])
def test_bad_values_are_refused_with_the_setting_named(flags, env, message):
    with pytest.raises(ConfigError) as e:
        load_settings(flags, env)
    assert message in str(e.value)


def test_unknown_keys_in_the_file_are_refused(tmp_path):
    config = tmp_path / "dray.yaml"
    config.write_text("flush_ms: 5\nfluhs_bytes: 9\n")
    with pytest.raises(ConfigError, match="fluhs_bytes: Extra inputs are not permitted"):
        load_settings({"config": str(config)}, {})
    config.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings({"config": str(config)}, {})


def test_every_setting_has_a_flag():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    flags = {a.dest for a in parser._actions}
    assert set(Settings.model_fields) <= flags
