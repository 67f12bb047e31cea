"""Who a connection is: Kafka's principal (type and name, written `User:alice`), and how Kafka's default principal
builder names a TLS client from its certificate (KIP-371, ssl.principal.mapping.rules).

- Plaintext and TLS without a client certificate: User:ANONYMOUS.
- SASL: User:<the authenticated name> (sasl.py).
- TLS with a client certificate (mTLS): User:<the subject's distinguished name as Java's X500Principal.getName()
  writes it (RFC 2253: most specific RDN first, e.g. `CN=alice,OU=eng,O=Example,C=US`)>, mapped by the rules:
  `DEFAULT` keeps the name, `RULE:pattern/replacement/[LU]` replaces a full match (Java regex and `$1` references;
  L or U changes the case), rules separated by commas and tried in order; a name no rule matches fails the connection.

RFC 2253 names, exactly as the JDK's AVA.toRFC2253String: the attribute types printed by keyword are CN, C, L, ST, O,
OU, STREET, DC and UID; any other (emailAddress, serialNumber, ...) and any value that is not a string type is printed
as its dotted OID (or keyword) and `#` plus the hex of its DER value; the characters ,=+<>#;"\\ are escaped
anywhere, NUL as \\00, and each leading and trailing space. tests/unit/test_auth_kafka_oracle.py compares with the
JDK's X500Principal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

USER_TYPE = "User"


@dataclass(frozen=True, slots=True)
class KafkaPrincipal:
    type: str
    name: str

    def __str__(self) -> str:
        return f"{self.type}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> KafkaPrincipal:
        """`Type:name` as Kafka's SecurityUtils.parseKafkaPrincipal reads it (split at the first colon)."""
        kind, sep, name = text.partition(":")
        if not sep or not text:
            raise ValueError(f"expected a string in format principalType:principalName but got {text!r}")
        return cls(kind, name)


def user(name: str) -> KafkaPrincipal:
    return KafkaPrincipal(USER_TYPE, name)


ANONYMOUS = user("ANONYMOUS")


# ---------------------------------------------------------------------------------------------------------------
# Certificate subjects, as RFC 2253 strings

_RFC2253_KEYWORDS = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
    "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID",
}
# The ASN.1 string types Java prints as text, and how it reads their bytes (AVA.isDerString / getCharset):
# UTF8String, PrintableString, T61String, IA5String, GeneralString, BMPString. Others are printed as #hex.
_STRING_CODECS = {12: "utf-8", 19: "latin-1", 20: "latin-1", 22: "latin-1", 27: "latin-1", 30: "utf-16-be"}
_ESCAPED = ',=+<>#;"\\'  # Java escapes these anywhere in a value (RFC 2253 asks for fewer; RFC 4514 allows it)


class CertificateError(ValueError):
    """A certificate or name that cannot be read."""


def certificate_subject(der_certificate: bytes) -> str:
    """The RFC 2253 subject name of a DER certificate (ssl.SSLObject.getpeercert(binary_form=True))."""
    from cryptography import x509  # only TLS listeners need it

    try:
        cert = x509.load_der_x509_certificate(der_certificate)
    except ValueError as e:
        raise CertificateError(f"not a DER certificate: {e}") from None
    return rfc2253_name(cert.subject.public_bytes())


def rfc2253_name(der_name: bytes) -> str:
    """An X.501 Name (DER) as Java's X500Principal.getName() (RFC 2253) writes it."""
    try:
        rdns = _read_name(der_name)
    except (IndexError, ValueError) as e:
        raise CertificateError(f"malformed distinguished name: {e}") from None
    return ",".join("+".join(_attribute(oid, value) for oid, value in rdn) for rdn in reversed(rdns))


def _attribute(oid: str, value_tlv: bytes) -> str:
    keyword = _RFC2253_KEYWORDS.get(oid)
    tag = value_tlv[0]
    if keyword is None or tag not in _STRING_CODECS:
        return f"{keyword or oid}=#{value_tlv.hex()}"
    _, start, end = _tlv(value_tlv, 0)
    return f"{keyword}={_escape(value_tlv[start:end].decode(_STRING_CODECS[tag]))}"


def _escape(value: str) -> str:
    """Java's AVA.toRFC2253String: a backslash before each special character, NUL as \\00, then a backslash before
    every leading and trailing space or CR."""
    text = "".join("\\" + c if c in _ESCAPED else "\\00" if c == "\x00" else c for c in value)
    lead, trail = len(text) - len(text.lstrip(" \r")), len(text.rstrip(" \r"))
    return "".join("\\" + c if i < lead or i >= trail else c for i, c in enumerate(text))


