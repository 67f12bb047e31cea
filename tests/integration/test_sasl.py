"""SASL logins against real brokers with real clients: SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN (checked against the SCRAM
credential) with confluent-kafka, kafka-python, aiokafka, kcat and the Java client; OAUTHBEARER with a JWT signed by
a key made here (JWKS file); users created over the Kafka API through one broker logging in on another (both
metadata backends); wrong passwords (a clean failure, counted, rate limited per address); what may come before a
login; KIP-368 re-authentication; and a hypothesis fuzz of the handshake over random frame sequences.

Every SASL broker here is started with its first user written by `dray users bootstrap` before it runs."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings, strategies as st
from jwt.algorithms import ECAlgorithm
from kio.schema.errors import ErrorCode

from tests import services
from tests.integration.brokers import BrokerProcess, free_port
from tests.integration.conftest import BACKENDS
from tests.integration.wire import Wire

ADMIN, ADMIN_PASSWORD = "admin", "admin-secret"
MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
RECORDS = 200
TIMEOUT = 20.0
KCAT = "kcat"
ISSUER = "https://issuer.dray.test"
AUDIENCE = "dray-test"


# --------------------------------------------------------------------------------------------- brokers


@dataclass
class SaslBroker:
    process: BrokerProcess  # its --listen is a PLAINTEXT listener (process.bootstrap)
    sasl_port: int  # the SASL_PLAINTEXT listener's
    http_port: int
    metadata: str
    object_store: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def metric(self, name: str, **labels: str) -> float:
        """A counter's value on /metrics (0 until counted)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            m = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
            if m is None:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
        return total


def bootstrap_user(name: str, password: str, metadata: str, mechanism: str = "SCRAM-SHA-256") -> None:
    """`dray users bootstrap`, straight into the metadata store."""
    done = subprocess.run([sys.executable, "-m", "dray_broker.cli", "users", "bootstrap", name, "--password-stdin",
                           "--mechanism", mechanism, "--metadata", metadata],
                          input=password + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"user {name} can log in" in done.stdout


def start_sasl_broker(data_dir: Path, metadata: str, object_store: str, jwks: Path, *extra: str) -> SaslBroker:
    http_port, sasl_port = free_port(), free_port()
    process = BrokerProcess(data_dir, metadata=metadata, object_store=object_store,
                            extra_args=["--listen", f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
                                        "--sasl-mechanisms", "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN,OAUTHBEARER",
                                        "--sasl-oauthbearer-jwks-url", str(jwks),
                                        "--sasl-oauthbearer-expected-issuer", ISSUER,
                                        "--sasl-oauthbearer-expected-audience", AUDIENCE,
                                        "--http-listen", f"127.0.0.1:{http_port}", *extra])
    return SaslBroker(process.start(), sasl_port, http_port, metadata, object_store)


@dataclass
class Issuer:
    """An identity provider made here: an EC key, its JWKS file, tokens signed with it."""

    key: ec.EllipticCurvePrivateKey
    kid: str
    jwks: Path

    def token(self, subject: str, lifetime_s: float = 300, key: ec.EllipticCurvePrivateKey | None = None,
              issuer: str = ISSUER) -> tuple[str, float]:
        now = time.time()
        claims = {"sub": subject, "iss": issuer, "aud": AUDIENCE, "iat": int(now), "exp": int(now + lifetime_s),
                  "scope": "kafka"}
        return jwt.encode(claims, key or self.key, algorithm="ES256", headers={"kid": self.kid}), now + lifetime_s


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="test-key-1", use="sig", alg="ES256")
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return Issuer(key, "test-key-1", path)


def _stores(backend: str, request, tmp_path: Path):
    """(metadata URL, object store URL, Oxia server to stop or None)."""
    if backend == "embedded":
        return f"sqlite://{tmp_path}/meta.db", f"file://{tmp_path}/objects", None
    request.getfixturevalue("oxia_service")
    s3 = request.getfixturevalue("s3_service")
    oxia = services.start_oxia()
    return f"oxia://{oxia.address}", s3.url(f"sasl-{uuid.uuid4().hex[:8]}"), oxia


@pytest.fixture(scope="module", params=BACKENDS)
def sasl_broker(request, tmp_path_factory, issuer):
    """A SASL broker per backend, its admin user bootstrapped; failed logins not limited (tests share 127.0.0.1)."""
    tmp = tmp_path_factory.mktemp(f"sasl-{request.param}")
    metadata, objects, oxia = _stores(request.param, request, tmp)
    bootstrap_user(ADMIN, ADMIN_PASSWORD, metadata)
    broker = start_sasl_broker(tmp / "broker", metadata, objects, issuer.jwks, "--sasl-failed-login-limit", "0")
    yield broker
    broker.process.stop()
    if oxia is not None:
        oxia.stop()


