"""SCRAM-SHA-256/512 server (dray_broker/auth/scram.py) against the SCRAM clients of kafka-python and aiokafka, the
RFC 7677 test vector, and malformed or tampered messages; the credential record's storage encoding."""

import base64
import hashlib
import hmac

import pytest

from dray_broker.auth.credentials import CredentialFormatError, ScramCredential, ScramMechanism
from dray_broker.auth.scram import (
    ScramError,
    ScramServer,
    ServerError,
    UnacceptableCredential,
    credential_from_salted_password,
    credential_from_upsertion,
    new_credential,
    salted_password,
)
from tests.unit.auth_clients import SCRAM_CLIENTS

MECHANISMS = list(ScramMechanism)
SECRET = b"fake-credential-secret"


def exchange(client, server: ScramServer, credentials: dict) -> bytes:
    """One full exchange; returns the server-final message (the client checked it)."""
    username = server.receive_client_first(client.first())
    server_final = server.receive_client_final(client.final(server.server_first(credentials.get(username))))
    client.verify(server_final)
    return server_final


@pytest.mark.parametrize("client_name", SCRAM_CLIENTS)
@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: m.mechanism_name)
def test_real_clients_log_in(client_name, mechanism):
    password = "pässwörd with spaces"  # UTF-8 bytes, no SASLprep, on both sides
    credentials = {"alice": new_credential(mechanism, password, iterations=8192)}
    server = ScramServer(mechanism, SECRET)
    client = SCRAM_CLIENTS[client_name]("alice", password, mechanism.mechanism_name)
    server_final = exchange(client, server, credentials)
    assert server_final.startswith(b"v=")
    assert server.complete and server.username == "alice"


@pytest.mark.parametrize("client_name", SCRAM_CLIENTS)
@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: m.mechanism_name)
def test_wrong_password_is_an_invalid_proof(client_name, mechanism):
    credentials = {"alice": new_credential(mechanism, "right")}
    server = ScramServer(mechanism, SECRET)
    client = SCRAM_CLIENTS[client_name]("alice", "wrong", mechanism.mechanism_name)
    with pytest.raises(ScramError) as e:
        exchange(client, server, credentials)
    assert e.value.server_error is ServerError.INVALID_PROOF
    assert e.value.server_final == b"e=invalid-proof"
    assert e.value.client_message is None  # the generic message: nothing tells a wrong password from a wrong user
    assert not server.complete


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: m.mechanism_name)
def test_unknown_user_looks_like_a_wrong_password(mechanism):
    def server_first_of(user):
        server = ScramServer(mechanism, SECRET)
        client = SCRAM_CLIENTS["aiokafka"](user, "whatever", mechanism.mechanism_name)
        server.receive_client_first(client.first())
        server_first = server.server_first(None)
        with pytest.raises(ScramError) as e:
            server.receive_client_final(client.final(server_first))
        assert e.value.server_error is ServerError.INVALID_PROOF and e.value.client_message is None
        return dict(kv.split("=", 1) for kv in server_first.decode().split(","))

    first, again, other = server_first_of("mallory"), server_first_of("mallory"), server_first_of("trudy")
    # A fake credential behaves like a real one: same salt on every attempt, the default iteration count, a salt
    # of the same size as a real one, and different users get different salts.
    assert first["s"] == again["s"] and first["s"] != other["s"]
    assert first["i"] == "4096"
    assert len(base64.b64decode(first["s"])) == len(new_credential(mechanism, "x").salt)
    assert first["r"] != again["r"]  # server nonces are fresh


