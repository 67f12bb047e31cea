"""OAUTHBEARER (dray_broker/auth/oauthbearer.py): tokens signed with RSA and EC keys this test makes (PyJWT), checked
against a JWKS file it writes; the client responses of kafka-python and aiokafka; the RFC 7628 error exchange."""

import asyncio
import hashlib
import hmac
import json

import jwt
import pytest
from aiokafka.conn import OAuthAuthenticator
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.utils import base64url_encode

from dray_broker.auth.errors import AuthenticationFailed
from dray_broker.auth.oauthbearer import (
    INVALID_TOKEN,
    InvalidKeySet,
    InvalidToken,
    JsonWebKeySet,
    OAuthBearerServer,
    OAuthBearerSettings,
    RefreshingKeySet,
    parse_client_response,
    token_key_id,
    validate_token,
)
from tests.unit.auth_clients import KafkaPythonOAuth

NOW_S = 1_800_000_000
NOW_MS = NOW_S * 1000


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa-other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec1": ec.generate_private_key(ec.SECP256R1()),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
    }


def _jwk(kid, private_key, **extra):
    public = private_key.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    return {**algorithm.to_jwk(public, as_dict=True), "kid": kid, "use": "sig", **extra}


@pytest.fixture(scope="module")
def jwks_file(keys, tmp_path_factory):
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    document = {"keys": [
        _jwk("rsa1", keys["rsa1"], alg="RS256"),
        _jwk("ec1", keys["ec1"]),
        _jwk("ec384", keys["ec384"]),
        {**_jwk("enc1", keys["rsa-other"]), "use": "enc"},  # an encryption key never verifies a token
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},  # symmetric keys are skipped
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},  # malformed keys are skipped
        "not a key",
    ]}
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
def jwks(jwks_file):
    return JsonWebKeySet.from_json(jwks_file.read_bytes())


def token(keys, kid="rsa1", alg="RS256", signer=None, headers=None, **claims):
    payload = {"sub": "alice", "iat": NOW_S - 60, "exp": NOW_S + 3600, "iss": "https://idp.example",
               "aud": "kafka", "scope": "produce consume"}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    header = {"kid": kid} if kid is not None else {}
    header.update(headers or {})
    return jwt.encode(payload, keys[signer or kid], algorithm=alg, headers=header)


SETTINGS = OAuthBearerSettings(expected_audiences=frozenset({"kafka"}), expected_issuer="https://idp.example")


def check(jwks, tok, settings=SETTINGS, now_ms=NOW_MS):
    return validate_token(tok, jwks.key_for(token_key_id(tok)), settings, now_ms)


def test_jwks_keeps_only_signing_keys(jwks):
    assert sorted(k.kid for k in jwks.keys) == ["ec1", "ec384", "rsa1"]
    assert jwks.key_for("rsa1").algorithms == {"RS256"}  # the JWK's alg narrows the RSA family
    assert jwks.key_for("ec1").algorithms == {"ES256"}
    assert jwks.key_for("ec384").algorithms == {"ES384"}
    assert jwks.key_for("enc1") is None and jwks.key_for("hmac") is None and jwks.key_for(None) is None


@pytest.mark.parametrize("kid,alg", [("rsa1", "RS256"), ("ec1", "ES256"), ("ec384", "ES384")])
def test_valid_tokens(keys, jwks, kid, alg):
    validated = check(jwks, token(keys, kid, alg))
    assert validated.principal_name == "alice"
    assert validated.scopes == {"produce", "consume"}
    assert validated.expires_at_ms == (NOW_S + 3600) * 1000
    assert validated.issued_at_ms == (NOW_S - 60) * 1000


def test_clock_skew(keys, jwks):
    assert check(jwks, token(keys, exp=NOW_S - 29))  # expired 29 s ago: within the 30 s skew
    with pytest.raises(InvalidToken, match="expired"):
        check(jwks, token(keys, exp=NOW_S - 30))
    with pytest.raises(InvalidToken, match="expired"):
        check(jwks, token(keys, exp=NOW_S - 5), OAuthBearerSettings(clock_skew_s=0))
    assert check(jwks, token(keys, nbf=NOW_S + 29))
    with pytest.raises(InvalidToken, match="nbf"):
        check(jwks, token(keys, nbf=NOW_S + 31))


