"""The per-connection SASL state machine (dray_broker/auth/sasl.py), driven with bytes: SaslHandshake v0 (raw frames)
and v1 (SaslAuthenticate) with the SCRAM, PLAIN and OAUTHBEARER clients of kafka-python and aiokafka, Kafka's error
codes and messages, KIP-368 session lifetimes and re-authentication, and hypothesis fuzzing of the whole machine."""

import asyncio
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings, strategies as st
from jwt.algorithms import ECAlgorithm
from kio.schema.errors import ErrorCode

from dray_broker.auth.credentials import ScramMechanism
from dray_broker.auth.oauthbearer import JsonWebKeySet, OAuthBearerSettings, RefreshingKeySet
from dray_broker.auth.principal import user
from dray_broker.auth.sasl import (
    API_VERSIONS,
    MECHANISMS,
    SASL_AUTHENTICATE,
    SASL_HANDSHAKE,
    Action,
    SaslConnection,
    SaslSettings,
    State,
)
from dray_broker.auth.scram import new_credential
from tests.unit.auth_clients import SCRAM_CLIENTS, KafkaPythonOAuth, kafka_python_plain

PRODUCE, METADATA = 0, 3
T0 = 1_800_000_000_000  # ms


def run(coro):
    """Drive a coroutine that never suspends (every lookup here is synchronous) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine suspended")


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


CREDENTIALS = {
    ("alice", m): new_credential(m, "alice-secret") for m in ScramMechanism
} | {("bob", ScramMechanism.SCRAM_SHA_512): new_credential(ScramMechanism.SCRAM_SHA_512, "bob-secret")}


def lookup(username, mechanism):
    return CREDENTIALS.get((username, mechanism))


EC_KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = JsonWebKeySet.from_json({"keys": [{**ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), "kid": "k1"}]})


def bearer(sub="alice", exp_ms=T0 + 3_600_000):
    return jwt.encode({"sub": sub, "iat": T0 // 1000 - 10, "exp": exp_ms // 1000}, EC_KEY, algorithm="ES256",
                      headers={"kid": "k1"})


def make(mechanisms=MECHANISMS, clock=None, **kw):
    defaults = dict(credentials=lookup, oauth_keys=JWKS.key_for, oauthbearer=OAuthBearerSettings(),
                    fake_secret=b"fake")
    return SaslConnection(SaslSettings(mechanisms=tuple(mechanisms), **(defaults | kw)), clock or Clock())


def handshake(conn, mechanism, version=1):
    assert conn.admit(SASL_HANDSHAKE).action is Action.HANDSHAKE
    reply = conn.handshake(version, mechanism)
    assert reply.error_code is ErrorCode.none and not reply.close
    return reply


def scram_login(conn, client, version=2):
    """SCRAM over SaslAuthenticate; returns the last reply."""
    assert conn.admit(SASL_AUTHENTICATE).action is Action.AUTHENTICATE
    first = run(conn.authenticate(client.first(), version))
    assert first.error_code is ErrorCode.none and first.session_lifetime_ms == 0
    assert conn.admit(SASL_AUTHENTICATE).action is Action.AUTHENTICATE
    final = run(conn.authenticate(client.final(first.auth_bytes), version))
    if final.error_code is ErrorCode.none:
        client.verify(final.auth_bytes)
    return final


@pytest.mark.parametrize("client_name", SCRAM_CLIENTS)
@pytest.mark.parametrize("mechanism", list(ScramMechanism), ids=lambda m: m.mechanism_name)
def test_scram_over_sasl_authenticate(client_name, mechanism):
    conn = make()
    assert conn.admit(API_VERSIONS).action is Action.PROCESS  # served before the handshake
    assert conn.admit(API_VERSIONS).action is Action.PROCESS
    assert handshake(conn, mechanism.mechanism_name).mechanisms == MECHANISMS
    assert conn.state is State.AUTHENTICATE and not conn.expects_raw_token
    final = scram_login(conn, SCRAM_CLIENTS[client_name]("alice", "alice-secret", mechanism.mechanism_name))
    assert (final.error_code, final.session_lifetime_ms, final.close) == (ErrorCode.none, 0, False)
    assert conn.authenticated and conn.principal == user("alice") and conn.mechanism == mechanism.mechanism_name
    assert conn.session_expires_at_ms is None
    assert conn.admit(PRODUCE).action is Action.PROCESS


def _unframe(frame):
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    return frame[4:]


@pytest.mark.parametrize("mechanism", list(ScramMechanism), ids=lambda m: m.mechanism_name)
def test_scram_over_raw_frames(mechanism):
    """SaslHandshake v0: the exchange goes on in length-prefixed frames without Kafka headers."""
    conn = make()
    handshake(conn, mechanism.mechanism_name, version=0)
    assert conn.expects_raw_token
    client = SCRAM_CLIENTS["kafka-python"]("alice", "alice-secret", mechanism.mechanism_name)
    first = run(conn.raw_token(client.first()))
    final = run(conn.raw_token(client.final(_unframe(first.frame))))
    client.verify(_unframe(final.frame))
    assert conn.authenticated and not conn.expects_raw_token and conn.principal == user("alice")


def test_plain_raw_frame_and_failure_closes_silently():
    conn = make()
    handshake(conn, "PLAIN", version=0)
    reply = run(conn.raw_token(kafka_python_plain("alice", "alice-secret")))
    assert reply.frame == b"\x00\x00\x00\x00" and not reply.close  # an empty token, as Kafka sends
    assert conn.principal == user("alice")

    conn = make()
    handshake(conn, "PLAIN", version=0)
    reply = run(conn.raw_token(kafka_python_plain("alice", "wrong")))
    assert reply.frame is None and reply.close  # v0: no error message, the connection closes
    assert conn.state is State.FAILED and conn.admit(API_VERSIONS).action is Action.CLOSE


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_failures_answer_kafkas_generic_message(mechanism):
    messages = set()
    for name, password in [("alice", "wrong"), ("nobody", "alice-secret")]:
        conn = make()
        handshake(conn, mechanism)
        final = scram_login(conn, SCRAM_CLIENTS["aiokafka"](name, password, mechanism))
        assert (final.error_code, final.auth_bytes, final.close) == (ErrorCode.sasl_authentication_failed, b"", True)
        messages.add(final.error_message)
        assert conn.state is State.FAILED and conn.principal is None
        assert conn.admit(METADATA).action is Action.CLOSE
    assert messages == {f"Authentication failed during authentication due to invalid credentials with SASL "
                        f"mechanism {mechanism}"}


def test_plain_checks_the_scram_credential_off_the_loop():
    calls = []

    async def run_blocking(fn):
        calls.append(fn)
        return fn()

    outcomes = []
    for name, password in [("alice", "alice-secret"), ("bob", "bob-secret"), ("alice", "nope"), ("eve", "x")]:
        conn = make(["PLAIN"], run_blocking=run_blocking)
        handshake(conn, "PLAIN")
        reply = run(conn.authenticate(kafka_python_plain(name, password), 1))
        outcomes.append((reply.error_code, reply.error_message, conn.principal))
    assert outcomes == [
        (ErrorCode.none, None, user("alice")),
        (ErrorCode.none, None, user("bob")),  # bob only has a SCRAM-SHA-512 credential
        (ErrorCode.sasl_authentication_failed, "Authentication failed: Invalid username or password", None),
        (ErrorCode.sasl_authentication_failed, "Authentication failed: Invalid username or password", None),
    ]
    assert len(calls) == 4  # one PBKDF2 per login, the unknown user's included


def test_async_credential_lookup():
    async def slow_lookup(username, mechanism):
        return lookup(username, mechanism)

    async def scenario():
        conn = make(["SCRAM-SHA-256"], credentials=slow_lookup)
        handshake(conn, "SCRAM-SHA-256")
        client = SCRAM_CLIENTS["kafka-python"]("alice", "alice-secret", "SCRAM-SHA-256")
        first = await conn.authenticate(client.first(), 1)
        final = await conn.authenticate(client.final(first.auth_bytes), 1)
        client.verify(final.auth_bytes)
        return conn.principal

    assert asyncio.run(scenario()) == user("alice")


def test_a_failing_credential_store_fails_the_login_not_the_connection_task():
    def broken(username, mechanism):
        raise ConnectionError("metadata store unreachable")

    conn = make(["SCRAM-SHA-256", "PLAIN"], credentials=broken)
    handshake(conn, "SCRAM-SHA-256")
    reply = run(conn.authenticate(b"n,,n=alice,r=abc", 1))
    assert reply.error_code is ErrorCode.sasl_authentication_failed and reply.close
    conn = make(["PLAIN"], credentials=lambda u, m: "not a credential")
    handshake(conn, "PLAIN")
    assert run(conn.authenticate(b"\x00alice\x00pw", 1)).error_code is ErrorCode.sasl_authentication_failed


def test_oauthbearer_login_and_token_bounded_session():
    clock = Clock()
    conn = make(["OAUTHBEARER"], clock=clock, max_reauth_ms=7_200_000)
    handshake(conn, "OAUTHBEARER")
    client = KafkaPythonOAuth(bearer(exp_ms=T0 + 600_000), {"traceId": "t"})
    reply = run(conn.authenticate(client.initial(), 2))
    assert reply.error_code is ErrorCode.none and reply.auth_bytes == b""
    assert client.receive(reply.auth_bytes) is None and client.authenticated
    assert conn.principal == user("alice")
    assert reply.session_lifetime_ms == 600_000  # the token expires before connections.max.reauth.ms
    clock.now += 600_001
    assert conn.admit(PRODUCE).action is Action.CLOSE


def test_oauthbearer_with_a_refreshing_key_set():
    """The JWKS as the broker will use it: fetched through an injected callable, looked up asynchronously."""
    document = json.dumps({"keys": [{**ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), "kid": "k1"}]})
    keyset = RefreshingKeySet(lambda: document, Clock())
    conn = make(["OAUTHBEARER"], oauth_keys=keyset.key_for)
    handshake(conn, "OAUTHBEARER")
    assert run(conn.authenticate(KafkaPythonOAuth(bearer()).initial(), 1)).error_code is ErrorCode.none
    assert conn.principal == user("alice")


def test_oauthbearer_invalid_token_exchange():
    conn = make(["OAUTHBEARER"])
    handshake(conn, "OAUTHBEARER")
    client = KafkaPythonOAuth(bearer(exp_ms=T0 - 3_600_000))
    challenge = run(conn.authenticate(client.initial(), 2))
    assert (challenge.error_code, challenge.auth_bytes) == (ErrorCode.none, b'{"status":"invalid_token"}')
    assert not conn.authenticated and conn.state is State.AUTHENTICATE
    reply = run(conn.authenticate(client.receive(challenge.auth_bytes), 2))
    assert (reply.error_code, reply.error_message, reply.close) == (
        ErrorCode.sasl_authentication_failed, '{"status":"invalid_token"}', True)
    # A malformed client response fails at once with the generic message.
    conn = make(["OAUTHBEARER"])
    handshake(conn, "OAUTHBEARER")
    reply = run(conn.authenticate(b"n,,\x01auth=Basic x\x01\x01", 2))
    assert reply.error_message == ("Authentication failed during authentication due to invalid credentials with "
                                   "SASL mechanism OAUTHBEARER")


def test_unsupported_mechanism():
    conn = make(["SCRAM-SHA-512"])
    reply = conn.handshake(1, "GSSAPI")
    assert (reply.error_code, reply.mechanisms, reply.close) == (
        ErrorCode.unsupported_sasl_mechanism, ("SCRAM-SHA-512",), True)
    assert conn.state is State.FAILED
    assert conn.handshake(1, "SCRAM-SHA-512").close  # nothing more after a failure


def test_requests_before_and_during_authentication():
    conn = make()
    assert conn.admit(METADATA).action is Action.CLOSE  # Kafka: no answer before the handshake
    conn = make()
    assert conn.admit(SASL_AUTHENTICATE).action is Action.CLOSE
    conn = make()
    handshake(conn, "PLAIN")
    admission = conn.admit(METADATA)
    assert (admission.action, admission.error_code, admission.close) == (
        Action.REJECT, ErrorCode.illegal_sasl_state, True)
    assert conn.state is State.FAILED
    conn = make()
    handshake(conn, "PLAIN", version=0)
    assert conn.admit(METADATA).action is Action.CLOSE  # frames are raw now: a Kafka request is a protocol error
    assert run(conn.authenticate(b"x", 1)).close


def test_after_authentication():
    conn = make(["PLAIN"])
    handshake(conn, "PLAIN")
    run(conn.authenticate(kafka_python_plain("alice", "alice-secret"), 1))
    again = conn.admit(SASL_AUTHENTICATE)
    assert (again.action, again.error_code, again.close) == (Action.REJECT, ErrorCode.illegal_sasl_state, False)
    handshake_again = conn.admit(SASL_HANDSHAKE)  # no session lifetime: no re-authentication
    assert (handshake_again.action, handshake_again.error_code, handshake_again.close) == (
        Action.REJECT, ErrorCode.illegal_sasl_state, False)
    assert conn.authenticated and conn.admit(METADATA).action is Action.PROCESS


def _scram_conn(clock, version=2, **kw):
    conn = make(["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"], clock=clock, max_reauth_ms=60_000, **kw)
    handshake(conn, "SCRAM-SHA-512")
    final = scram_login(conn, SCRAM_CLIENTS["kafka-python"]("alice", "alice-secret", "SCRAM-SHA-512"), version)
    assert final.session_lifetime_ms == 60_000
    return conn


def test_session_lifetime_and_expiry():
    clock = Clock()
    conn = _scram_conn(clock, max_reauth_ms_by_mechanism={"SCRAM-SHA-256": 1000})
    assert conn.session_expires_at_ms == T0 + 60_000
    clock.now += 60_000
    assert conn.admit(PRODUCE).action is Action.PROCESS
    clock.now += 1
    assert conn.admit(PRODUCE).action is Action.CLOSE  # Kafka closes an expired connection at its next request


def test_reauthentication():
    clock = Clock()
    conn = _scram_conn(clock)
    clock.now += 50_000
    handshake(conn, "SCRAM-SHA-512")
    assert conn.state is State.AUTHENTICATE and conn.principal == user("alice")  # kept while re-authenticating
    assert conn.admit(PRODUCE).action is Action.REJECT  # nothing else until it is done
    conn = _scram_conn(clock)
    clock.now += 50_000
    handshake(conn, "SCRAM-SHA-512")
    final = scram_login(conn, SCRAM_CLIENTS["aiokafka"]("alice", "alice-secret", "SCRAM-SHA-512"))
    assert final.error_code is ErrorCode.none and final.session_lifetime_ms == 60_000
    assert conn.session_expires_at_ms == clock.now + 60_000 and conn.principal == user("alice")
    # At most one re-authentication start per second.
    assert conn.admit(SASL_HANDSHAKE).action is Action.REJECT
    clock.now += 1000
    assert conn.admit(SASL_HANDSHAKE).action is Action.HANDSHAKE
    # After expiry, a SaslHandshake still re-authenticates (anything else closes).
    clock.now += 120_000
    assert conn.admit(SASL_HANDSHAKE).action is Action.HANDSHAKE
    assert conn.admit(PRODUCE).action is Action.CLOSE


def test_reauthentication_must_keep_mechanism_and_principal():
    clock = Clock()
    conn = _scram_conn(clock)
    clock.now += 1000
    handshake(conn, "PLAIN")  # Kafka accepts the handshake and fails the first token
    reply = run(conn.authenticate(kafka_python_plain("alice", "alice-secret"), 2))
    assert (reply.error_code, reply.error_message, reply.close) == (
        ErrorCode.sasl_authentication_failed,
        "SASL mechanism 'PLAIN' requested by client is not supported for re-authentication of mechanism "
        "'SCRAM-SHA-512'", True)
    conn = _scram_conn(clock)
    clock.now += 1000
    handshake(conn, "SCRAM-SHA-512")
    final = scram_login(conn, SCRAM_CLIENTS["kafka-python"]("bob", "bob-secret", "SCRAM-SHA-512"))
    assert (final.error_code, final.error_message) == (
        ErrorCode.sasl_authentication_failed,
        "Cannot change principals during re-authentication from User.alice: User.bob")
    assert conn.state is State.FAILED
    # A failed re-authentication says so in the generic message.
    conn = _scram_conn(clock)
    clock.now += 1000
    handshake(conn, "SCRAM-SHA-512")
    final = scram_login(conn, SCRAM_CLIENTS["kafka-python"]("alice", "wrong", "SCRAM-SHA-512"))
    assert final.error_message == ("Authentication failed during re-authentication due to invalid credentials with "
                                   "SASL mechanism SCRAM-SHA-512")


def test_no_reauthentication_for_clients_of_sasl_authenticate_v0():
    clock = Clock()
    conn = _scram_conn(clock, version=0)
    clock.now += 1000
    assert conn.admit(SASL_HANDSHAKE).action is Action.REJECT


@pytest.mark.parametrize("kwargs,match", [
    (dict(mechanisms=()), "no SASL mechanism"),
    (dict(mechanisms=("GSSAPI",)), "unsupported"),
    (dict(mechanisms=("PLAIN", "PLAIN"), credentials=lookup), "twice"),
    (dict(mechanisms=("PLAIN",)), "credential lookup"),
    (dict(mechanisms=("OAUTHBEARER",)), "key lookup"),
])
def test_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SaslSettings(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Fuzzing: random calls in random order, random bytes, and real exchanges with one message mutated.

_API_KEYS = st.sampled_from([PRODUCE, METADATA, SASL_HANDSHAKE, API_VERSIONS, SASL_AUTHENTICATE, 36, 17, 9999])
_MECHANISM_NAMES = st.sampled_from(MECHANISMS) | st.text(max_size=12)
_OPS = st.lists(st.one_of(
    st.tuples(st.just("admit"), _API_KEYS),
    st.tuples(st.just("handshake"), st.integers(0, 2), _MECHANISM_NAMES),
    st.tuples(st.just("authenticate"), st.binary(max_size=200), st.integers(0, 2)),
    st.tuples(st.just("raw"), st.binary(max_size=200)),
    st.tuples(st.just("tick"), st.integers(0, 100_000)),
), max_size=25)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS)
def test_fuzz_random_calls_never_raise_and_never_authenticate(ops):
    clock = Clock()
    conn = make(clock=clock, max_reauth_ms=5000)
    for op, *args in ops:
        if op == "admit":
            assert isinstance(conn.admit(args[0]).action, Action)
        elif op == "handshake":
            conn.handshake(*args)
        elif op == "authenticate":
            run(conn.authenticate(*args))
        elif op == "raw":
            run(conn.raw_token(args[0]))
        else:
            clock.now += args[0]
        assert not conn.authenticated and conn.principal is None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MECHANISMS), st.integers(0, 1), st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_fuzz_garbage_after_a_valid_handshake(mechanism, version, messages):
    conn = make()
    handshake(conn, mechanism, version)
    for message in messages:
        if version:
            reply = run(conn.authenticate(message, 1))
            assert reply.error_code in (ErrorCode.none, ErrorCode.sasl_authentication_failed)
        else:
            reply = run(conn.raw_token(message))
        assert not conn.authenticated
        if reply.close:
            assert conn.state is State.FAILED
            break


_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 3)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
)


def _mutate(data: bytes, mutation) -> bytes:
    kind, position, *arg = mutation
    i = position % (len(data) + 1)
    if kind == "flip":
        i = position % len(data)
        return data[:i] + bytes([data[i] ^ arg[0]]) + data[i + 1:]
    if kind == "insert":
        return data[:i] + arg[0] + data[i:]
    if kind == "delete":
        return data[:i] + data[i + arg[0]:]
    return data[: i % len(data)]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(SCRAM_CLIENTS)), st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-512"]),
       st.integers(0, 1), _MUTATION)
def test_fuzz_mutated_scram_exchanges_never_authenticate(client_name, mechanism, step, mutation):
    """Every byte of a SCRAM client message counts: a real client's exchange with one message changed on the way
    never logs in (the client may also notice and give up)."""
    conn = make()
    handshake(conn, mechanism)
    client = SCRAM_CLIENTS[client_name]("alice", "alice-secret", mechanism)
    message = client.first()
    for i in range(2):
        if i == step:
            mutated = _mutate(message, mutation)
            if mutated == message:
                return
            message = mutated
        reply = run(conn.authenticate(message, 1))
        if reply.error_code is not ErrorCode.none:
            break
        if i == 0:
            try:
                message = client.final(reply.auth_bytes)
            except (ValueError, KeyError, UnicodeDecodeError):
                return  # the client refused the server-first built from its mutated message
    assert not conn.authenticated and conn.principal is None
