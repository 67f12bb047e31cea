"""TLS listeners with real clients: certificates made here (tests/integration/certs.py), a broker with a plaintext
and an ssl listener.

- confluent-kafka, kafka-python, aiokafka, kcat and the Java client bootstrap on the ssl port only and produce and
  consume there: every endpoint the broker gives them (Metadata, FindCoordinator) is the ssl listener's, which a
  raw Metadata on each port shows too.
- mTLS: with --tls-ca a client needs a certificate of that CA, and its principal is the certificate's subject
  (RFC 2253, Kafka's default mapping), as the broker logs it.
- Certificates reload on SIGHUP and when the files change: new connections get the new certificate, open ones go on;
  files that cannot be used are refused and the current certificate stays.
- A plaintext client against the ssl port fails without a broker traceback, and the broker serves others.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.integration.brokers import BrokerProcess, free_port
from tests.integration.certs import TestCA
from tests.integration.clients import (
    KCAT,
    ClientTls,
    create_topic,
    make_records,
    produce,
    read_back,
)
from tests.integration.java_client import JavaClient, Record, ensure_built
from tests.integration.wire import Wire, request

pytestmark = pytest.mark.timeout(600)

ALICE = "CN=alice,OU=eng,O=Example,C=US"  # as Java's X500Principal.getName() writes the subject below


class TlsBroker(BrokerProcess):
    """A broker with its plaintext listener (port) and an ssl one (ssl_port)."""

    ssl_port: int

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"


def _tls_broker(data_dir: Path, cert: Path, key: Path, *more: str, protocol: str = "SSL") -> TlsBroker:
    ssl_port = free_port()
    b = TlsBroker(data_dir, extra_args=["--listen", f"{protocol}://127.0.0.1:{ssl_port}", "--tls-cert", str(cert),
                                        "--tls-key", str(key), *more])
    b.ssl_port = ssl_port
    return b


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(ca, tmp_path_factory):
    server = ca.server()
    b = _tls_broker(tmp_path_factory.mktemp("tls-broker"), server.cert, server.key, "--http-listen",
                    f"127.0.0.1:{free_port()}").start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def mtls_broker(ca, tmp_path_factory):
    server = ca.server("mtls-broker")
    b = _tls_broker(tmp_path_factory.mktemp("mtls-broker"), server.cert, server.key, "--tls-ca", str(ca.cert),
                    "--log-level", "DEBUG").start()
    yield b
    b.stop()


def _tls_wire(bootstrap: str, ca: Path, cert: Path | None = None, key: Path | None = None) -> Wire:
    """A raw Kafka connection over TLS (verifying the broker's certificate for 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    wire = Wire(bootstrap)
    wire.sock = context.wrap_socket(wire.sock, server_hostname=bootstrap.rsplit(":", 1)[0])
    return wire


def _metadata_brokers(wire: Wire) -> list[tuple[int, str, int]]:
    r = wire.call(3, 12, request(3, 12, "MetadataRequest", topics=(), allow_auto_topic_creation=False,
                                 include_topic_authorized_operations=False))
    return [(b.node_id, b.host, b.port) for b in r.brokers]


def _served_cn(bootstrap: str, ca: Path) -> str:
    """The common name of the certificate a new TLS connection gets."""
    wire = _tls_wire(bootstrap, ca)
    try:
        subject = dict(pair for rdn in wire.sock.getpeercert()["subject"] for pair in rdn)
        return subject["commonName"]
    finally:
        wire.close()


def _open_connections(b: BrokerProcess) -> float:
    """The broker's dray_connections gauge (from --http-listen)."""
    http = b.extra_args[b.extra_args.index("--http-listen") + 1]
    metrics = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    return next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("dray_connections "))


