"""compose.yaml, checked without running it (no registry here serves the Oxia, MinIO and Postgres images):

- it is a valid Compose file: the Compose Specification's JSON schema (vendored: compose-spec.SOURCE.md), after
  interpolation of ${VAR:-default} with an empty environment, plus what the schema cannot say (named volumes
  declared, depends_on naming services);
- every Dray service runs the image of ./Dockerfile, and its command exists there and parses: `dray ...` with
  the dray CLI (and its settings validate against the service's environment), `dagster-webserver` and
  `dagster-daemon` with their click commands, the workspace file being where the image's WORKDIR has it;
- every DRAY_* variable is one the program reads (a typo would otherwise be ignored silently), and the
  Dagster services' instance (DAGSTER_HOME) is the deploy/dagster.yaml the image holds, with its variables set;
- the topology: Oxia, MinIO with its bucket created, Postgres with both databases, two brokers in zone a and one
  in zone b with distinct ids, each advertising the port published for it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qs, urlparse

import click
import pytest
import yaml

from dray_broker import cli
from dray_broker.tools import users
from dray_broker.config import ENV_PREFIX, LakeSettings, Settings, setting_names

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a test dependency) validates compose.yaml")

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
DOCKERFILE = REPO / "Dockerfile"
DAGSTER_YAML = REPO / "deploy" / "dagster.yaml"
POSTGRES_INIT = REPO / "deploy" / "postgres-init.sql"

DAGSTER_PROGRAMS = {"dagster-webserver", "dagster-daemon"}
# The schema declares draft-07 (as "https://json-schema.org/draft-07/schema", which jsonschema does not map).
SchemaValidator = jsonschema.Draft7Validator


# ------------------------------------------------------------------------------------------------ loading


_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|"
                  r"(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def load_in(environ: dict[str, str], section, flags=None):
    """The section's settings as a program started with that environment (and flags) reads them."""
    with mock.patch.dict(os.environ, environ, clear=True):
        return section.load(flags)


def interpolate(value, environ: dict[str, str]):
    """Compose's variable interpolation: $$ -> $, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        have = environ.get(name)
        if op in (":-", "-"):
            return have if (have if op == ":-" else have is not None) else arg
        if op in (":?", "?"):
            if not have:
                raise AssertionError(f"compose.yaml requires {name}: {arg}")
            return have
        if op in (":+", "+"):
            return arg if have else ""
        return have or ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {})


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def argv_of(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def dray_services(services) -> dict[str, dict]:
    return {name: s for name, s in services.items() if s.get("build") is not None}


# ------------------------------------------------------------------------------------------------ the Dockerfile


def dockerfile_final_stage() -> dict:
    """WORKDIR, CMD, USER, ENV names and COPY destinations of the Dockerfile's last stage."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    stage = {"workdir": "/", "cmd": None, "user": None, "env": set(), "copies": {}, "from": lines[last_from]}
    for ln in lines[last_from + 1:]:
        word, _, rest = ln.partition(" ")
        word = word.upper()
        if word == "WORKDIR":
            stage["workdir"] = rest.strip()
        elif word == "CMD":
            stage["cmd"] = json.loads(rest)
        elif word == "USER":
            stage["user"] = rest.strip()
        elif word == "ENV":
            stage["env"].update(m.group(1) for m in re.finditer(r"(\w+)=", rest))
        elif word == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            stage["copies"][parts[-1]] = parts[:-1]
    return stage


def test_dockerfile_base_image_is_a_build_argument():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim", text, re.M), "the default base is a public Python slim"
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${BASE_IMAGE}" for f in froms), froms


# ------------------------------------------------------------------------------------------------ schema


def test_compose_file_is_valid_against_the_compose_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    assert "draft-07" in schema["$schema"]
    SchemaValidator.check_schema(schema)
    validator = SchemaValidator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_compose_file(compose):
    """The vendored schema really checks (a guard against an empty or permissive copy)."""
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["broker-a1"]["ports"] = {"19092": 9092}
    broken["services"]["broker-a1"]["no_such_key"] = True
    with pytest.raises(jsonschema.ValidationError):
        SchemaValidator(schema).validate(broken)