def _read_name(der: bytes) -> list[list[tuple[str, bytes]]]:
    """Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF SEQUENCE { type OID, value ANY })."""
    tag, pos, end = _tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("Name is not one SEQUENCE")
    rdns = []
    while pos < end:
        tag, set_pos, set_end = _tlv(der, pos)
        if tag != 0x31:
            raise ValueError("RDN is not a SET")
        rdn = []
        while set_pos < set_end:
            tag, ava_pos, ava_end = _tlv(der, set_pos)
            if tag != 0x30:
                raise ValueError("attribute is not a SEQUENCE")
            tag, oid_start, oid_end = _tlv(der, ava_pos)
            if tag != 0x06:
                raise ValueError("attribute type is not an OID")
            rdn.append((_oid(der[oid_start:oid_end]), der[oid_end:ava_end]))
            set_pos = ava_end
        rdns.append(rdn)
        pos = set_end
    return rdns


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at pos."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("DER element runs past the end")
    return tag, pos, pos + length


def _oid(content: bytes) -> str:
    if not content:
        raise ValueError("empty OID")
    arcs, value = [], 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


# ---------------------------------------------------------------------------------------------------------------
# ssl.principal.mapping.rules (Kafka's SslPrincipalMapper grammar)

_RULE = r"(DEFAULT)|RULE:((\\.|[^\\/])*)/((\\.|[^\\/])*)/([LU]?).*?|(.*?)"
_RULE_SPLITTER = re.compile(rf"\s*({_RULE})\s*(,\s*|$)")
_RULE_PARSER = re.compile(_RULE)


class NoMatchingRule(ValueError):
    """No mapping rule applies to a distinguished name: the connection is refused."""


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[str] | None  # None: DEFAULT
    replacement: str = ""
    case: str = ""  # "L", "U" or ""

    def apply(self, name: str) -> str | None:
        if self.pattern is None:
            return name
        m = self.pattern.fullmatch(name)
        if m is None:
            return None
        result = _substitute(self.replacement, m)
        return result.lower() if self.case == "L" else result.upper() if self.case == "U" else result


def _substitute(replacement: str, m: re.Match[str]) -> str:
    """Java's Matcher replacement: `\\x` is a literal x, `$n` the longest group number that exists; `$n` beyond the
    groups stays literal (Kafka's escapeLiteralBackReferences)."""
    groups = m.re.groups
    out, i = [], 0
    while i < len(replacement):
        c = replacement[i]
        following = replacement[i + 1] if i + 1 < len(replacement) else ""
        if c == "\\" and following:
            out.append(following)
            i += 2
        elif c == "$" and following.isdigit() and int(following) <= groups:
            ref, i = int(following), i + 2
            while i < len(replacement) and replacement[i].isdigit() and ref * 10 + int(replacement[i]) <= groups:
                ref, i = ref * 10 + int(replacement[i]), i + 1
            out.append(m.group(ref) or "")
        else:
            out.append(c)
            i += 1
    return "".join(out)


class SslPrincipalMapper:
    """Kafka's ssl.principal.mapping.rules: the first rule that applies names the principal."""

    def __init__(self, rules: str | None = "DEFAULT"):
        parsed = (_parse_rule(r) for r in _split_rules(rules or "DEFAULT"))
        self.rules = tuple(r for r in parsed if r is not None)

    def name_for(self, distinguished_name: str) -> str:
        for rule in self.rules:
            name = rule.apply(distinguished_name)
            if name is not None:
                return name
        raise NoMatchingRule(f"no ssl.principal.mapping.rules rule applies to {distinguished_name!r}")

    def principal(self, der_certificate: bytes | None) -> KafkaPrincipal:
        """The principal of a TLS client: from its certificate's subject, or ANONYMOUS without a certificate."""
        if der_certificate is None:
            return ANONYMOUS
        return user(self.name_for(certificate_subject(der_certificate)))


def _split_rules(rules: str) -> list[str]:
    return [m.group(1) for m in _RULE_SPLITTER.finditer(rules.strip())]


def _parse_rule(rule: str) -> _Rule | None:
    m = _RULE_PARSER.match(rule)
    if m is None or m.end() != len(rule):
        raise ValueError(f"Invalid rule: {rule!r}")
    if m.group(1) is not None:
        return _Rule(None)
    if m.group(2) is not None:
        try:
            pattern = re.compile(m.group(2))
        except re.error as e:
            raise ValueError(f"Invalid rule: {rule!r}: {e}") from None
        return _Rule(pattern, m.group(4), m.group(6))
    return None  # an empty rule is ignored, as Kafka does