def _wait_for(condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- clients over ssl ------------------------------------------------------------------------------------------


def test_each_listener_gives_its_own_endpoints(tls_broker, ca):
    plain = Wire(tls_broker.bootstrap)
    secure = _tls_wire(tls_broker.ssl_bootstrap, ca.cert)
    try:
        (node_id, _, _), = _metadata_brokers(plain)
        assert _metadata_brokers(plain) == [(node_id, "127.0.0.1", tls_broker.port)]
        assert _metadata_brokers(secure) == [(node_id, "127.0.0.1", tls_broker.ssl_port)]
        find = request(10, 3, "FindCoordinatorRequest", key="g", key_type=0)
        assert (secure.call(10, 3, find).port, plain.call(10, 3, find).port) == (tls_broker.ssl_port, tls_broker.port)
        describe = request(60, 0, "DescribeClusterRequest", include_cluster_authorized_operations=False)
        assert [b.port for b in secure.call(60, 0, describe).brokers] == [tls_broker.ssl_port]
    finally:
        plain.close()
        secure.close()


@pytest.mark.parametrize("producer, reader", [("confluent", "kafka-python"), ("kafka-python", "aiokafka"),
                                              ("aiokafka", "kcat"), ("kcat", "confluent")])
def test_clients_produce_and_consume_over_ssl(tls_broker, ca, producer, reader):
    topic = f"tls-{producer}-{uuid.uuid4().hex[:6]}"
    create_topic(tls_broker.bootstrap, topic, 2)
    tls = ClientTls(ca.cert)
    records = make_records(300, 2, seed=7, for_kcat=producer == "kcat")
    acked = produce(producer, tls_broker.ssl_bootstrap, topic, records, tls=tls)
    read_back(reader, tls_broker.ssl_bootstrap, topic, acked, tls=tls)


def test_a_consumer_group_over_ssl_finds_its_coordinator_there(tls_broker, ca):
    """The group's coordinator (FindCoordinator) is given at its ssl endpoint: the group joins, reads and commits."""
    from confluent_kafka import Consumer, TopicPartition

    topic = f"tls-group-{uuid.uuid4().hex[:6]}"
    create_topic(tls_broker.bootstrap, topic, 2)
    tls = ClientTls(ca.cert)
    acked = produce("confluent", tls_broker.ssl_bootstrap, topic, make_records(100, 2, seed=9), tls=tls)
    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = Consumer({"bootstrap.servers": tls_broker.ssl_bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, "session.timeout.ms": 6000,
                         **tls.librdkafka()})
    try:
        consumer.subscribe([topic])
        values = []
        deadline = time.monotonic() + 30
        while len(values) < len(acked) and time.monotonic() < deadline:
            for m in consumer.consume(100, 0.2):
                assert m.error() is None, m.error()
                values.append(m.value())
        assert sorted(map(repr, values)) == sorted(repr(r.value) for r in acked)
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)
        assert sum(tp.offset for tp in committed) == len(acked)
    finally:
        consumer.close()


def test_java_client_produces_and_consumes_over_ssl(tls_broker, ca):
    java = JavaClient(ensure_built())
    topic = f"tls-java-{uuid.uuid4().hex[:6]}"
    create_topic(tls_broker.bootstrap, topic, 2)
    props = ClientTls(ca.cert).java()
    records = [Record(key=b"k%d" % i, value=b"v%d" % i, headers=(("h", b"%d" % i),)) for i in range(200)]
    acks = java.produce(tls_broker.ssl_bootstrap, topic, records, props=props)
    assert sorted(a.offset for a in acks if a.partition == 0) == list(range(sum(a.partition == 0 for a in acks)))
    got = java.consume(tls_broker.ssl_bootstrap, topic, count=len(records), props=props)
    assert sorted(r.content() for r in got) == sorted(r.content() for r in records)


def test_a_client_that_does_not_trust_the_certificate_is_not_served(tls_broker, tmp_path):
    stranger = TestCA(tmp_path, "Other CA")
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_wire(tls_broker.ssl_bootstrap, stranger.cert)


# --- mTLS ------------------------------------------------------------------------------------------------------


