"""The container image, built and run for real with podman (slow: minutes on a cold layer cache).

- `dray broker` in the image with host networking and a mounted data dir: confluent-kafka on the machine
  produces and consumes 10,000 records; the container stops on SIGTERM; a new container on the same data dir
  serves everything back, the group's committed offsets included, and appends after them.
- The image: a non-root user, the /data volume, a HEALTHCHECK that passes when the broker is ready, configuration
  by DRAY_* variables, no compilers, pip or caches in the final image.
- The Dagster roles: the code location loads in the image (`dagster definitions validate`), the webserver
  serves it, the daemon runs and passes `dagster-daemon liveness-check`, and deploy/dagster.yaml (Postgres) is a
  valid instance configuration.
- `dray up` and `dray broker` on S3 (MinIO on this machine) in the image.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.container.podman import Container, inspect_image

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]  # a cold build (base, dependencies): minutes

RECORDS = 10_000
PARTITIONS = 3
UID = 10001


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    give_to_image_user(d)
    return d


def give_to_image_user(path: Path) -> None:
    """The image's user (uid 10001) owns the data it writes; a named volume is set up so by itself."""
    try:
        os.chown(path, UID, UID)
    except PermissionError:
        path.chmod(0o777)


def broker_container(image: str, data_dir: Path, port: int, http_port: int) -> Container:
    return Container(image, ["dray", "broker"], volumes={data_dir: "/data"}, env={
        "DRAY_LISTEN": f"127.0.0.1:{port}",
        "DRAY_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "DRAY_DEFAULT_PARTITIONS": str(PARTITIONS),
        "DRAY_FLUSH_MS": "5",
    })


def produce(bootstrap: str, topic: str, start: int, count: int) -> dict[tuple[int, int], bytes]:
    """count records keyed start..start+count-1; returns {(partition, offset): key} from the delivery reports."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": True, "compression.type": "lz4"})
    acked: dict[tuple[int, int], bytes] = {}
    errors: list[str] = []

    def report(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked[(msg.partition(), msg.offset())] = msg.key()

    for i in range(start, start + count):
        key = b"key-%06d" % i
        while True:
            try:
                producer.produce(topic, key=key, value=value_of(key), on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    assert left == 0 and not errors, f"{left} records not delivered; errors: {errors[:5]}"
    assert len(acked) == count
    return acked


def value_of(key: bytes) -> bytes:
    return b"value of " + key + b" " + b"x" * (len(key) * 7 % 200)


def consume(bootstrap: str, topic: str, group: str, expect: int, timeout: float = 120.0,
            settle: float = 0.0) -> dict[tuple[int, int], bytes]:
    """Read with a consumer group until expect records arrived (then settle seconds more, to catch extras);
    commit and close. Returns {(partition, offset): key} and checks each value."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "session.timeout.ms": 10_000})
    consumer.subscribe([topic])
    got: dict[tuple[int, int], bytes] = {}
    deadline = time.monotonic() + timeout
    settle_until = None
    try:
        while time.monotonic() < deadline:
            if len(got) >= expect:
                settle_until = settle_until or time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    break
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            assert msg.value() == value_of(msg.key()), f"value of {msg.key()!r} at {msg.offset()} differs"
            got[(msg.partition(), msg.offset())] = msg.key()
        if got:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert len(got) >= expect, f"consumed {len(got)} of {expect} records in {timeout:.0f} s"
    return got


def assert_dense(records: dict[tuple[int, int], bytes]) -> None:
    """Offsets of each partition are 0..n-1 with no gap."""
    by_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset in records:
        by_partition[partition].append(offset)
    for partition, offsets in by_partition.items():
        assert sorted(offsets) == list(range(len(offsets))), f"partition {partition}: offsets are not dense"


def committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps}


# ------------------------------------------------------------------------------------------------ tests


