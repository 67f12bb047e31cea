"""Starting and stopping brokers as a user does, with real processes: a broker id that stays with its data
directory, a taken port or data directory explained in one line, `dray broker --help` with every variable and
default, and a shutdown that says what it waits for. In process: a start that fails half-way stops what it had
started."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request

import pytest
from confluent_kafka import Producer

from dray_broker.config import Settings
from dray_broker.server.broker import Broker
from tests import services
from tests.integration.brokers import BrokerProcess, free_port
from tests.integration.test_cli import dray, dray_json, one_line_error


def broker_id(b: BrokerProcess) -> int:
    """The id the broker announced in its last start line."""
    return int(re.findall(r"broker (\d+) ready on", b.log())[-1])


def test_the_broker_id_stays_with_its_data_directory(tmp_path):
    shared = [f"--metadata=sqlite://{tmp_path}/meta.db", f"--object-store=file://{tmp_path}/objects",
              "--session-timeout-ms=2000"]
    a = BrokerProcess(tmp_path / "a", extra_args=shared).start()
    started = [a]
    try:
        first = broker_id(a)
        cluster_id = dray_json(a, "cluster", "status")["cluster_id"]
        props = (tmp_path / "a" / "meta.properties").read_text().splitlines()
        assert f"broker.id={first}" in props and f"cluster.id={cluster_id}" in props

        # A second broker on the same data directory is refused at once, and uses up no id.
        twin = BrokerProcess(tmp_path / "a", extra_args=shared)
        with pytest.raises(RuntimeError, match=f"Dray is running already \\(pid {a.proc.pid}: dray broker\\), "
                                               "using the data directory"):
            twin.start()

        a.restart()
        assert broker_id(a) == first
        a.kill()  # its registration lives on until its session expires: the restart waits for it
        a.start()
        assert broker_id(a) == first
        assert [x["id"] for x in dray_json(a, "cluster", "status")["brokers"]] == [first]

        b = BrokerProcess(tmp_path / "b", extra_args=shared).start()
        started.append(b)
        assert broker_id(b) == first + 1
        assert sorted(x["id"] for x in dray_json(a, "cluster", "status")["brokers"]) == [first, first + 1]

        # An explicit --broker-id must match the stored one (as Kafka's node.id in meta.properties).
        a.stop()
        other = BrokerProcess(tmp_path / "a", extra_args=[*shared, "--broker-id=42"])
        with pytest.raises(RuntimeError, match=f"--broker-id 42 does not match broker id {first} kept in "):
            other.start()
        same = BrokerProcess(tmp_path / "a", extra_args=[*shared, f"--broker-id={first}"]).start()
        started.append(same)
        assert broker_id(same) == first
    finally:
        for broker in started:
            broker.kill()


def test_a_taken_port_or_data_directory_is_explained(embedded_broker, tmp_path):
    b = embedded_broker
    pid = b.proc.pid
    err = one_line_error(dray(None, "broker", "--data-dir", str(tmp_path / "x"), "--listen", b.bootstrap, expect=1))
    assert err.startswith(f"dray: Dray is running already (pid {pid}: dray broker), using {b.bootstrap} (the Kafka "
                          f"listener): stop it (Ctrl-C where it runs, or kill {pid}), or start this one with "
                          "--listen 127.0.0.1:"), err
    err = one_line_error(dray(None, "broker", "--data-dir", str(b.data_dir), "--listen", f"127.0.0.1:{free_port()}",
                              expect=1))
    assert f"using the data directory {b.data_dir.resolve()}" in err and "--data-dir OTHER_DIR" in err

    with socket.socket() as other:  # a port some other program listens on: this test's process
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = f"127.0.0.1:{other.getsockname()[1]}"
        err = one_line_error(dray(None, "broker", "--data-dir", str(tmp_path / "y"), "--listen", taken, expect=1))
        assert f"another program (pid {os.getpid()}: " in err and f"uses {taken} (the Kafka listener)" in err

        # `dray up`: the Dagster UI's port is checked with the broker's, before anything starts.
        up = ["up", "--data-dir", str(tmp_path / "up"), "--listen", f"127.0.0.1:{free_port()}",
              "--http-listen", f"127.0.0.1:{free_port()}"]
        err = one_line_error(dray(None, *up, "--dagster-port", taken.rsplit(":", 1)[1], expect=1))
        assert re.fullmatch(f"dray: another program \\(pid {os.getpid()}: .*\\) uses {taken} \\(the Dagster UI\\): "
                            "stop it .*, or start this one with --dagster-port \\d+", err), err
        assert not (tmp_path / "up").exists()
    # The pipeline's settings are checked before the Dagster processes start.
    failed = dray(None, *up, "--compact-bytes", "-5", expect=1)
    assert "cannot start: invalid pipeline settings: compact_bytes" in failed.stderr


def test_help_shows_every_setting_with_its_variable_and_default():
    broker_help = " ".join(dray(None, "broker", "--help").stdout.split())
    assert "--flush-ms MS longest a produced batch waits for its WAL flush while other flushes are being written " \
           "(with none in flight, a flush starts at once) [env DRAY_FLUSH_MS, default 10.0]" in broker_help
    assert "--config FILE YAML file with settings (keys as the flags, with _) [env DRAY_CONFIG]" in broker_help
    assert "--auto-create-topics, --no-auto-create-topics create unknown topics on Metadata/Produce [env " \
           "DRAY_AUTO_CREATE_TOPICS, default on]" in broker_help
    assert "--data-dir DIR where embedded defaults keep their files [env DRAY_DATA_DIR, default ./dray-data]" \
        in broker_help
    up_help = " ".join(dray(None, "up", "--help").stdout.split())
    assert "--compact-bytes BYTES uncompacted WAL bytes of a partition that start a run [env DRAY_COMPACT_BYTES, " \
           "default 67108864]" in up_help
    assert "--compact-age-ms MS" in up_help and "DRAY_COMPACT_MAX_BYTES" in up_help
    assert "--dagster-port PORT port of the Dagster UI [env DRAY_DAGSTER_PORT, default 3000]" in up_help
    assert "--step-retries N retries of a failed pipeline step before its run fails [env DRAY_STEP_RETRIES, " \
           "default 3]" in up_help
    sql_help = " ".join(dray(None, "sql", "--help").stdout.split())
    assert "--catalog URL Iceberg catalog: sqlite:///path" in sql_help and "REST catalog [env DRAY_CATALOG]" in sql_help


@pytest.mark.s3
def test_stopping_says_what_it_waits_for(s3_service, tmp_path, topic_name):
    """A broker whose object store stops answering: a shutdown says each second what it still waits for, and ends
    after the drain timeout, acking nothing that was not written."""
    minio = services.start_minio()  # its own, to freeze it
    http = f"127.0.0.1:{free_port()}"
    b = BrokerProcess(tmp_path / "b", object_store=minio.url("stop"), extra_args=[f"--http-listen={http}"]).start()
    frozen = False
    try:
        acked, failed = [], []
        p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 0, "message.timeout.ms": 60000,
                      "log_level": 3})

        def report(err, msg):
            (failed if err else acked).append(msg.value())

        p.produce(topic_name, b"before", on_delivery=report)
        assert p.flush(30) == 0 and acked == [b"before"]
        os.killpg(minio._server.process.pid, signal.SIGSTOP)
        frozen = True
        p.produce(topic_name, b"during", on_delivery=report)
        p.poll(0)
        deadline = time.monotonic() + 30
        while 'dray_requests_total{api="Produce"} 2.0' not in _metrics(http):  # the broker has it
            assert time.monotonic() < deadline, "the produce never reached the broker"
            time.sleep(0.1)
        b.stop(timeout=40)
        log = b.log()
        assert "signal received: stopping" in log
        assert "draining: waiting for 1 WAL flush in flight and 1 connection with unanswered requests" in log
        assert "still waiting for 1 WAL flush in flight" in log and "closing anyway" in log
        assert re.search(r"dray broker \d+ stopped", log)
        p.flush(5)
        assert acked == [b"before"], "nothing is acked that was not written"

        # Once more, and a second signal while it drains: it stops at once.
        os.killpg(minio._server.process.pid, signal.SIGCONT)
        frozen = False
        b.start()
        p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 0, "log_level": 3})
        p.produce(topic_name, b"again", on_delivery=report)
        assert p.flush(30) == 0 and acked == [b"before", b"again"]
        os.killpg(minio._server.process.pid, signal.SIGSTOP)
        frozen = True
        p.produce(topic_name, b"during again", on_delivery=report)
        p.poll(0)
        deadline = time.monotonic() + 30
        while 'dray_requests_total{api="Produce"} 2.0' not in _metrics(http):
            assert time.monotonic() < deadline, "the produce never reached the broker"
            time.sleep(0.1)
        seen = len(b.log())
        b.proc.send_signal(signal.SIGTERM)
        while "draining: waiting for" not in b.log()[seen:]:
            assert b.proc.poll() is None and time.monotonic() < deadline + 30, b.log()[seen:]
            time.sleep(0.1)
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(10) == 130
        assert "second signal: stopping at once" in b.log()[seen:]
    finally:
        if frozen:
            os.killpg(minio._server.process.pid, signal.SIGCONT)
        b.kill()
        minio.stop()


def _metrics(http: str) -> str:
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
        return r.read().decode()


async def test_a_start_that_fails_stops_what_it_started(tmp_path):
    with socket.socket() as taken:  # the HTTP port is taken: the last step of the start fails
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = dict(data_dir=tmp_path, listen="127.0.0.1:0", session_timeout_ms=30_000)
        broker = Broker(Settings(**settings, http_listen=f"127.0.0.1:{taken.getsockname()[1]}"))
        with pytest.raises(OSError):
            await broker.start()
    assert broker.broker_id >= 0 and broker.port > 0  # it had registered, listening on its port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=5).close()
    # The data directory is free, and the registration gone: a broker on the same directory starts at once with the
    # same id (a registration left behind would hold the id for the 30 s session timeout, and the start would fail).
    again = Broker(Settings(**settings))
    await again.start()
    try:
        assert again.broker_id == broker.broker_id
    finally:
        await again.stop()