# --------------------------------------------------------------------------------------------- clients


def confluent_config(bootstrap: str, mechanism: str, user: str, password: str) -> dict:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password}


def admin(broker: SaslBroker):
    from confluent_kafka.admin import AdminClient

    return AdminClient(confluent_config(broker.bootstrap, "SCRAM-SHA-256", ADMIN, ADMIN_PASSWORD))


def create_user(broker: SaslBroker, name: str, password: str, mechanisms=("SCRAM-SHA-256", "SCRAM-SHA-512")) -> None:
    """Through the Kafka API (AlterUserScramCredentials), logged in as the admin."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    codes = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256, "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}
    upsertions = [UserScramCredentialUpsertion(name, ScramCredentialInfo(codes[m], 4096), password.encode())
                  for m in mechanisms]
    client = admin(broker)
    futures = client.alter_user_scram_credentials(upsertions, request_timeout=TIMEOUT)
    futures[name].result(timeout=TIMEOUT)


def values(n: int, tag: str) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


def confluent_produce(config: dict, topic: str, records: list[bytes]) -> None:
    from confluent_kafka import Producer

    producer = Producer({**config, "linger.ms": 5, "message.timeout.ms": int(TIMEOUT * 1000)})
    errors = []
    for v in records:
        producer.produce(topic, v, partition=0, on_delivery=lambda err, msg: err and errors.append(err))
    assert producer.flush(TIMEOUT) == 0 and not errors, errors[:3]


def confluent_consume(config: dict, topic: str, n: int) -> list[bytes]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**config, "group.id": f"g-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got.append(msg.value())
    finally:
        consumer.close()
    return got


def kafka_python_round_trip(bootstrap, mechanism, user, password, topic, records, **auth) -> list[bytes]:
    """Produce then read back with kafka-python (auth: other client settings, e.g. an OAUTHBEARER token provider)."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    auth = dict(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                sasl_plain_username=user, sasl_plain_password=password, **auth)
    producer = KafkaProducer(**auth, linger_ms=5, enable_idempotence=False, max_block_ms=int(TIMEOUT * 1000))
    try:
        futures = [producer.send(topic, v, partition=0) for v in records]
        producer.flush(TIMEOUT)
        offsets = [f.get(TIMEOUT).offset for f in futures]
    finally:
        producer.close(timeout=5)
    assert offsets == sorted(offsets) and len(set(offsets)) == len(records)
    consumer = KafkaConsumer(**auth, enable_auto_commit=False, consumer_timeout_ms=int(TIMEOUT * 1000))
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek(TopicPartition(topic, 0), offsets[0])
        got = []
        for msg in consumer:
            got.append(msg.value)
            if len(got) == len(records):
                break
    finally:
        consumer.close()
    return got


def aiokafka_round_trip(bootstrap, mechanism, user, password, topic, records) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    auth = dict(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                sasl_plain_username=user, sasl_plain_password=password)

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(**auth, linger_ms=5)
        await producer.start()
        try:
            sent = await asyncio.wait_for(asyncio.gather(*[await producer.send(topic, v, partition=0)
                                                           for v in records]), TIMEOUT)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(**auth, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, sent[0].offset)
            got: list[bytes] = []
            while len(got) < len(records):
                batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=1000), TIMEOUT)
                got += [m.value for m in batch.get(tp, [])]
            return got
        finally:
            await consumer.stop()

    return asyncio.run(run())


def kcat_round_trip(bootstrap, mechanism, user, password, topic, records) -> list[bytes]:
    auth = ["-b", bootstrap, "-X", "security.protocol=SASL_PLAINTEXT", "-X", f"sasl.mechanisms={mechanism}",
            "-X", f"sasl.username={user}", "-X", f"sasl.password={password}"]
    done = subprocess.run([KCAT, "-P", *auth, "-t", topic, "-p", "0", "-m", str(int(TIMEOUT))],
                          input=b"".join(v + b"\n" for v in records), capture_output=True, timeout=TIMEOUT + 5)
    assert done.returncode == 0 and b"fail" not in done.stderr.lower(), done.stderr
    done = subprocess.run([KCAT, "-C", *auth, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
                           "-m", str(int(TIMEOUT)), "-f", "%s\\n"], capture_output=True, timeout=TIMEOUT + 5)
    assert done.returncode == 0, done.stderr
    return done.stdout.split(b"\n")[:-1]


