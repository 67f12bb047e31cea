"""The client side of the SASL mechanisms, taken from real Kafka clients installed in the venv (kafka-python 3.0.12
and aiokafka 0.14), driven with bytes against Dray's servers. Not our code: an independent implementation of the
client side of each exchange."""

from __future__ import annotations

from aiokafka.conn import SaslPlainAuthenticator as AiokafkaPlain
from aiokafka.conn import ScramAuthenticator as AiokafkaScram
from kafka.net.sasl.oauth import AbstractTokenProvider, SaslMechanismOAuth
from kafka.net.sasl.plain import SaslMechanismPlain
from kafka.net.sasl.scram import SaslMechanismScram


class KafkaPythonScram:
    """kafka-python's SCRAM client: first() -> client-first, final(server_first) -> client-final, verify(server_final)
    raises unless the server's signature is right."""

    def __init__(self, user: str, password: str, mechanism: str):
        self._m = SaslMechanismScram(sasl_plain_username=user, sasl_plain_password=password, sasl_mechanism=mechanism)

    def first(self) -> bytes:
        return self._m.auth_bytes()

    def final(self, server_first: bytes) -> bytes:
        self._m.receive(server_first)
        return self._m.auth_bytes()

    def verify(self, server_final: bytes) -> None:
        self._m.receive(server_final)
        assert self._m.is_authenticated()


class AiokafkaScramClient:
    """aiokafka's SCRAM client (a generator driven through its synchronous _step)."""

    def __init__(self, user: str, password: str, mechanism: str):
        self._a = AiokafkaScram(loop=None, sasl_plain_password=password, sasl_plain_username=user,
                                sasl_mechanism=mechanism)

    def first(self) -> bytes:
        return self._a._step(None)[0]

    def final(self, server_first: bytes) -> bytes:
        return self._a._step(server_first)[0]

    def verify(self, server_final: bytes) -> None:
        assert self._a._step(server_final) is None  # the generator ends after checking the signature


SCRAM_CLIENTS = {"kafka-python": KafkaPythonScram, "aiokafka": AiokafkaScramClient}


def kafka_python_plain(user: str, password: str) -> bytes:
    return SaslMechanismPlain(sasl_plain_username=user, sasl_plain_password=password).auth_bytes()


def aiokafka_plain(user: str, password: str) -> bytes:
    return AiokafkaPlain(loop=None, sasl_plain_password=password, sasl_plain_username=user)._step(None)[0]


class _Tokens(AbstractTokenProvider):
    def __init__(self, token: str, extensions: dict[str, str]):
        super().__init__()
        self._token, self._extensions = token, extensions

    def token(self) -> str:
        return self._token

    def extensions(self) -> dict[str, str]:
        return self._extensions


class KafkaPythonOAuth:
    """kafka-python's OAUTHBEARER client: initial() the client response, then receive(server bytes); after an error
    challenge it answers \\x01 as RFC 7628 says."""

    def __init__(self, token: str, extensions: dict[str, str] | None = None):
        self._m = SaslMechanismOAuth(sasl_oauth_token_provider=_Tokens(token, extensions or {}))

    def initial(self) -> bytes:
        return self._m.auth_bytes()

    def receive(self, data: bytes) -> bytes | None:
        self._m.receive(data)
        return None if self._m.is_done() else self._m.auth_bytes()

    @property
    def authenticated(self) -> bool:
        return self._m.is_authenticated()
