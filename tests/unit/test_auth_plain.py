"""SASL PLAIN (dray_broker/auth/plain.py): the messages of kafka-python and aiokafka, checked against stored SCRAM
credentials."""

import pytest

from dray_broker.auth.credentials import ScramMechanism
from dray_broker.auth.errors import AuthenticationFailed
from dray_broker.auth.plain import INVALID_LOGIN, check_login, parse_response, password_matches
from dray_broker.auth.scram import fake_credential, new_credential
from tests.unit.auth_clients import aiokafka_plain, kafka_python_plain

FAKE = fake_credential(ScramMechanism.SCRAM_SHA_256, "nobody", b"secret")


@pytest.mark.parametrize("client", [kafka_python_plain, aiokafka_plain])
@pytest.mark.parametrize("mechanism", list(ScramMechanism), ids=lambda m: m.mechanism_name)
def test_clients_log_in_against_scram_credentials(client, mechanism):
    credential = new_credential(mechanism, "pässword", iterations=4096)
    response = parse_response(client("alice", "pässword"))
    assert (response.authzid, response.username) == ("alice", "alice")  # both clients send the user as authzid
    assert "pässword" not in repr(response)
    assert check_login(response, credential, FAKE) == "alice"


def test_wrong_password_and_unknown_user_answer_the_same():
    credential = new_credential(ScramMechanism.SCRAM_SHA_256, "right")
    with pytest.raises(AuthenticationFailed) as wrong:
        check_login(parse_response(kafka_python_plain("alice", "wrong")), credential, FAKE)
    with pytest.raises(AuthenticationFailed) as unknown:
        check_login(parse_response(kafka_python_plain("mallory", "right")), None, FAKE)
    assert wrong.value.client_message == unknown.value.client_message == INVALID_LOGIN
    # An unknown user fails even with the password the fake credential was made from.
    with pytest.raises(AuthenticationFailed):
        check_login(parse_response(b"\x00nobody\x00x"), None, new_credential(ScramMechanism.SCRAM_SHA_256, "x"))


def test_password_matches_is_exact():
    credential = new_credential(ScramMechanism.SCRAM_SHA_512, "abc")
    assert password_matches("abc", credential)
    assert not password_matches("abd", credential)
    assert not password_matches("abc ", credential)
    assert not password_matches("ABC", credential)


@pytest.mark.parametrize("message,client_message", [
    (b"alice\x00secret", "Invalid SASL/PLAIN response: expected 3 tokens, got 2"),
    (b"a\x00b\x00c\x00d", "Invalid SASL/PLAIN response: expected 3 tokens, got 4"),
    (b"\x00\x00secret", "Authentication failed: username not specified"),
    (b"\x00alice\x00", "Authentication failed: password not specified"),
    (b"", "Invalid SASL/PLAIN response: expected 3 tokens, got 1"),
    (b"\xff\x00alice\x00pw", None),
])
def test_malformed_responses(message, client_message):
    with pytest.raises(AuthenticationFailed) as e:
        parse_response(message)
    assert e.value.client_message == client_message


def test_authorization_id_must_be_the_user():
    credential = new_credential(ScramMechanism.SCRAM_SHA_256, "pw")
    assert check_login(parse_response(b"\x00alice\x00pw"), credential, FAKE) == "alice"
    with pytest.raises(AuthenticationFailed) as e:
        check_login(parse_response(b"bob\x00alice\x00pw"), credential, FAKE)
    assert e.value.client_message == ("Authentication failed: Client requested an authorization id that is "
                                      "different from username")
