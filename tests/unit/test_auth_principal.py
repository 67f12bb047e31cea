"""Principals (dray_broker/auth/principal.py): `Type:name`, RFC 2253 subject names of certificates the test makes,
and Kafka's ssl.principal.mapping.rules."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dray_broker.auth.principal import (
    ANONYMOUS,
    CertificateError,
    KafkaPrincipal,
    NoMatchingRule,
    SslPrincipalMapper,
    certificate_subject,
    rfc2253_name,
    user,
)

KEY = ec.generate_private_key(ec.SECP256R1())


def certificate(subject: x509.Name) -> bytes:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(KEY.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(KEY, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def name(*attributes) -> x509.Name:
    """RDNs in ASN.1 order (least specific first, as in a certificate)."""
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(oid, value)]) if not isinstance(oid, list)
                      else x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in oid])
                      for oid, value in attributes])


def test_principal_strings():
    assert str(user("alice")) == "User:alice"
    assert KafkaPrincipal.parse("User:alice") == user("alice")
    assert KafkaPrincipal.parse("Group:a:b") == KafkaPrincipal("Group", "a:b")  # split at the first colon
    assert KafkaPrincipal.parse("User:") == KafkaPrincipal("User", "")
    assert str(ANONYMOUS) == "User:ANONYMOUS"
    for bad in ["", "alice", "User"]:
        with pytest.raises(ValueError):
            KafkaPrincipal.parse(bad)


# Expected values are what Java's X500Principal.getName() prints (RFC 2253): most specific RDN first, the nine
# RFC 2253 keywords, other attributes as OID=#hex(DER), special characters escaped.
SUBJECTS = [
    (name((NameOID.COUNTRY_NAME, "US"), (NameOID.ORGANIZATION_NAME, "Example"),
          (NameOID.ORGANIZATIONAL_UNIT_NAME, "eng"), (NameOID.COMMON_NAME, "alice")),
     "CN=alice,OU=eng,O=Example,C=US"),
    (name((NameOID.DOMAIN_COMPONENT, "com"), (NameOID.DOMAIN_COMPONENT, "example"), (NameOID.USER_ID, "u1"),
          (NameOID.STREET_ADDRESS, "Main St"), (NameOID.LOCALITY_NAME, "Town"),
          (NameOID.STATE_OR_PROVINCE_NAME, "ST")),
     "ST=ST,L=Town,STREET=Main St,UID=u1,DC=example,DC=com"),
    (name((NameOID.COMMON_NAME, "Smith, John + \"Jr\" <x>;\\")),
     'CN=Smith\\, John \\+ \\"Jr\\" \\<x\\>\\;\\\\'),
    (name((NameOID.COMMON_NAME, "#hash"), (NameOID.ORGANIZATION_NAME, " padded ")), "O=\\ padded\\ ,CN=\\#hash"),
    (name((NameOID.COMMON_NAME, "bob"), (NameOID.EMAIL_ADDRESS, "bob@example.com")),
     "1.2.840.113549.1.9.1=#160f626f62406578616d706c652e636f6d,CN=bob"),
    (name(([(NameOID.COMMON_NAME, "a"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "b")], None)), "CN=a+OU=b"),
    (name((NameOID.COMMON_NAME, "Jürgen")), "CN=Jürgen"),
]


@pytest.mark.parametrize("subject,expected", SUBJECTS, ids=[s[1] for s in SUBJECTS])
def test_rfc2253_names_of_certificates(subject, expected):
    assert certificate_subject(certificate(subject)) == expected
    assert rfc2253_name(subject.public_bytes()) == expected


def test_malformed_names_and_certificates():
    for der in [b"", b"\x30", b"\x30\x05\x31\x03\x30\x01", b"\x31\x00", b"\x30\x84\xff\xff\xff\xff"]:
        with pytest.raises(CertificateError):
            rfc2253_name(der)
    with pytest.raises(CertificateError):
        certificate_subject(b"not a certificate")


DN = "CN=kafka1,OU=ServiceUsers,O=Example,L=London,ST=England,C=GB"


@pytest.mark.parametrize("rules,dn,expected", [
    (None, DN, DN),
    ("DEFAULT", DN, DN),
    ("RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/", DN, "kafka1"),
    ("RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/U", DN, "KAFKA1"),
    ("RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$3/L", DN, "kafka1@example"),
    ("RULE:^CN=(.*?),OU=Admins.*$/admin/, RULE:^CN=(.*?),OU=ServiceUsers.*$/svc-$1/, DEFAULT", DN, "svc-kafka1"),
    ("RULE:^CN=(.*?),OU=Admins.*$/admin/,DEFAULT", DN, DN),
    ("RULE:^CN=([^,]*),.*$/$1\\/x/", DN, "kafka1/x"),  # an escaped slash in the replacement
    ("RULE:^CN=([^,]*),.*$/$2$1/", DN, "$2kafka1"),  # a reference beyond the groups stays literal
    ("RULE:^CN=([^,]*),.*$/$10/", DN, "kafka10"),  # $10 with one group is $1 then "0"
    ("RULE:^CN=(.*)$/\\$1/", "CN=x", "$1"),
    ("RULE:^(CN)=(.*)$/$2 ($1)/L", "CN=Alice", "alice (cn)"),
])
def test_mapping_rules(rules, dn, expected):
    assert SslPrincipalMapper(rules).name_for(dn) == expected


def test_no_matching_rule_and_bad_rules():
    with pytest.raises(NoMatchingRule):
        SslPrincipalMapper("RULE:^CN=(.*?),OU=Admins.*$/$1/").name_for(DN)
    for bad in ["RULE:^CN=(.*?)/$1", "RULE:(/x/", "garbage"]:
        with pytest.raises(ValueError):
            SslPrincipalMapper(bad)


def test_tls_principal():
    mapper = SslPrincipalMapper("RULE:^CN=([^,]*),.*$/$1/,DEFAULT")
    der = certificate(name((NameOID.ORGANIZATION_NAME, "Example"), (NameOID.COMMON_NAME, "alice")))
    assert mapper.principal(der) == user("alice")
    assert mapper.principal(None) == ANONYMOUS  # no client certificate
    assert SslPrincipalMapper().principal(der) == user("CN=alice,O=Example")