@pytest.mark.parametrize("claims,match", [
    ({"aud": "other"}, "Audience"),
    ({"aud": None}, "aud"),
    ({"iss": "https://evil.example"}, "Issuer"),
    ({"iss": None}, "iss"),
    ({"exp": None}, "exp"),
    ({"iat": None}, "iat"),
    ({"exp": "tomorrow"}, "exp"),
    ({"sub": None}, "sub"),
    ({"sub": "  "}, "sub"),
    ({"sub": 42}, "sub"),
    ({"scope": 7}, "scope"),
    ({"scope": ["ok", ""]}, "scope"),
])
def test_invalid_claims(keys, jwks, claims, match):
    with pytest.raises(InvalidToken, match=match):
        check(jwks, token(keys, **claims))


def test_audience_list_and_unchecked_audience(keys, jwks):
    assert check(jwks, token(keys, aud=["other", "kafka"]))
    # Without expected audiences or issuer configured, neither claim is checked.
    assert check(jwks, token(keys, aud="anything", iss="anyone"), OAuthBearerSettings())


def test_claim_names_are_configurable(keys, jwks):
    settings = OAuthBearerSettings(sub_claim_name="client_id", scope_claim_name="scp")
    validated = check(jwks, token(keys, client_id="svc-42", scp=["a", "b"], sub="ignored"), settings)
    assert validated.principal_name == "svc-42" and validated.scopes == {"a", "b"}


def test_signatures_and_keys(keys, jwks):
    with pytest.raises(InvalidToken, match="Signature"):  # signed by another key under rsa1's kid
        check(jwks, token(keys, "rsa1", signer="rsa-other"))
    with pytest.raises(InvalidToken, match="no key"):  # a kid the JWKS does not have
        check(jwks, token(keys, "rsa-other"))
    with pytest.raises(InvalidToken, match="algorithm"):  # the JWK says RS256
        check(jwks, token(keys, "rsa1", alg="RS512"))
    with pytest.raises(InvalidToken, match="algorithm"):  # an ES256 key for an ES384 token
        check(jwks, token(keys, "ec1", alg="ES384", signer="ec384"))
    with pytest.raises(InvalidToken, match="algorithm"):
        check(jwks, token(keys, "ec1", alg="ES256"), OAuthBearerSettings(algorithms=("RS256",)))