def login_error(bootstrap: str, config: dict):
    """The error a librdkafka client reports when its login fails (None if none within TIMEOUT)."""
    from confluent_kafka.admin import AdminClient

    errors: list = []
    client = AdminClient({"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT", **config,
                          "error_cb": errors.append, "reconnect.backoff.ms": 2000, "reconnect.backoff.max.ms": 5000})
    deadline = time.monotonic() + TIMEOUT
    while not errors and time.monotonic() < deadline:
        client.poll(0.1)
    return errors[0] if errors else None


def java_props(mechanism: str, user: str, password: str) -> dict:
    module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if mechanism == "PLAIN"
              else "org.apache.kafka.common.security.scram.ScramLoginModule")
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.jaas.config": f'{module} required username="{user}" password="{password}";'}


# --------------------------------------------------------------------------------------------- logins


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_kafka_logs_in_produces_and_consumes(sasl_broker, mechanism):
    """A user made over the Kafka API logs in with each mechanism; what one login produced another reads."""
    user, password = f"u-{uuid.uuid4().hex[:8]}", "p@ss w0rd=,é"
    create_user(sasl_broker, user, password)
    topic = f"sasl-{mechanism.lower()}-{uuid.uuid4().hex[:6]}"
    records = values(RECORDS, mechanism)
    confluent_produce(confluent_config(sasl_broker.bootstrap, mechanism, user, password), topic, records)
    reader = "PLAIN" if mechanism != "PLAIN" else "SCRAM-SHA-512"
    assert confluent_consume(confluent_config(sasl_broker.bootstrap, reader, user, password), topic,
                             RECORDS) == records
    assert sasl_broker.metric("dray_sasl_logins_total", mechanism=mechanism, reauthentication="false") >= 1


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("client", ["kafka-python", "aiokafka", "kcat"])
def test_other_python_clients_and_kcat_log_in(sasl_broker, client, mechanism):
    user, password = f"u-{uuid.uuid4().hex[:8]}", f"secret-{uuid.uuid4().hex[:6]}"
    create_user(sasl_broker, user, password)
    topic = f"sasl-{client}-{uuid.uuid4().hex[:6]}"
    records = values(RECORDS, client)
    round_trip = {"kafka-python": kafka_python_round_trip, "aiokafka": aiokafka_round_trip,
                  "kcat": kcat_round_trip}[client]
    assert round_trip(sasl_broker.bootstrap, mechanism, user, password, topic, records) == records


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_the_java_client_logs_in(sasl_broker, mechanism):
    from tests.integration.java_client import JavaClient, Record, ensure_built

    user, password = f"u-{uuid.uuid4().hex[:8]}", "java-pw"
    create_user(sasl_broker, user, password)
    tool = JavaClient(ensure_built())
    topic = f"sasl-java-{uuid.uuid4().hex[:6]}"
    records = [Record(key=None, value=v, partition=0) for v in values(50, "java")]
    props = java_props(mechanism, user, password)
    acks = tool.produce(sasl_broker.bootstrap, topic, records, props=props)
    assert [a.offset for a in acks] == list(range(50))
    got = tool.consume(sasl_broker.bootstrap, topic, count=50, assign="all", props=props)
    assert [r.value for r in got] == [r.value for r in records]


def test_wrong_password_fails_cleanly_and_is_counted(sasl_broker):
    from confluent_kafka import KafkaError

    user = f"u-{uuid.uuid4().hex[:8]}"
    create_user(sasl_broker, user, "right")
    before = sasl_broker.metric("dray_sasl_failed_logins_total", mechanism="SCRAM-SHA-512",
                                reason="authentication_failed")
    error = login_error(sasl_broker.bootstrap, {"sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user,
                                                "sasl.password": "wrong"})
    assert error is not None and error.code() == KafkaError._AUTHENTICATION, error
    assert "invalid credentials" in error.str()
    assert sasl_broker.metric("dray_sasl_failed_logins_total", mechanism="SCRAM-SHA-512",
                              reason="authentication_failed") > before
    # Unknown users fail the same way, with PLAIN too.
    error = login_error(sasl_broker.bootstrap, {"sasl.mechanism": "PLAIN", "sasl.username": f"nobody-{user}",
                                                "sasl.password": "x"})
    assert error is not None and error.code() == KafkaError._AUTHENTICATION, error
    assert "Invalid username or password" in error.str()
    # And the broker serves the right password on.
    topic = f"sasl-after-failures-{uuid.uuid4().hex[:6]}"
    confluent_produce(confluent_config(sasl_broker.bootstrap, "SCRAM-SHA-512", user, "right"), topic, [b"ok"])