def test_broker_in_container_survives_a_restart(dray_image, data_dir):
    """10,000 records through `dray broker` in a container; a new container on the same data dir has them all."""
    port, http_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic, group = f"orders-{uuid.uuid4().hex[:8]}", f"readers-{uuid.uuid4().hex[:8]}"

    with broker_container(dray_image, data_dir, port, http_port) as first:
        first.wait_http(f"http://127.0.0.1:{http_port}/readyz")
        assert first.health(), "the image's HEALTHCHECK fails on a ready broker"
        acked = produce(bootstrap, topic, 0, RECORDS)
        assert_dense(acked)
        assert len({p for p, _ in acked}) == PARTITIONS
        read = consume(bootstrap, topic, group, RECORDS, settle=1.0)
        assert read == acked, "records read differ from those acknowledged"
        assert first.stop() == 0, f"the broker did not stop cleanly on SIGTERM:\n{first.logs()}"
    assert (data_dir / "meta.db").exists() and (data_dir / "objects").is_dir(), "data went elsewhere than /data"

    with broker_container(dray_image, data_dir, port, http_port) as second:
        second.wait_http(f"http://127.0.0.1:{http_port}/readyz")
        assert second.health()
        # Everything, from the beginning, to a new group.
        again = consume(bootstrap, topic, group + "-again", RECORDS, settle=1.0)
        assert again == acked, "after the restart the log differs"
        # The first group's commits survived: it is at the end of every partition.
        ends = defaultdict(int)
        for partition, offset in acked:
            ends[partition] = max(ends[partition], offset + 1)
        assert committed(bootstrap, topic, group) == dict(ends)
        # Appends continue the offsets, and the first group reads only them.
        more = produce(bootstrap, topic, RECORDS, 1000)
        assert all(offset >= ends[partition] for partition, offset in more)
        assert_dense({**acked, **more})
        assert consume(bootstrap, topic, group, 1000, settle=1.0) == more
        assert second.stop() == 0


def test_broker_in_container_on_s3(dray_image, data_dir, s3_service):
    """The production object store from the image: WAL objects in S3 (MinIO on this machine), through aioboto3."""
    port, http_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic = f"s3-{uuid.uuid4().hex[:8]}"
    with Container(dray_image, ["dray", "broker"], volumes={data_dir: "/data"}, env={
        "DRAY_LISTEN": bootstrap, "DRAY_HTTP_LISTEN": f"127.0.0.1:{http_port}", "DRAY_DEFAULT_PARTITIONS": "3",
        "DRAY_OBJECT_STORE": s3_service.url(f"container-{uuid.uuid4().hex[:8]}"),
    }) as c:
        c.wait_http(f"http://127.0.0.1:{http_port}/readyz")
        acked = produce(bootstrap, topic, 0, 2000)
        assert consume(bootstrap, topic, "g-" + topic, 2000, settle=0.5) == acked
        assert not (data_dir / "objects").exists(), "WAL objects went to the data dir instead of S3"
        assert c.stop() == 0


def test_dray_up_in_container(dray_image, data_dir):
    """`dray up` (the one-box role) starts in the image and serves Kafka and /readyz."""
    port, http_port, dagster_port = free_port(), free_port(), free_port()
    with Container(dray_image, ["dray", "up"], volumes={data_dir: "/data"}, env={
        "DRAY_LISTEN": f"127.0.0.1:{port}", "DRAY_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "DRAY_DAGSTER_HOST": "127.0.0.1", "DRAY_DAGSTER_PORT": str(dagster_port),
    }) as c:
        c.wait_http(f"http://127.0.0.1:{http_port}/readyz")
        assert c.health()
        topic = f"up-{uuid.uuid4().hex[:8]}"
        acked = produce(f"127.0.0.1:{port}", topic, 0, 100)
        assert consume(f"127.0.0.1:{port}", topic, "g-" + topic, 100) == acked
        if "Dagster" in c.logs():  # `dray up` runs the Dagster webserver and daemon too
            c.wait_http(f"http://127.0.0.1:{dagster_port}/server_info", timeout=180)
        assert c.stop() == 0, c.logs()


def test_image_configuration(dray_image):
    """Non-root, /data volume, HEALTHCHECK on /readyz, DRAY_* defaults, `dray broker` by default."""
    config = inspect_image(dray_image)["Config"]
    assert config["User"] == "dray"
    assert "/data" in (config.get("Volumes") or {})
    assert config["Cmd"] == ["dray", "broker"]
    assert not config.get("Entrypoint"), "commands name their program (dray, dagster-webserver, dagster-daemon)"
    health = inspect_image(dray_image).get("Healthcheck") or config.get("Healthcheck")
    assert health and health["Test"] == ["CMD", "python", "/opt/dray/healthcheck.py"], health
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["DRAY_DATA_DIR"] == "/data"
    assert env["DRAY_LISTEN"] == "0.0.0.0:9092" and env["DRAY_HTTP_LISTEN"] == "0.0.0.0:9600"
    assert not [k for k in env if k.startswith("DRAY_") and k not in (
        "DRAY_DATA_DIR", "DRAY_LISTEN", "DRAY_HTTP_LISTEN", "DRAY_DAGSTER_HOST")], env