def test_unsigned_and_hmac_tokens_are_refused(keys, jwks):
    unsigned = jwt.encode({"sub": "alice", "iat": NOW_S, "exp": NOW_S + 60}, None, algorithm="none",
                          headers={"kid": "rsa1"})
    with pytest.raises(InvalidToken, match="algorithm"):
        check(jwks, unsigned, OAuthBearerSettings())
    # The classic confusion: HS256 with the RSA public key (PEM) as the HMAC secret.
    pem = keys["rsa1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64url_encode(json.dumps({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}).encode())
    body = base64url_encode(json.dumps({"sub": "alice", "iat": NOW_S, "exp": NOW_S + 60}).encode())
    signature = base64url_encode(hmac.digest(pem, header + b"." + body, hashlib.sha256))
    forged = (header + b"." + body + b"." + signature).decode()
    with pytest.raises(InvalidToken, match="algorithm"):
        check(jwks, forged, OAuthBearerSettings())


def test_token_without_kid(keys, jwks):
    one = JsonWebKeySet.from_json({"keys": [_jwk("only", keys["ec1"])]})
    tok = token(keys, kid=None, alg="ES256", signer="ec1")
    assert token_key_id(tok) is None
    assert validate_token(tok, one.key_for(None), SETTINGS, NOW_MS).principal_name == "alice"
    assert jwks.key_for(None) is None  # several keys: a kid is needed


@pytest.mark.parametrize("document", [b"", b"[]", b'{"keys": []}', b'{"keys": {}}', b'{"keys": ["x"]}',
                                      b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'])
def test_unusable_jwks(document):
    with pytest.raises(InvalidKeySet):
        JsonWebKeySet.from_json(document)


def test_garbage_tokens():
    for garbage in ["", "abc", "a.b.c", "a.b", "....", "eyJhbGciOiJSUzI1NiJ9.e30"]:
        with pytest.raises(InvalidToken):
            token_key_id(garbage) if garbage else validate_token(garbage, None, SETTINGS, NOW_MS)


def test_client_responses_of_real_clients():
    response = parse_client_response(KafkaPythonOAuth("abc.def.ghi", {"traceId": "123", "logicalCluster": "lc-1"})
                                     .initial())
    assert (response.authzid, response.token, dict(response.extensions)) == (
        "", "abc.def.ghi", {"traceId": "123", "logicalCluster": "lc-1"})

    class Provider:
        async def token(self):
            return "xyz.uvw.rst"

    data, _ = asyncio.run(OAuthAuthenticator(sasl_oauth_token_provider=Provider()).step(None))
    assert parse_client_response(data).token == "xyz.uvw.rst"
    assert parse_client_response(b"n,a=alice,\x01auth=bearer tok==\x01\x01").authzid == "alice"


@pytest.mark.parametrize("data", [
    b"", b"n,,", b"n,,\x01\x01", b"n,,\x01auth=Bearer\x01\x01", b"n,,\x01auth=Basic abc\x01\x01",
    b"n,,\x01auth=Bearer a b\x01\x01", b"n,,\x01key=value\x01\x01", b"p=x,,\x01auth=Bearer a\x01\x01",
    b"n,,\x01auth=Bearer abc\x01", b"\xff", b"n,,\x01auth=Bearer abc\x01k=\x01\x01",
])
def test_malformed_client_responses(data):
    with pytest.raises(AuthenticationFailed):
        parse_client_response(data)


def test_error_exchange_with_kafka_python(keys, jwks):
    """RFC 7628 3.2.2: an invalid token gets the JSON error as a challenge, the client answers \\x01, and the login
    fails with that JSON as its message (as Kafka answers)."""
    client = KafkaPythonOAuth(token(keys, exp=NOW_S - 3600))
    server = OAuthBearerServer()
    response = server.receive_initial(client.initial())
    with pytest.raises(InvalidToken):
        check(jwks, response.token)
    challenge = server.reject()
    assert challenge == b'{"status":"invalid_token"}' == INVALID_TOKEN.encode()
    answer = client.receive(challenge)
    assert answer == b"\x01"
    with pytest.raises(AuthenticationFailed) as e:
        server.receive_after_error(answer)
    assert e.value.client_message == '{"status":"invalid_token"}'
    assert not server.complete


def test_accept_and_authorization_id(keys, jwks):
    server = OAuthBearerServer()
    client = KafkaPythonOAuth(token(keys), {"k": "v"})
    response = server.receive_initial(client.initial())
    assert server.accept(response, check(jwks, response.token)) == b""
    assert client.receive(b"") is None and client.authenticated
    assert server.complete and server.token.principal_name == "alice" and server.extensions == {"k": "v"}

    server = OAuthBearerServer()
    response = server.receive_initial(b"n,a=bob,\x01auth=Bearer " + token(keys).encode() + b"\x01\x01")
    with pytest.raises(AuthenticationFailed, match="authorization id"):
        server.accept(response, check(jwks, response.token))


def _drive(coro):
    """Run a coroutine that never suspends (the fetches here are synchronous file reads)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("suspended")


def test_refreshing_key_set_follows_key_rotation(keys, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk("old", keys["rsa1"])]}))
    fetches = []
    clock = [NOW_MS]

    def fetch():
        fetches.append(clock[0])
        return path.read_bytes()

    keyset = RefreshingKeySet(fetch, lambda: clock[0], refresh_ms=3_600_000, min_refetch_ms=10_000)
    assert _drive(keyset.key_for("old")).kid == "old" and len(fetches) == 1
    assert _drive(keyset.key_for("old")) and len(fetches) == 1  # cached
    # The provider rotates to a new key: a token with the new kid makes the set refetch at once...
    path.write_text(json.dumps({"keys": [_jwk("old", keys["rsa1"]), _jwk("new", keys["ec1"])]}))
    clock[0] += 10_000
    assert _drive(keyset.key_for("new")).kid == "new" and len(fetches) == 2
    # ...but unknown kids do not make it refetch more than every min_refetch_ms.
    assert _drive(keyset.key_for("bogus")) is None and len(fetches) == 2
    clock[0] += 10_000
    assert _drive(keyset.key_for("bogus")) is None and len(fetches) == 3
    # A failed fetch keeps the keys; the scheduled refresh happens after refresh_ms.
    path.unlink()
    clock[0] += 3_600_000
    assert _drive(keyset.key_for("new")).kid == "new" and len(fetches) == 4
    validated = validate_token(token(keys, "new", "ES256", signer="ec1"), _drive(keyset.key_for("new")), SETTINGS,
                               NOW_MS)
    assert validated.principal_name == "alice"


def test_refreshing_key_set_without_any_keys_fails():
    def fetch():
        raise OSError("no such file")

    keyset = RefreshingKeySet(fetch, lambda: NOW_MS)
    with pytest.raises(OSError):
        _drive(keyset.key_for("k"))
    keyset = RefreshingKeySet(lambda: b'{"keys": []}', lambda: NOW_MS)
    with pytest.raises(InvalidKeySet):
        _drive(keyset.key_for("k"))