def test_mtls_clients_are_named_by_their_certificate(mtls_broker, ca):
    alice = ca.client("alice", CN="alice", OU="eng", O="Example", C="US")
    tls = ClientTls(ca.cert, alice.cert, alice.key, alice.bundle)
    topic = f"mtls-{uuid.uuid4().hex[:6]}"
    create_topic(mtls_broker.bootstrap, topic, 1)
    acked = produce("confluent", mtls_broker.ssl_bootstrap, topic, make_records(100, 1, seed=3), tls=tls)
    read_back("kcat", mtls_broker.ssl_bootstrap, topic, acked, tls=tls)
    assert f" on SSL as User:{ALICE}" in mtls_broker.log()

    java = JavaClient(ensure_built())
    records = [Record(key=b"j%d" % i, value=b"java-mtls") for i in range(20)]
    java.produce(mtls_broker.ssl_bootstrap, topic, records, props=tls.java())
    got = java.consume(mtls_broker.ssl_bootstrap, topic, count=len(acked) + len(records), props=tls.java())
    assert sum(r.value == b"java-mtls" for r in got) == len(records)

    # Plaintext clients of the same broker stay anonymous; a TLS client without a certificate is refused.
    assert " on PLAINTEXT as " not in mtls_broker.log()
    without = _tls_wire(mtls_broker.ssl_bootstrap, ca.cert)  # TLS 1.3: the refusal comes with the first read
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _metadata_brokers(without)
    without.close()
    done = subprocess.run([KCAT, "-L", "-b", mtls_broker.ssl_bootstrap, "-m", "5", "-X", "security.protocol=ssl",
                           "-X", f"ssl.ca.location={ca.cert}"], capture_output=True, timeout=30)
    assert done.returncode != 0
    assert "Traceback" not in mtls_broker.log()


# --- reloading -------------------------------------------------------------------------------------------------


def test_certificates_reload_on_sighup_and_open_connections_go_on(ca, tmp_path):
    files = tmp_path / "tls"
    files.mkdir()
    first = ca.server("broker", cn="first", write_to=files)
    b = _tls_broker(tmp_path / "data", first.cert, first.key, "--tls-check-ms", "0").start()
    try:
        old = _tls_wire(b.ssl_bootstrap, ca.cert)
        assert _served_cn(b.ssl_bootstrap, ca.cert) == "first"
        ca.server("broker", cn="second", write_to=files)
        assert _served_cn(b.ssl_bootstrap, ca.cert) == "first"  # no reload without SIGHUP (checks are off)
        b.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: _served_cn(b.ssl_bootstrap, ca.cert) == "second", what="the new certificate")
        assert "TLS reloaded (SIGHUP): certificate CN=second" in b.log()
        assert _metadata_brokers(old)[0][2] == b.ssl_port  # the connection opened before goes on
        assert dict(p for rdn in old.sock.getpeercert()["subject"] for p in rdn)["commonName"] == "first"

        # A key that does not match the certificate: refused, the current certificate stays.
        first.key.write_bytes(ca.server("other", cn="other").key.read_bytes())
        b.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "TLS reload (SIGHUP) failed, still using the previous certificates" in b.log(),
                  what="the refused reload")
        assert _served_cn(b.ssl_bootstrap, ca.cert) == "second"
        old.close()
        assert "Traceback" not in b.log()
    finally:
        b.stop()


def test_certificates_reload_when_the_files_change(ca, tmp_path):
    files = tmp_path / "tls"
    files.mkdir()
    first = ca.server("broker", cn="first", write_to=files)
    b = _tls_broker(tmp_path / "data", first.cert, first.key, "--tls-check-ms", "100").start()
    try:
        topic = f"reload-{uuid.uuid4().hex[:6]}"
        create_topic(b.bootstrap, topic, 1)
        tls = ClientTls(ca.cert)
        acked = produce("confluent", b.ssl_bootstrap, topic, make_records(50, 1, seed=1), tls=tls)
        ca.server("broker", cn="rotated", write_to=files)
        _wait_for(lambda: _served_cn(b.ssl_bootstrap, ca.cert) == "rotated", what="the rotated certificate")
        assert "TLS reloaded (files changed): certificate CN=rotated" in b.log()
        acked += produce("kafka-python", b.ssl_bootstrap, topic, make_records(50, 1, seed=2), tls=tls)
        read_back("aiokafka", b.ssl_bootstrap, topic, acked, tls=tls)
    finally:
        b.stop()