def test_rfc7677_test_vector():
    """RFC 7677 section 3: SCRAM-SHA-256 with user "user", password "pencil"."""
    mechanism = ScramMechanism.SCRAM_SHA_256
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    credential = credential_from_salted_password(mechanism, salt, salted_password(mechanism, "pencil", salt, 4096),
                                                 4096)
    server = ScramServer(mechanism, SECRET, server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert server.receive_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == "user"
    assert server.server_first(credential) == (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                               b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    server_final = server.receive_client_final(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert server_final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _tamper(message: bytes, field: str, value: str) -> bytes:
    parts = [p if not p.startswith(field + "=") else f"{field}={value}" for p in message.decode().split(",")]
    return ",".join(parts).encode()


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: m.mechanism_name)
@pytest.mark.parametrize("field,make,expected", [
    # a proof with one bit flipped
    ("p", lambda p, n: base64.b64encode(bytes([base64.b64decode(p)[0] ^ 1]) + base64.b64decode(p)[1:]).decode(),
     ServerError.INVALID_PROOF),
    # a proof of the wrong length
    ("p", lambda p, n: base64.b64encode(base64.b64decode(p)[:-1]).decode(), ServerError.INVALID_PROOF),
    # the nonce without the server's part, or with another server part
    ("r", lambda p, n: n[:32], ServerError.OTHER_ERROR),
    ("r", lambda p, n: n[:-1] + ("A" if n[-1] != "A" else "B"), ServerError.OTHER_ERROR),
    # channel binding "y,," instead of the client's "n,,"
    ("c", lambda p, n: "eSws", ServerError.CHANNEL_BINDINGS_DONT_MATCH),
])
def test_tampered_client_final_fails(mechanism, field, make, expected):
    credentials = {"alice": new_credential(mechanism, "secret")}
    server = ScramServer(mechanism, SECRET)
    client = SCRAM_CLIENTS["kafka-python"]("alice", "secret", mechanism.mechanism_name)
    server.receive_client_first(client.first())
    final = client.final(server.server_first(credentials["alice"]))
    fields = dict(kv.split("=", 1) for kv in final.decode().split(","))
    with pytest.raises(ScramError) as e:
        server.receive_client_final(_tamper(final, field, make(fields["p"], fields["r"])))
    assert e.value.server_error is expected
    with pytest.raises(ScramError):  # the exchange is over, even for the untampered message
        server.receive_client_final(final)


def test_tampered_client_first_breaks_the_proof():
    """The server signs what it received: a client-first changed on the way makes the client's proof invalid."""
    mechanism = ScramMechanism.SCRAM_SHA_256
    server = ScramServer(mechanism, SECRET)
    client = SCRAM_CLIENTS["aiokafka"]("alice", "secret", mechanism.mechanism_name)
    first = client.first()
    server.receive_client_first(first + b",ext=1")
    with pytest.raises(ScramError) as e:
        server.receive_client_final(client.final(server.server_first(new_credential(mechanism, "secret"))))
    assert e.value.server_error is ServerError.INVALID_PROOF


@pytest.mark.parametrize("message,expected,client_message", [
    (b"n,,n=alice,r=abc,tokenauth=true", ServerError.EXTENSIONS_NOT_SUPPORTED, None),
    (b"n,,n=alice,r=abc,tokenauth=TRUE", ServerError.EXTENSIONS_NOT_SUPPORTED, None),
    (b"n,a=bob,n=alice,r=abc", ServerError.OTHER_ERROR,
     "Authentication failed: Client requested an authorization id that is different from username"),
    (b"p=tls-unique,,n=alice,r=abc", ServerError.SERVER_DOES_SUPPORT_CHANNEL_BINDING, None),
    (b"n,,m=ext,n=alice,r=abc", ServerError.EXTENSIONS_NOT_SUPPORTED, None),
    (b"n,,n=al=ice,r=abc", ServerError.OTHER_ERROR, None),  # '=' must be escaped as =3D
    (b"n,,n=alice,r=a,bc", ServerError.OTHER_ERROR, None),
    (b"n,,n=,r=abc", ServerError.OTHER_ERROR, None),
    (b"n,,n=alice", ServerError.OTHER_ERROR, None),
    (b"n,,n=alice,r=abc\x00", ServerError.OTHER_ERROR, None),
    (b"n,,n=\xff\xfe,r=abc", ServerError.INVALID_ENCODING, None),
    (b"", ServerError.OTHER_ERROR, None),
])
def test_bad_client_first(message, expected, client_message):
    server = ScramServer(ScramMechanism.SCRAM_SHA_256, SECRET)
    with pytest.raises(ScramError) as e:
        server.receive_client_first(message)
    assert e.value.server_error is expected
    assert e.value.client_message == client_message


def test_extensions_and_escaped_names():
    mechanism = ScramMechanism.SCRAM_SHA_512
    server = ScramServer(mechanism, SECRET)
    # tokenauth=false and unknown extensions are ignored (Kafka ignores extensions it does not support);
    # =2C and =3D are ',' and '='; an authorization id equal to the user is fine.
    assert server.receive_client_first(b"n,a=a=2Cb=3Dc,n=a=2Cb=3Dc,r=xyz,tokenauth=false,foo=bar") == "a,b=c"
    credential = new_credential(mechanism, "pw")
    server_first = server.server_first(credential)
    nonce = server_first.decode().split(",")[0][2:]
    # Compute the proof by hand for this client-first (with extensions and an authzid).
    salted = salted_password(mechanism, "pw", credential.salt, credential.iterations)
    client_key = hmac.digest(salted, b"Client Key", mechanism.hash_name)
    cbind = base64.b64encode(b"n,a=a=2Cb=3Dc,").decode()
    without_proof = f"c={cbind},r={nonce}"
    auth_message = f"n=a=2Cb=3Dc,r=xyz,tokenauth=false,foo=bar,{server_first.decode()},{without_proof}".encode()
    signature = hmac.digest(hashlib.new(mechanism.hash_name, client_key).digest(), auth_message, mechanism.hash_name)
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    server_final = server.receive_client_final(f"{without_proof},p={proof}".encode())
    assert server_final == b"v=" + base64.b64encode(hmac.digest(credential.server_key, auth_message,
                                                                 mechanism.hash_name))
    assert server.complete and server.username == "a,b=c"


def test_aiokafka_escapes_user_names():
    mechanism = ScramMechanism.SCRAM_SHA_256
    server = ScramServer(mechanism, SECRET)
    exchange(SCRAM_CLIENTS["aiokafka"]("a,b=c", "pw", mechanism.mechanism_name), server,
             {"a,b=c": new_credential(mechanism, "pw")})
    assert server.username == "a,b=c"


def test_messages_out_of_order_fail():
    mechanism = ScramMechanism.SCRAM_SHA_256
    server = ScramServer(mechanism, SECRET)
    with pytest.raises(ScramError):
        server.receive_client_final(b"c=biws,r=abc,p=AAAA")
    server = ScramServer(mechanism, SECRET)
    server.receive_client_first(b"n,,n=alice,r=abc")
    with pytest.raises(ScramError):
        server.receive_client_first(b"n,,n=alice,r=abc")


def test_credentials_below_kafkas_minimum_iterations_are_refused_at_login():
    mechanism = ScramMechanism.SCRAM_SHA_256
    weak = credential_from_salted_password(mechanism, b"salt", salted_password(mechanism, "pw", b"salt", 4095), 4095)
    server = ScramServer(mechanism, SECRET)
    server.receive_client_first(b"n,,n=alice,r=abc")
    with pytest.raises(ScramError):
        server.server_first(weak)


def test_kip554_upsertion_maps_onto_the_stored_credential():
    """AlterUserScramCredentials sends (salt, salted_password, iterations); what the server stores from it checks
    the password exactly as a credential made from the password does."""
    mechanism = ScramMechanism.SCRAM_SHA_512
    salt = b"client-made salt"
    salted = salted_password(mechanism, "s3cret", salt, 4096)
    stored = credential_from_upsertion(mechanism, salt, salted, 4096)
    assert stored == new_credential(mechanism, "s3cret", 4096, salt=salt)
    server = ScramServer(mechanism, SECRET)
    exchange(SCRAM_CLIENTS["kafka-python"]("bob", "s3cret", mechanism.mechanism_name), server, {"bob": stored})
    with pytest.raises(UnacceptableCredential, match="Too few iterations"):
        credential_from_upsertion(mechanism, salt, salted, 4095)
    with pytest.raises(UnacceptableCredential, match="Too many iterations"):
        credential_from_upsertion(mechanism, salt, salted, 16385)
    with pytest.raises(UnacceptableCredential):
        credential_from_upsertion(mechanism, b"", salted, 4096)
    assert credential_from_upsertion(mechanism, salt, salted, 16384).iterations == 16384


def test_mechanism_codes_are_kafkas():
    assert ScramMechanism.from_type(1) is ScramMechanism.SCRAM_SHA_256
    assert ScramMechanism.from_type(2) is ScramMechanism.SCRAM_SHA_512
    assert ScramMechanism.from_type(0) is None
    assert ScramMechanism.from_name("SCRAM-SHA-512") is ScramMechanism.SCRAM_SHA_512
    assert [m.digest_size for m in ScramMechanism] == [32, 64]


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: m.mechanism_name)
def test_credential_storage_round_trip(mechanism):
    credential = new_credential(mechanism, "my pass!", iterations=5000)  # characters base64 never has
    encoded = credential.encode()
    assert ScramCredential.decode(encoded) == credential
    assert ScramCredential.decode(encoded.decode()) == credential
    assert encoded == credential.encode()  # stable
    assert b"stored_key" in encoded and b"my pass!" not in encoded
    assert "stored_key" not in repr(credential) and repr(credential).endswith("iterations=5000)")


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b"{}",
    b'{"mechanism":"SCRAM-SHA-1","salt":"AA==","stored_key":"AA==","server_key":"AA==","iterations":4096}',
    b'{"mechanism":"SCRAM-SHA-256","salt":"AA==","stored_key":"AA==","server_key":"AA==","iterations":4096}',
    b'{"mechanism":"SCRAM-SHA-256","salt":"!!","stored_key":"AA==","server_key":"AA==","iterations":4096}',
    b'{"mechanism":"SCRAM-SHA-256","salt":"AA==","stored_key":"AA==","server_key":"AA==","iterations":"4096"}',
    b'{"mechanism":"SCRAM-SHA-256","salt":"AA==","stored_key":"AA==","server_key":"AA==","iterations":true}',
    b'{"mechanism":"SCRAM-SHA-256","salt":"","stored_key":"AA==","server_key":"AA==","iterations":4096}',
    b'{"mechanism":7,"salt":"AA==","stored_key":"AA==","server_key":"AA==","iterations":4096}',
    b'{"mechanism":"SCRAM-SHA-256","salt":"AA==","stored_key":"AA==","server_key":"AA==","iterations":4096,"x":1}',
    b"\xff",
])
def test_bad_stored_credentials_are_refused(data):
    with pytest.raises(CredentialFormatError):
        ScramCredential.decode(data)


def test_librdkafka_2_0_doubled_client_nonce_is_accepted_as_kafka_does():
    """librdkafka 2.0.x (kcat 1.7.1 on Debian) answers r=<client nonce><client nonce><server nonce>; Kafka only checks
    that the nonce ends with the server-first one, and the proof covers the message as sent."""
    mechanism = ScramMechanism.SCRAM_SHA_256
    server = ScramServer(mechanism, SECRET)
    server.receive_client_first(b"n,,n=alice,r=cnonce")
    credential = new_credential(mechanism, "pw")
    server_first = server.server_first(credential)
    nonce = "cnonce" + server_first.decode().split(",")[0][2:]
    salted = salted_password(mechanism, "pw", credential.salt, credential.iterations)
    client_key = hmac.digest(salted, b"Client Key", mechanism.hash_name)
    without_proof = f"c=biws,r={nonce}"
    auth_message = f"n=alice,r=cnonce,{server_first.decode()},{without_proof}".encode()
    signature = hmac.digest(hashlib.new(mechanism.hash_name, client_key).digest(), auth_message, mechanism.hash_name)
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    assert server.receive_client_final(f"{without_proof},p={proof}".encode()).startswith(b"v=")
    assert server.complete
