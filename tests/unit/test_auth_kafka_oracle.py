"""dray_broker/auth against Kafka's own code (dray.AuthOracle in tests/java, kafka-clients and kafka-metadata 4.4.0):
random ACL sets and requests decided by our Authorizer and by Kafka's StandardAuthorizer, DescribeAcls/DeleteAcls
filters against Kafka's AclBindingFilter, certificate names against the JDK's X500Principal, mapping rules against
SslPrincipalMapper, and SCRAM credentials against Kafka's ScramFormatter."""

from __future__ import annotations

import datetime
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings, strategies as st

from dray_broker.auth.acls import (
    AclBinding,
    AclBindingFilter,
    Authorizer,
    Operation as Op,
    PatternType as P,
    Permission,
    ResourceType as R,
)
from dray_broker.auth.credentials import ScramMechanism
from dray_broker.auth.principal import KafkaPrincipal, NoMatchingRule, SslPrincipalMapper, certificate_subject
from dray_broker.auth.scram import new_credential
from tests.integration.java_client import JVM_FLAGS, _java, classpath, ensure_built


def _hex(text: str) -> str:
    return text.encode().hex()


class Oracle:
    def __init__(self):
        build = ensure_built()
        self.proc = subprocess.Popen([_java(), *JVM_FLAGS, "-cp", classpath(build), "dray.AuthOracle"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8")

    def ask(self, *commands: tuple) -> list[str]:
        """Send commands (tuples of fields), return one answer line per command."""
        self.proc.stdin.write("".join("\t".join(map(str, c)) + "\n" for c in commands))
        self.proc.stdin.flush()
        answers = [self.proc.stdout.readline().rstrip("\n") for _ in commands]
        assert not any(a.startswith("!unknown") for a in answers), answers
        return answers

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def oracle():
    o = Oracle()
    yield o
    o.close()


# ---------------------------------------------------------------------------------------------------------------
# ACL decisions: random ACL sets, every request of a small universe, both authorizers.

NAMES = st.text(alphabet="ab*", min_size=1, max_size=3)
PRINCIPALS = ["User:alice", "User:bob", "User:*", "Group:alice"]
HOSTS = ["*", "10.0.0.1", "10.0.0.2"]
CONCRETE_OPS = [op for op in Op if op not in (Op.UNKNOWN, Op.ANY)]
ACLS = st.builds(AclBinding, st.sampled_from([R.TOPIC, R.GROUP]), NAMES, st.sampled_from([P.LITERAL, P.PREFIXED]),
                 st.sampled_from(PRINCIPALS), st.sampled_from(HOSTS), st.sampled_from(CONCRETE_OPS),
                 st.sampled_from([Permission.ALLOW, Permission.DENY]))
# Not "*a": Kafka's StandardAuthorizer skips the wildcard `*` ACLs for a name that starts with '*' (other than "*"
# itself), so a `*` DENY does not deny group "*a" there. Dray applies `*` ACLs to every name (see acls.py).
REQUEST_NAMES = ["a", "ab", "aba", "abb", "b", "ba", "*", "a*", "bbb"]
REQUEST_OPS = [op for op in CONCRETE_OPS if op is not Op.ALL]


def _load(oracle, acls, super_users, allow_everyone) -> Authorizer:
    ours = Authorizer(super_users, allow_everyone)
    for b in acls:
        ours.add(b)
    commands = [("reset", _hex(";".join(super_users)), int(allow_everyone))]
    commands += [("acl", b.resource_type.value, _hex(b.name), b.pattern_type.value, _hex(b.principal), _hex(b.host),
                  b.operation.value, b.permission.value) for b in dict.fromkeys(acls)]
    commands.append(("load",))
    assert set(oracle.ask(*commands)) == {"ok"}
    return ours


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(ACLS, max_size=12), st.sampled_from([[], ["User:carol"]]), st.booleans(), st.randoms())
def test_authorize_agrees_with_kafkas_standard_authorizer(oracle, acls, super_users, allow_everyone, rnd):
    ours = _load(oracle, acls, super_users, allow_everyone)
    principals = [KafkaPrincipal.parse(p) for p in ("User:alice", "User:bob", "User:carol", "Group:alice")]
    requests = [(rnd.choice(principals), rnd.choice(HOSTS[1:]), rnd.choice(REQUEST_OPS), rnd.choice([R.TOPIC, R.GROUP]),
                 rnd.choice(REQUEST_NAMES)) for _ in range(60)]
    expected = oracle.ask(*[("authorize", _hex(str(p)), host, op.value, rt.value, _hex(name))
                            for p, host, op, rt, name in requests])
    for request, kafka in zip(requests, expected):
        assert ours.authorize(*request) == (kafka == "1"), (request, acls)
    by_type = [(p, host, op, rt) for p in principals for host in HOSTS[1:] for op in (Op.WRITE, Op.READ, Op.DESCRIBE)
               for rt in (R.TOPIC,)]
    expected = oracle.ask(*[("bytype", _hex(str(p)), host, op.value, rt.value) for p, host, op, rt in by_type])
    for request, kafka in zip(by_type, expected):
        assert ours.authorize_by_resource_type(*request) == (kafka == "1"), (request, acls)


FILTERS = st.builds(
    AclBindingFilter,
    st.sampled_from([R.ANY, R.TOPIC, R.GROUP]), st.none() | st.sampled_from(REQUEST_NAMES),
    st.sampled_from([P.ANY, P.MATCH, P.LITERAL, P.PREFIXED]), st.none() | st.sampled_from(PRINCIPALS),
    st.none() | st.sampled_from(HOSTS), st.sampled_from([Op.ANY, Op.READ, Op.ALL, Op.WRITE]),
    st.sampled_from([Permission.ANY, Permission.ALLOW, Permission.DENY]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(ACLS, min_size=1, max_size=12, unique=True), st.lists(FILTERS, min_size=1, max_size=10))
def test_filters_agree_with_kafkas_acl_binding_filter(oracle, acls, filters):
    ours = _load(oracle, acls, [], False)
    answers = oracle.ask(*[("filter", f.resource_type.value, "-" if f.name is None else _hex(f.name),
                            f.pattern_type.value, "-" if f.principal is None else _hex(f.principal),
                            "-" if f.host is None else _hex(f.host), f.operation.value, f.permission.value)
                           for f in filters])
    for f, answer in zip(filters, answers):
        kafka = {acls[int(i)] for i in answer.split(",") if i}
        assert set(ours.acls(f)) == kafka, f


# ---------------------------------------------------------------------------------------------------------------
# Principals of TLS clients

KEY = ec.generate_private_key(ec.SECP256R1())


def _certificate(subject: x509.Name) -> bytes:
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(KEY.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
            .sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def _rdn(*pairs):
    return x509.RelativeDistinguishedName([x509.NameAttribute(oid, value) for oid, value in pairs])


SUBJECTS = [
    x509.Name([_rdn((NameOID.COUNTRY_NAME, "US")), _rdn((NameOID.ORGANIZATION_NAME, "Example")),
               _rdn((NameOID.ORGANIZATIONAL_UNIT_NAME, "eng")), _rdn((NameOID.COMMON_NAME, "alice"))]),
    x509.Name([_rdn((NameOID.DOMAIN_COMPONENT, "com")), _rdn((NameOID.DOMAIN_COMPONENT, "example")),
               _rdn((NameOID.USER_ID, "u1")), _rdn((NameOID.STREET_ADDRESS, "Main St")),
               _rdn((NameOID.LOCALITY_NAME, "Town")), _rdn((NameOID.STATE_OR_PROVINCE_NAME, "Somewhere"))]),
    x509.Name([_rdn((NameOID.COMMON_NAME, 'Smith, John + "Jr" <x>;\\ = end'))]),
    x509.Name([_rdn((NameOID.COMMON_NAME, "#hash")), _rdn((NameOID.ORGANIZATION_NAME, " padded "))]),
    x509.Name([_rdn((NameOID.COMMON_NAME, "bob")), _rdn((NameOID.EMAIL_ADDRESS, "bob@example.com")),
               _rdn((NameOID.SERIAL_NUMBER, "1234")), _rdn((NameOID.TITLE, "Dr"))]),
    x509.Name([_rdn((NameOID.COMMON_NAME, "a"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "b"))]),
    x509.Name([_rdn((NameOID.COMMON_NAME, "  x=1#2\r "))]), x509.Name([_rdn((NameOID.COMMON_NAME, "a\nb\x00c\x7f"))]),
    x509.Name([_rdn((NameOID.COMMON_NAME, "   "))]),
    x509.Name([_rdn((NameOID.DN_QUALIFIER, "q")), _rdn((NameOID.GIVEN_NAME, "Al")), _rdn((NameOID.SURNAME, "Ice"))]),
    x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "ia5@x",
                                                                  _type=x509.name._ASN1Type.IA5String)])]),
    x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "univ",
                                                                  _type=x509.name._ASN1Type.UniversalString)])]),
    x509.Name([_rdn((NameOID.COMMON_NAME, "Jürgen Müller")), _rdn((NameOID.ORGANIZATION_NAME, "日本"))]),
]