def test_users_cli_lists_creates_and_deletes(sasl_broker):
    auth = ["-b", sasl_broker.bootstrap, "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=PLAIN",
            "-X", f"sasl.username={ADMIN}", "-X", f"sasl.password={ADMIN_PASSWORD}"]

    def dray(*args: str, password: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dray_broker.cli", "users", *args, *auth],
                              input=password, capture_output=True, text=True, timeout=60)

    user = f"cli-{uuid.uuid4().hex[:6]}"
    done = dray("create", user, "--password-stdin", "--mechanism", "SCRAM-SHA-512", "--iterations", "8192",
                password="cli-pw\n")
    assert done.returncode == 0, done.stderr
    listed = json.loads(dray("list", "--json").stdout)
    assert {"user": user, "mechanism": "SCRAM-SHA-512", "iterations": 8192} in listed
    assert {"user": ADMIN, "mechanism": "SCRAM-SHA-256", "iterations": 4096} in listed
    topic = f"sasl-cli-{uuid.uuid4().hex[:6]}"
    confluent_produce(confluent_config(sasl_broker.bootstrap, "SCRAM-SHA-512", user, "cli-pw"), topic, [b"x"])
    done = dray("create", user, "--password-stdin", "--iterations", "100", password="pw\n")
    assert done.returncode == 1 and "Too few iterations" in done.stderr
    assert dray("delete", user).returncode == 0
    assert user not in {u["user"] for u in json.loads(dray("list", "--json").stdout)}
    done = dray("delete", user, "--mechanism", "SCRAM-SHA-256")
    assert done.returncode == 1 and "does not exist" in done.stderr


def test_describe_and_alter_answer_kafka_errors(sasl_broker):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ScramMechanism, UserScramCredentialDeletion

    a = admin(sasl_broker)
    missing = f"missing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(KafkaException, match="does not exist"):
        a.describe_user_scram_credentials([missing], request_timeout=TIMEOUT)[missing].result(timeout=TIMEOUT)
    futures = a.alter_user_scram_credentials([UserScramCredentialDeletion(missing, ScramMechanism.SCRAM_SHA_256)],
                                             request_timeout=TIMEOUT)
    with pytest.raises(KafkaException, match="does not exist"):
        futures[missing].result(timeout=TIMEOUT)


# --------------------------------------------------------------------------------------------- across brokers


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_user_created_through_one_broker_logs_in_on_another(backend, request, tmp_path, issuer):
    metadata, objects, oxia = _stores(backend, request, tmp_path)
    brokers = []
    try:
        bootstrap_user(ADMIN, ADMIN_PASSWORD, metadata)
        brokers = [start_sasl_broker(tmp_path / f"b{i}", metadata, objects, issuer.jwks) for i in range(2)]
        one, other = brokers
        user = f"u-{uuid.uuid4().hex[:8]}"
        create_user(one, user, "shared", mechanisms=("SCRAM-SHA-512",))
        topic = f"sasl-across-{uuid.uuid4().hex[:6]}"
        confluent_produce(confluent_config(other.bootstrap, "SCRAM-SHA-512", user, "shared"), topic, [b"a", b"b"])
        assert confluent_consume(confluent_config(one.bootstrap, "PLAIN", user, "shared"), topic, 2) == [b"a", b"b"]
        # Deleted through the other broker: refused on the first.
        from confluent_kafka.admin import ScramMechanism, UserScramCredentialDeletion

        client = admin(other)
        client.alter_user_scram_credentials([UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)],
                                            request_timeout=TIMEOUT)[user].result(timeout=TIMEOUT)
        error = login_error(one.bootstrap, {"sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user,
                                            "sasl.password": "shared"})
        assert error is not None and "invalid credentials" in error.str(), error
    finally:
        for b in brokers:
            b.process.stop()
        if oxia is not None:
            oxia.stop()


# --------------------------------------------------------------------------------------------- OAUTHBEARER