# --- plaintext clients on the ssl port -------------------------------------------------------------------------


def test_a_plaintext_client_on_the_ssl_port_fails_cleanly_and_others_are_served(tls_broker, ca):
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    before = tls_broker.log()
    connections = _open_connections(tls_broker)
    # A raw Kafka request where a TLS ClientHello should come: the connection is closed, no Kafka answer.
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", tls_broker.ssl_port), timeout=15) as s:
            s.sendall(b"\x00\x00\x00\x0e\x00\x12\x00\x00\x00\x00\x00\x01\x00\x04test")  # ApiVersions v0
            received = b""
            while chunk := s.recv(4096):
                received += chunk
            assert received == b"" or received[0] == 0x15  # nothing, or a TLS alert record
    # Real plaintext clients: kafka-python gets no metadata (its version probe skipped: it would retry for 30 s),
    # nor does kcat.
    producer = KafkaProducer(bootstrap_servers=tls_broker.ssl_bootstrap, api_version=(3, 0), max_block_ms=3000)
    with pytest.raises(KafkaTimeoutError, match="Failed to update metadata"):
        producer.send("any", b"x").get(5)
    producer.close(timeout=1)
    done = subprocess.run([KCAT, "-L", "-b", tls_broker.ssl_bootstrap, "-m", "3"], capture_output=True, timeout=30)
    assert done.returncode != 0

    # The broker goes on serving TLS and plaintext clients, and said nothing alarming about the stray ones.
    topic = f"after-plain-{uuid.uuid4().hex[:6]}"
    create_topic(tls_broker.bootstrap, topic, 1)
    tls = ClientTls(ca.cert)
    acked = produce("confluent", tls_broker.ssl_bootstrap, topic, make_records(20, 1, seed=4), tls=tls)
    read_back("confluent", tls_broker.bootstrap, topic, acked)
    after = tls_broker.log()[len(before):]
    assert "Traceback" not in after and " ERROR " not in after
    # Failed handshakes hold nothing: the broker counts no connection for them.
    _wait_for(lambda: _open_connections(tls_broker) <= connections, what="the connection count to come back")


# --- refused configurations ------------------------------------------------------------------------------------