@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda s: s.rfc4514_string())
def test_certificate_names_agree_with_x500principal(oracle, subject):
    der = _certificate(subject)
    [java] = oracle.ask(("dn", subject.public_bytes().hex()))
    assert certificate_subject(der) == bytes.fromhex(java).decode()


DN = "CN=kafka1,OU=ServiceUsers,O=Example,L=London,ST=England,C=GB"
RULES = [
    "DEFAULT",
    "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/",
    "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/U",
    "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$3/L",
    "RULE:^CN=(.*?),OU=Admins.*$/admin/, RULE:^CN=(.*?),OU=ServiceUsers.*$/svc-$1/, DEFAULT",
    "RULE:^CN=(.*?),OU=Admins.*$/admin/",
    "RULE:^CN=([^,]*),.*$/$1\\/x/",
    "RULE:^CN=([^,]*),.*$/$2$1/",
    "RULE:^CN=([^,]*),.*$/$10/",
    "RULE:^CN=([^,]*),(OU)=([^,]*),.*$/$3-$2/L , DEFAULT",
    "  RULE:^CN=(.*)$/x$1/  ",
]


@pytest.mark.parametrize("rules", RULES)
def test_mapping_rules_agree_with_ssl_principal_mapper(oracle, rules):
    [java] = oracle.ask(("map", _hex(rules), _hex(DN)))
    java = java if java.startswith("!") else bytes.fromhex(java).decode()
    try:
        ours = SslPrincipalMapper(rules).name_for(DN)
    except NoMatchingRule:
        ours = "!NoMatchingRule"
    assert ours == java


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(list(ScramMechanism)), st.text(min_size=1, max_size=20), st.binary(min_size=1, max_size=40),
       st.sampled_from([4096, 4097, 8192]))
def test_scram_credentials_agree_with_kafkas_scram_formatter(oracle, mechanism, password, salt, iterations):
    """What Kafka stores for a password (ScramFormatter: UTF-8 bytes, no SASLprep) is what we store."""
    [java] = oracle.ask(("scram", mechanism.mechanism_name, _hex(password), salt.hex(), iterations))
    credential = new_credential(mechanism, password, iterations, salt=salt)
    assert f"{credential.stored_key.hex()} {credential.server_key.hex()}" == java