def test_oauthbearer_with_a_token_from_a_key_the_test_made(sasl_broker, issuer, monkeypatch):
    from confluent_kafka import KafkaError

    topic = f"sasl-oauth-{uuid.uuid4().hex[:6]}"
    config = {"bootstrap.servers": sasl_broker.bootstrap, "security.protocol": "SASL_PLAINTEXT",
              "sasl.mechanism": "OAUTHBEARER", "oauth_cb": lambda _: issuer.token("service-a")}
    confluent_produce(config, topic, [b"token", b"login"])
    assert confluent_consume(config, topic, 2) == [b"token", b"login"]
    assert sasl_broker.metric("dray_sasl_logins_total", mechanism="OAUTHBEARER") >= 1

    # kafka-python, with a token provider.
    from kafka.net.sasl.oauth import AbstractTokenProvider

    class Tokens(AbstractTokenProvider):
        def token(self):
            return issuer.token("service-b")[0]

    records = [b"from", b"kafka-python"]
    assert kafka_python_round_trip(sasl_broker.bootstrap, "OAUTHBEARER", None, None, f"{topic}-kp", records,
                                   sasl_oauth_token_provider=Tokens()) == records

    # The Java client, with Kafka's own login handler reading the token from a file (KIP-768's file token
    # endpoint; Kafka 4 wants the URL allowed by a system property).
    from tests.integration.java_client import JavaClient, ensure_built

    token_file = issuer.jwks.parent / f"token-{uuid.uuid4().hex[:6]}.jwt"
    token_file.write_text(issuer.token("service-c")[0])
    monkeypatch.setenv("JAVA_TOOL_OPTIONS",
                       f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={token_file.as_uri()}")
    props = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER",
             "sasl.login.callback.handler.class":
                 "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler",
             "sasl.oauthbearer.token.endpoint.url": token_file.as_uri(),
             "sasl.jaas.config": "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required ;"}
    got = JavaClient(ensure_built()).consume(sasl_broker.bootstrap, topic, count=2, assign="all", props=props)
    assert [r.value for r in got] == [b"token", b"login"]

    # A token signed by another key is refused, cleanly.
    stranger = ec.generate_private_key(ec.SECP256R1())
    error = login_error(sasl_broker.bootstrap, {"sasl.mechanism": "OAUTHBEARER",
                                                "oauth_cb": lambda _: issuer.token("mallory", key=stranger)})
    assert error is not None and error.code() == KafkaError._AUTHENTICATION, error
    assert "invalid_token" in error.str()


# --------------------------------------------------------------------------------------------- KIP-368


def test_sessions_expire_and_clients_reauthenticate(tmp_path, issuer):
    """With connections.max.reauth.ms, SaslAuthenticate tells the client its session lifetime and librdkafka logs in
    again on the same connection before it ends: a producer keeps producing across several lifetimes."""
    metadata, objects = f"sqlite://{tmp_path}/meta.db", f"file://{tmp_path}/objects"
    bootstrap_user("reauth", "pw", metadata, mechanism="SCRAM-SHA-512")
    broker = start_sasl_broker(tmp_path / "b", metadata, objects, issuer.jwks, "--connections-max-reauth-ms", "1500")
    try:
        from confluent_kafka import Producer

        producer = Producer({**confluent_config(broker.bootstrap, "SCRAM-SHA-512", "reauth", "pw"), "linger.ms": 0})
        errors, delivered = [], []
        topic = f"sasl-reauth-{uuid.uuid4().hex[:6]}"
        deadline = time.monotonic() + 30
        while broker.metric("dray_sasl_logins_total", reauthentication="true") < 3 and time.monotonic() < deadline:
            producer.produce(topic, b"x", partition=0,
                             on_delivery=lambda err, msg: errors.append(err) if err else delivered.append(msg))
            producer.flush(5)
        assert broker.metric("dray_sasl_logins_total", reauthentication="true") >= 3
        assert not errors and delivered
        assert [m.offset() for m in delivered] == list(range(len(delivered)))
        assert broker.metric("dray_sasl_failed_logins_total") == 0

        del producer  # closed: only the Java consumer's connections log in from now on

        # The Java client re-authenticates too: a consumer fetching across several session lifetimes.
        from tests.integration.java_client import JavaClient, ensure_built

        tool = JavaClient(ensure_built())
        before = broker.metric("dray_sasl_logins_total", reauthentication="true")
        with tool.start_consumer(broker.bootstrap, topic, assign="all",
                                 props=java_props("SCRAM-SHA-512", "reauth", "pw")) as consumer:
            consumer.wait_for(lambda e: len(consumer.records()) >= len(delivered))
            deadline = time.monotonic() + 30
            while (broker.metric("dray_sasl_logins_total", reauthentication="true") < before + 2
                   and time.monotonic() < deadline):
                time.sleep(0.2)  # polling the broker's counter
            confluent_produce(confluent_config(broker.bootstrap, "SCRAM-SHA-512", "reauth", "pw"), topic, [b"late"])
            consumer.wait_for(lambda e: len(consumer.records()) >= len(delivered) + 1)
            assert consumer.close() == 0
        assert broker.metric("dray_sasl_logins_total", reauthentication="true") >= before + 2
        assert consumer.records()[-1].value == b"late"
        assert broker.metric("dray_sasl_failed_logins_total") == 0
    finally:
        broker.process.stop()