def test_an_ssl_listener_without_usable_certificates_does_not_start(ca, tmp_path):
    def broker(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dray_broker.cli", "broker", "--data-dir", str(tmp_path / "d"),
                               "--listen", f"ssl://127.0.0.1:{free_port()}", *args],
                              capture_output=True, text=True, timeout=60)

    done = broker()
    assert done.returncode == 2
    assert "SSL://127.0.0.1:" in done.stderr and "needs --tls-cert and --tls-key" in done.stderr
    done = broker("--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.key"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"cannot start: cannot use the TLS certificate {tmp_path / 'missing.pem'}" in done.stderr
    server = ca.server("mismatched", cn="x")
    other = ca.server("other-key", cn="y")
    done = broker("--tls-cert", str(server.cert), "--tls-key", str(other.key))
    assert done.returncode == 1 and "KEY_VALUES_MISMATCH" in done.stderr.upper().replace(" ", "_")


# --- the operator CLI ------------------------------------------------------------------------------------------


def _dray(bootstrap: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dray_broker.cli", *args, "--bootstrap", bootstrap], input=stdin,
                          capture_output=True, text=True, timeout=90)


def test_the_cli_connects_with_a_kafka_client_properties_file_or_librdkafka_properties(mtls_broker, tls_broker, ca,
                                                                                       tmp_path):
    ops = ca.client("ops", CN="ops", O="Example")
    properties = tmp_path / "client.properties"
    properties.write_text(f"# as for kafka-topics.sh --command-config\nsecurity.protocol=SSL\n"
                          f"ssl.truststore.type=PEM\nssl.truststore.location={ca.cert}\n"
                          f"ssl.keystore.type=PEM\nssl.keystore.location={ops.bundle}\n")
    topic = f"cli-mtls-{uuid.uuid4().hex[:6]}"
    config = ("--command-config", str(properties))
    done = _dray(mtls_broker.ssl_bootstrap, "topics", "create", topic, "-p", "2", *config)
    assert done.returncode == 0, done.stderr
    done = _dray(mtls_broker.ssl_bootstrap, "produce", topic, *config, stdin="".join(f"v{i}\n" for i in range(30)))
    assert done.returncode == 0, done.stderr
    done = _dray(mtls_broker.ssl_bootstrap, "consume", topic, "--from-beginning", "--exit-at-end", *config)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == sorted(f"v{i}" for i in range(30))
    assert " on SSL as User:CN=ops,O=Example" in mtls_broker.log()

    # librdkafka's own names with -X, on a broker without client certificates.
    tls = ("-X", "security.protocol=ssl", "-X", f"ssl.ca.location={ca.cert}")
    done = _dray(tls_broker.ssl_bootstrap, "topics", "create", topic, *tls)
    assert done.returncode == 0, done.stderr
    listed = _dray(tls_broker.ssl_bootstrap, "topics", "list", "--json", *tls)
    assert listed.returncode == 0 and topic in listed.stdout, listed.stderr
    # Without them the ssl port gives no answer: reported as an unreachable broker, in one line.
    done = _dray(tls_broker.ssl_bootstrap, "topics", "list", "--timeout", "3")
    assert done.returncode == 3 and done.stderr.startswith("dray: cannot reach a Kafka broker"), done.stderr


# --- deploy/make-certs.sh (compose.yaml's certs-init) ----------------------------------------------------------


def test_make_certs_gives_a_broker_clients_trust_and_renews_it_in_place(tmp_path):
    """compose.yaml's recipe: certificates from the script, the first SCRAM user written before the broker starts
    (users-init), a sasl_ssl listener that clients log in to, checking the broker's name."""
    script = Path(__file__).resolve().parents[2] / "deploy" / "make-certs.sh"
    certs = tmp_path / "certs"

    def make(*hosts: str) -> str:
        done = subprocess.run(["sh", str(script), str(certs), *hosts], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "made the CA" in make("localhost", "broker-a1")
    assert "kept" in make("localhost", "broker-a1")  # valid, same hosts: nothing changes
    done = subprocess.run([sys.executable, "-m", "dray_broker.cli", "users", "bootstrap", "admin", "--password",
                           "compose-secret", "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    b = _tls_broker(tmp_path / "data", certs / "broker.pem", certs / "broker.key", "--tls-check-ms", "100",
                    protocol="sasl_ssl").start()
    try:
        topic = f"make-certs-{uuid.uuid4().hex[:6]}"
        create_topic(b.bootstrap, topic, 1)
        by_name = f"localhost:{b.ssl_port}"  # librdkafka checks the name against the certificate
        login = {**ClientTls(certs / "ca.pem").librdkafka(), "security.protocol": "sasl_ssl",
                 "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "admin", "sasl.password": "compose-secret"}
        acked = produce("confluent", by_name, topic, make_records(30, 1, seed=5), confluent_config=login)
        kcat = [KCAT, "-C", "-b", by_name, "-t", topic, "-e", "-q", "-m", "15",
                *(arg for k, v in login.items() for arg in ("-X", f"{k}={v}"))]
        read = subprocess.run(kcat, capture_output=True, timeout=30)
        assert read.returncode == 0, read.stderr
        assert len(read.stdout.splitlines()) == len(acked)

        def served_names() -> set[str]:
            wire = _tls_wire(b.ssl_bootstrap, certs / "ca.pem")
            try:
                return {value for kind, value in wire.sock.getpeercert()["subjectAltName"]}
            finally:
                wire.close()

        assert served_names() == {"127.0.0.1", "localhost", "broker-a1"}
        assert "issued" in make("localhost", "broker-a1", "kafka.example.com")  # another host: a new certificate
        _wait_for(lambda: "kafka.example.com" in served_names(), what="the renewed certificate")
        more = produce("confluent", by_name, topic, make_records(5, 1, seed=6), confluent_config=login)
        assert [r.offset for r in more] == list(range(len(acked), len(acked) + 5))
    finally:
        b.stop()