def test_image_contents(dray_image):
    """uid 10001, no compilers, no pip, no caches; the entry points of every role are there."""
    script = (
        "import json, os, shutil, sys, sysconfig;"
        "bins = ['gcc', 'cc', 'c++', 'g++', 'clang', 'make', 'ld', 'pip', 'pip3'];"
        "caches = [p for p in ['/root/.cache', '/data/.cache', '/tmp/pip', '/root/.cache/pip'] if os.path.exists(p)];"
        "print(json.dumps({'uid': os.getuid(), 'found': {b: shutil.which(b) for b in bins if shutil.which(b)},"
        "'caches': caches, 'home': os.path.expanduser('~'), 'python': sys.version_info[:2],"
        "'tools': {t: bool(shutil.which(t)) for t in ['dray', 'dagster-webserver', 'dagster-daemon', 'dagster']}}))"
    )
    with Container(dray_image, ["python", "-c", script]) as c:
        assert c.wait_exit(60) == 0, c.logs()
        out = c.logs().strip().splitlines()[-1]
    facts = json.loads(out)
    assert facts["uid"] == UID
    assert facts["found"] == {}, f"build tools in the final image: {facts['found']}"
    assert facts["caches"] == []
    assert facts["python"] >= [3, 11]
    assert all(facts["tools"].values()), facts["tools"]


def test_cli_in_image_refuses_bad_settings(dray_image):
    """Settings come from DRAY_* variables: a bad one stops the broker with a clear message and exit 2."""
    with Container(dray_image, ["dray", "broker"], env={"DRAY_LISTEN": "nonsense"}) as c:
        exit_code = c.wait_exit(60)
        logs = c.logs()
    assert exit_code == 2, logs
    assert "listen" in logs and "HOST:PORT" in logs, logs


def test_dagster_roles(dray_image, tmp_path):
    """The code location loads in the image, the webserver serves it, and deploy/dagster.yaml is valid."""
    data = tmp_path / "data"
    data.mkdir()
    give_to_image_user(data)
    env = {"DRAY_DATA_DIR": "/data"}
    validate = ("import sys; from dagster._core.instance.config import dagster_instance_config;"
                "cfg, _ = dagster_instance_config('/opt/dray/dagster');"
                "assert 'postgres' in str(cfg['storage']), cfg; print('instance config ok')")
    with Container(dray_image, ["sh", "-c",
                                "dagster definitions validate -w dagster_workspace.yaml && "
                                f"DRAY_DAGSTER_POSTGRES_URL=postgresql://u:p@db/dagster python -c \"{validate}\""],
                   env=env, volumes={data: "/data"}) as c:
        exit_code = c.wait_exit(300)
        logs = c.logs()
    assert exit_code == 0, logs
    assert "instance config ok" in logs

    port = free_port()
    web = Container(dray_image, ["dagster-webserver", "-w", "dagster_workspace.yaml", "-h", "127.0.0.1",
                                 "-p", str(port)], env={**env, "DAGSTER_HOME": "/data/dagster"},
                    volumes={data: "/data"})
    (data / "dagster").mkdir()
    give_to_image_user(data / "dagster")
    with web:
        web.wait_http(f"http://127.0.0.1:{port}/server_info", timeout=180)
        query = json.dumps({"query": "{ workspaceOrError { ... on Workspace { locationEntries { name "
                                     "locationOrLoadError { __typename } } } } }"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.load(r)
        entries = answer["data"]["workspaceOrError"]["locationEntries"]
        assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
            ("dray_pipelines", "RepositoryLocation")], answer
        # The same HEALTHCHECK script probes the webserver when given its URL (compose.yaml does so).
        assert web.exec("python", "/opt/dray/healthcheck.py",
                        f"http://127.0.0.1:{port}/server_info").returncode == 0

    # The daemon runs the pipeline's sensors; compose.yaml's healthcheck for it is `dagster-daemon liveness-check`.
    with Container(dray_image, ["dagster-daemon", "run", "-w", "dagster_workspace.yaml"],
                   env={**env, "DAGSTER_HOME": "/data/dagster"}, volumes={data: "/data"}) as daemon:
        deadline = time.monotonic() + 120
        while daemon.exec("dagster-daemon", "liveness-check").returncode != 0:
            assert daemon.running(), daemon.logs()
            assert time.monotonic() < deadline, f"the daemon is not live after 120 s:\n{daemon.logs()}"
            time.sleep(2)
        assert daemon.stop() in (0, 143), daemon.logs()