# --------------------------------------------------------------------------------------------- before a login


def _sasl_wire(broker: SaslBroker) -> Wire:
    return Wire(broker.bootstrap, client_id="sasl-wire")


def _closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_only_api_versions_and_the_handshake_come_before_a_login(sasl_broker):
    from kio.schema.api_versions.v3.request import ApiVersionsRequest
    from kio.schema.metadata.v12.request import MetadataRequest
    from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

    wire = _sasl_wire(sasl_broker)
    try:
        versions = wire.call(18, 3, ApiVersionsRequest(client_software_name="t", client_software_version="1"))
        advertised = {k.api_key: (k.min_version, k.max_version) for k in versions.api_keys}
        assert advertised[17] == (0, 1) and advertised[36] == (0, 2) and 50 in advertised and 51 in advertised
        wire.send(3, 12, MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                         include_topic_authorized_operations=False))
        assert _closed(wire.sock), "Metadata before a login left the connection open"
    finally:
        wire.close()
    wire = _sasl_wire(sasl_broker)
    try:
        reply = wire.call(17, 1, SaslHandshakeRequest(mechanism="GSSAPI"))
        assert reply.error_code == ErrorCode.unsupported_sasl_mechanism
        assert set(reply.mechanisms) == {"SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", "OAUTHBEARER"}
        assert _closed(wire.sock)
    finally:
        wire.close()


def test_a_plaintext_login_with_handshake_v0_raw_tokens(sasl_broker):
    """SaslHandshake v0: the PLAIN message then goes as a raw frame, and the empty answer comes back raw."""
    from kio.schema.metadata.v12.request import MetadataRequest
    from kio.schema.sasl_handshake.v0.request import SaslHandshakeRequest

    wire = _sasl_wire(sasl_broker)
    try:
        assert wire.call(17, 0, SaslHandshakeRequest(mechanism="PLAIN")).error_code == ErrorCode.none
        token = f"\0{ADMIN}\0{ADMIN_PASSWORD}".encode()
        wire.sock.sendall(struct.pack(">i", len(token)) + token)
        assert wire._read(4) == b"\0\0\0\0"
        metadata = wire.call(3, 12, MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                                    include_topic_authorized_operations=False))
        assert metadata.brokers
    finally:
        wire.close()


def test_a_listener_without_sasl_refuses_the_sasl_apis(sasl_broker):
    """The broker's PLAINTEXT listener (next to its SASL one) answers SaslHandshake and SaslAuthenticate with
    ILLEGAL_SASL_STATE, as Kafka does, and serves on."""
    from kio.schema.metadata.v12.request import MetadataRequest
    from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
    from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

    wire = Wire(sasl_broker.process.bootstrap)
    try:
        assert wire.call(17, 1, SaslHandshakeRequest(mechanism="PLAIN")).error_code == ErrorCode.illegal_sasl_state
        reply = wire.call(36, 2, SaslAuthenticateRequest(auth_bytes=f"\0{ADMIN}\0{ADMIN_PASSWORD}".encode()))
        assert reply.error_code == ErrorCode.illegal_sasl_state
        assert wire.call(3, 12, MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                                include_topic_authorized_operations=False)).brokers
    finally:
        wire.close()