def test_named_volumes_are_declared_and_dependencies_exist(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"
            if source and source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
        depends = service.get("depends_on") or {}
        for other in (depends if isinstance(depends, (list, dict)) else []):
            assert other in services, f"{name} depends on unknown service {other}"


# ------------------------------------------------------------------------------------------------ commands vs the CLI


def test_every_dray_service_runs_this_image(services):
    ours = dray_services(services)
    assert set(ours) >= {"broker-a1", "broker-a2", "broker-b1", "dagster-webserver", "dagster-daemon"}
    images = {s["image"] for s in ours.values()}
    assert len(images) == 1, f"one image for every role, got {images}"
    for name, s in ours.items():
        build = s["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (REPO / context).resolve() == REPO, name
        assert (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile") == "Dockerfile"
        assert not s.get("entrypoint"), f"{name}: the command names its program; no entrypoint override"


def _console_scripts() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="console_scripts")}


def parse_dray(argv: list[str], monkeypatch) -> tuple[str, object]:
    """Parse argv (without the program name) with the dray CLI, running nothing: (subcommand, args)."""
    seen = {}

    def capture(name):
        def run(args):
            seen["command"], seen["args"] = name, args
            return 0
        return run

    for name in ("cmd_broker", "cmd_up"):
        monkeypatch.setattr(cli, name, capture(name[4:]))
    monkeypatch.setattr(users, "cmd_bootstrap", capture("users bootstrap"))  # (bound when the parser is built)
    try:
        assert cli.main(argv) == 0
    except SystemExit as e:  # argparse refused the arguments
        raise AssertionError(f"`dray {' '.join(argv)}` does not parse (exit {e.code})") from None
    return seen["command"], seen["args"]


def parse_click(program: str, argv: list[str]) -> None:
    """Parse argv with the click command behind the console script `program` (callbacks are not run)."""
    module_name, _, attr = _console_scripts()[program].partition(":")
    command = importlib.import_module(module_name).cli
    assert isinstance(command, click.Command), f"{program}: {module_name}.cli is not a click command"
    ctx = command.make_context(program, list(argv))
    if isinstance(command, click.Group):
        name, *rest = argv
        sub = command.get_command(ctx, name)
        assert sub is not None, f"`{program} {name}` is not a command"
        sub.make_context(f"{program} {name}", list(rest), parent=ctx)


def test_every_service_command_exists_in_the_image_and_parses(services, monkeypatch):
    stage = dockerfile_final_stage()
    scripts = _console_scripts()
    workspace = Path(stage["workdir"]) / "dagster_workspace.yaml"
    assert stage["copies"].get(str(workspace)) == ["dagster_workspace.yaml"], (
        "the image must hold the workspace file in its WORKDIR, where the commands name it")
    monkeypatch.chdir(REPO)  # the repository root stands for the image's WORKDIR (its workspace file is there)
    for name, s in dray_services(services).items():
        argv = argv_of(s.get("command")) or stage["cmd"]
        program, args = argv[0], argv[1:]
        assert program in scripts, f"{name}: {program} is no console script of the installed distributions"
        if program == "dray":
            command, parsed = parse_dray(args, monkeypatch)
            load_in(env_of(s), Settings, parsed)  # raises ConfigError on a bad value
        else:
            assert program in DAGSTER_PROGRAMS, f"{name}: unexpected program {program}"
            parse_click(program, args)
            w = args[args.index("-w") + 1]
            assert (REPO / w).exists() and Path(stage["workdir"], w) == workspace, f"{name}: workspace {w}"
    assert stage["cmd"] == ["dray", "broker"]


def test_image_default_command_is_the_broker(monkeypatch):
    stage = dockerfile_final_stage()
    command, parsed = parse_dray(stage["cmd"][1:], monkeypatch)
    assert command == "broker"
    image_env = {name: value for name, value in (
        ("DRAY_DATA_DIR", "/data"), ("DRAY_LISTEN", "0.0.0.0:9092"), ("DRAY_HTTP_LISTEN", "0.0.0.0:9600"))}
    settings = load_in(image_env, Settings, parsed)
    assert settings.http_listen, "the HEALTHCHECK needs /readyz served"
    for name in stage["env"]:
        if name.startswith(ENV_PREFIX):  # a setting of the broker, or of `dray up`'s Dagster services
            assert name[len(ENV_PREFIX):].lower() in setting_names(), f"Dockerfile sets unknown {name}"
    assert stage["user"] and stage["user"] != "root"


def _dagster_yaml_env_refs() -> set[str]:
    refs: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"env"} and isinstance(node["env"], str):
                refs.add(node["env"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(DAGSTER_YAML.read_text()))
    return refs


def test_every_environment_variable_is_read_by_its_program(services):
    stage = dockerfile_final_stage()
    dagster_home = str(Path(next(dest for dest, src in stage["copies"].items()
                                 if src == ["deploy/dagster.yaml"])).parent)
    refs = _dagster_yaml_env_refs()
    assert refs, "deploy/dagster.yaml takes its Postgres URL from the environment"
    broker_vars = {ENV_PREFIX + f.upper() for f in Settings.model_fields}
    lake_vars = {ENV_PREFIX + f.upper() for f in LakeSettings.model_fields}
    for name, s in dray_services(services).items():
        env = env_of(s)
        program = (argv_of(s.get("command")) or stage["cmd"])[0]
        if program == "dray":
            unknown = set(env) - broker_vars
        else:
            unknown = set(env) - lake_vars - refs - {"DAGSTER_HOME"}
            assert env.get("DAGSTER_HOME") == dagster_home, f"{name}: DAGSTER_HOME is the image's instance"
            assert refs <= set(env), f"{name}: deploy/dagster.yaml needs {sorted(refs - set(env))}"
            load_in(env, LakeSettings)
        assert not unknown, f"{name}: no program reads {sorted(unknown)}"


# ------------------------------------------------------------------------------------------------ topology


def test_topology(services):
    oxia = services["oxia"]
    oxia_cmd = argv_of(oxia["command"])
    assert oxia["image"].startswith("oxia/oxia:") and oxia_cmd[:2] == ["oxia", "standalone"]
    assert oxia_cmd[oxia_cmd.index("--shards") + 1] == "1", "one shard: the Python client hashes keys differently"

    bucket_cmd = " ".join(argv_of(services["minio-init"].get("command")))
    created = set(re.findall(r"mc mb (?:--ignore-existing )?\w+/([\w.-]+)", bucket_cmd))
    init_sql = POSTGRES_INIT.read_text()
    pg_env = env_of(services["postgres"])

    brokers = {n: s for n, s in dray_services(services).items() if argv_of(s.get("command"))[:2] == ["dray", "broker"]}
    one_shots = {n: s for n, s in dray_services(services).items() if argv_of(s.get("command"))[:2] == ["dray", "users"]}
    zones = Counter(env_of(s)["DRAY_ZONE"] for s in brokers.values())
    assert zones == {"a": 2, "b": 1}, zones
    ids = [env_of(s)["DRAY_BROKER_ID"] for s in brokers.values()]
    assert len(set(ids)) == len(ids), f"broker ids clash: {ids}"

    for name, s in dray_services(services).items():
        env = env_of(s)
        meta = urlparse(env["DRAY_METADATA"])
        assert (meta.scheme, meta.hostname, meta.port) == ("oxia", "oxia", 6648), name
        store = urlparse(env["DRAY_OBJECT_STORE"])
        assert store.scheme == "s3" and store.netloc in created, f"{name}: bucket {store.netloc} is not created"
        q = {k: v[-1] for k, v in parse_qs(store.query).items()}
        assert urlparse(q["endpoint"]).hostname == "minio"
        assert q["access_key_id"] == env_of(services["minio"])["MINIO_ROOT_USER"]
        assert q["secret_access_key"] == env_of(services["minio"])["MINIO_ROOT_PASSWORD"]
        deps = s.get("depends_on") or {}
        assert {"oxia", "minio-init"} <= set(deps), f"{name} must wait for Oxia and the bucket"
        if name in brokers:
            settings = load_in(env, Settings)
            published = {p.split(":")[-1]: p.split(":")[-2] for p in s.get("ports", [])}
            for listener in settings.listeners:
                assert listener.advertised_port == int(published[str(listener.port)]), (
                    f"{name}: the advertised port of {listener} is not the one published for it")
                if listener.tls:
                    assert {"/certs/broker.pem", "/certs/broker.key"} == {str(settings.tls_cert),
                                                                          str(settings.tls_key)}
                    assert "certs-init" in deps and "certs:/certs:ro" in s["volumes"], f"{name}: no certificates"
                if listener.sasl:
                    assert one_shots and set(one_shots) <= set(deps), f"{name}: SASL logins need a user made before"
            assert settings.http_listen, f"{name}: the HEALTHCHECK needs DRAY_HTTP_LISTEN"
        elif name in one_shots:  # `dray users bootstrap`: the first SCRAM user, in the brokers' metadata store
            assert argv_of(s["command"])[:3] == ["dray", "users", "bootstrap"] and s.get("restart") == "no", name
        else:
            lake = load_in(env, LakeSettings)
            catalog = urlparse(lake.catalog_url)
            assert catalog.scheme.startswith("postgresql") and catalog.hostname == "postgres"
            assert f"CREATE DATABASE {catalog.path.strip('/')}" in init_sql
            dagster_db = urlparse(env["DRAY_DAGSTER_POSTGRES_URL"])
            assert dagster_db.path.strip("/") == pg_env["POSTGRES_DB"]
            assert dagster_db.password == catalog.password == pg_env["POSTGRES_PASSWORD"]
            assert "postgres" in set(deps)


def test_dagster_instance_matches_dray_up():
    """deploy/dagster.yaml (Postgres) runs the pipeline as `dray up`'s instance does: same run coordinator."""
    from dray_pipelines.services import instance_config

    ours = yaml.safe_load(DAGSTER_YAML.read_text())
    assert ours["run_coordinator"] == instance_config()["run_coordinator"]
    assert set(ours["storage"]) == {"postgres"}