def test_an_expired_session_is_closed_at_its_next_request(tmp_path, issuer):
    """A client that does not re-authenticate (this raw one) is told its session lifetime and is disconnected at
    its first request after it, as Kafka does."""
    from kio.schema.metadata.v12.request import MetadataRequest
    from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
    from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

    metadata, objects = f"sqlite://{tmp_path}/meta.db", f"file://{tmp_path}/objects"
    bootstrap_user(ADMIN, ADMIN_PASSWORD, metadata)
    broker = start_sasl_broker(tmp_path / "b", metadata, objects, issuer.jwks, "--connections-max-reauth-ms", "1000")
    wire = _sasl_wire(broker)
    try:
        assert wire.call(17, 1, SaslHandshakeRequest(mechanism="PLAIN")).error_code == ErrorCode.none
        reply = wire.call(36, 2, SaslAuthenticateRequest(auth_bytes=f"\0{ADMIN}\0{ADMIN_PASSWORD}".encode()))
        assert reply.error_code == ErrorCode.none
        assert reply.session_lifetime.total_seconds() * 1000 == 1000
        request = MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                  include_topic_authorized_operations=False)
        answered = 0
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                wire.call(3, 12, request)
                answered += 1
            except ConnectionError:
                break
            time.sleep(0.1)  # a client's pace between requests, not a wait for the broker
        else:
            pytest.fail("the session never ended")
        assert answered >= 1 and _closed(wire.sock)
    finally:
        wire.close()
        broker.process.stop()


def test_failed_logins_are_rate_limited_per_address(tmp_path, issuer):
    metadata, objects = f"sqlite://{tmp_path}/meta.db", f"file://{tmp_path}/objects"
    bootstrap_user("limited", "right", metadata)
    broker = start_sasl_broker(tmp_path / "b", metadata, objects, issuer.jwks, "--sasl-failed-login-limit", "3",
                               "--sasl-failed-login-window-ms", "600000")
    try:
        wrong = {"sasl.mechanism": "PLAIN", "sasl.username": "limited", "sasl.password": "wrong"}
        for _ in range(3):
            error = login_error(broker.bootstrap, wrong)
            assert error is not None and "Invalid username or password" in error.str(), error
        assert broker.metric("dray_sasl_failed_logins_total", reason="authentication_failed") == 3
        # Now even the right password is refused from this address, without being checked.
        error = login_error(broker.bootstrap, {**wrong, "sasl.password": "right"})
        assert error is not None and "Too many failed logins" in error.str(), error
        assert broker.metric("dray_sasl_failed_logins_total", reason="rate_limited") >= 1
    finally:
        broker.process.stop()


# --------------------------------------------------------------------------------------------- fuzz


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _request(api_key: int, version: int, body: bytes, correlation_id: int = 1) -> bytes:
    flexible = (api_key == 36 and version >= 2) or (api_key == 18 and version >= 3)
    header = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"fuzz" + (b"\0" if flexible else b"")
    return _frame(header + body)


def _kafka_string(s: bytes) -> bytes:
    return struct.pack(">h", len(s)) + s


def _kafka_bytes(b: bytes, compact: bool) -> bytes:
    if compact:
        n = len(b) + 1
        varint = bytearray()
        while n >= 0x80:
            varint.append((n & 0x7F) | 0x80)
            n >>= 7
        varint.append(n)
        return bytes(varint) + b
    return struct.pack(">i", len(b)) + b


_mechanism = st.sampled_from([b"SCRAM-SHA-256", b"SCRAM-SHA-512", b"PLAIN", b"OAUTHBEARER", b"GSSAPI", b"",
                              b"\xff\xfe"])
_token = st.one_of(
    st.binary(max_size=64),
    st.just(f"\0{ADMIN}\0{ADMIN_PASSWORD}".encode()),
    st.just(b"n,,n=admin,r=abcdefgh"),
    st.just(b"c=biws,r=abcdefgh,p=AAAA"),
)
_frames = st.one_of(
    st.builds(lambda v, m: _request(17, v, _kafka_string(m)), st.integers(0, 2), _mechanism),
    st.builds(lambda v, t: _request(36, v, _kafka_bytes(t, v >= 2) + (b"\0" if v >= 2 else b"")),
              st.integers(0, 3), _token),
    st.builds(lambda v: _request(18, v, b"\x02t\x021\x00" if v >= 3 else b""), st.integers(0, 4)),
    st.builds(lambda k: _request(k, 4, b"\0" * 8), st.sampled_from([0, 1, 3, 19, 50, 51, 999])),
    st.builds(_frame, _token),  # a raw token
    st.binary(min_size=1, max_size=40),  # anything at all
)


_PLAIN_LOGIN = f"\0{ADMIN}\0{ADMIN_PASSWORD}".encode()
# Where the random frames start: before a handshake, in each mechanism's exchange (v1 and v0's raw tokens), logged in.
_starts = st.sampled_from([
    [],
    [_request(18, 3, b"\x02t\x021\x00")],
    [_request(17, 1, _kafka_string(b"PLAIN"))],
    [_request(17, 1, _kafka_string(b"SCRAM-SHA-256"))],
    [_request(17, 1, _kafka_string(b"SCRAM-SHA-512")), _request(36, 2, _kafka_bytes(b"n,,n=admin,r=xyz", True) + b"\0")],
    [_request(17, 1, _kafka_string(b"OAUTHBEARER"))],
    [_request(17, 0, _kafka_string(b"PLAIN"))],
    [_request(17, 0, _kafka_string(b"SCRAM-SHA-256"))],
    [_request(17, 1, _kafka_string(b"PLAIN")), _request(36, 2, _kafka_bytes(_PLAIN_LOGIN, True) + b"\0")],
    [_request(17, 0, _kafka_string(b"PLAIN")), _frame(_PLAIN_LOGIN)],
])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=_starts, more=st.lists(_frames, max_size=6))
def test_fuzzed_handshakes_never_crash_the_broker(fuzz_broker, start, more):
    """Random sequences of SASL frames, requests before a login, raw tokens and garbage: each connection gets
    answers or is closed, and the broker keeps logging users in."""
    s = socket.create_connection(("127.0.0.1", fuzz_broker.process.port), timeout=5)
    try:
        try:
            for frame in start + more:
                s.sendall(frame)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # closed by the broker already
            pass
        else:
            assert _closed(s, 10), "the broker neither answered and closed nor closed"
    finally:
        s.close()
    assert fuzz_broker.process.proc.poll() is None, fuzz_broker.process.log()[-3000:]


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory, issuer):
    tmp = tmp_path_factory.mktemp("sasl-fuzz")
    metadata = f"sqlite://{tmp}/meta.db"
    bootstrap_user(ADMIN, ADMIN_PASSWORD, metadata)
    broker = start_sasl_broker(tmp / "b", metadata, f"file://{tmp}/objects", issuer.jwks,
                               "--sasl-failed-login-limit", "0")
    yield broker
    # After the fuzzing: the broker still logs users in and serves them.
    topic = f"sasl-fuzz-{uuid.uuid4().hex[:6]}"
    confluent_produce(confluent_config(broker.bootstrap, "SCRAM-SHA-256", ADMIN, ADMIN_PASSWORD), topic, [b"alive"])
    assert "Traceback" not in broker.process.log()
    broker.process.stop()


# --------------------------------------------------------------------------------------------- SASL_SSL


def test_sasl_over_tls(tmp_path, issuer):
    """A sasl_ssl listener: TLS first (the client checks the broker's certificate), then the SASL login, with
    librdkafka and the Java client; a wrong password fails the same clean way."""
    from confluent_kafka import KafkaError

    from tests.integration.certs import TestCA
    from tests.integration.java_client import JavaClient, Record, ensure_built

    ca = TestCA(tmp_path / "pki")
    server = ca.server()
    metadata, objects = f"sqlite://{tmp_path}/meta.db", f"file://{tmp_path}/objects"
    bootstrap_user("tls-user", "tls-pw", metadata, mechanism="SCRAM-SHA-512")
    port = free_port()
    broker = BrokerProcess(tmp_path / "b", metadata=metadata, object_store=objects,
                           extra_args=["--listen", f"SASL_SSL://127.0.0.1:{port}", "--tls-cert", str(server.cert),
                                       "--tls-key", str(server.key)]).start()
    bootstrap = f"127.0.0.1:{port}"
    try:
        tls = {"security.protocol": "SASL_SSL", "ssl.ca.location": str(ca.cert)}
        config = {**confluent_config(bootstrap, "SCRAM-SHA-512", "tls-user", "tls-pw"), **tls}
        topic = f"sasl-ssl-{uuid.uuid4().hex[:6]}"
        records = values(100, "ssl")
        confluent_produce(config, topic, records)
        assert confluent_consume({**config, "sasl.mechanism": "PLAIN"}, topic, 100) == records

        props = {**java_props("SCRAM-SHA-512", "tls-user", "tls-pw"), "security.protocol": "SASL_SSL",
                 "ssl.truststore.type": "PEM", "ssl.truststore.location": str(ca.cert)}
        got = JavaClient(ensure_built()).consume(bootstrap, topic, count=100, assign="all", props=props)
        assert [r.value for r in got] == records
        acks = JavaClient(ensure_built()).produce(bootstrap, topic, [Record(key=None, value=b"java", partition=0)],
                                                 props=props)
        assert [a.offset for a in acks] == [100]

        error = login_error(bootstrap, {**tls, "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "tls-user",
                                        "sasl.password": "wrong"})
        assert error is not None and error.code() == KafkaError._AUTHENTICATION, error
    finally:
        broker.stop()
