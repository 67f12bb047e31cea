"""Test certificates made with `cryptography`: a CA, server certificates for localhost/127.0.0.1 and client
certificates, written as PEM files (keys unencrypted, PKCS#8, as the Java client's PEM keystores read them)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


def _name(**attributes: str) -> x509.Name:
    oids = {"CN": NameOID.COMMON_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "O": NameOID.ORGANIZATION_NAME,
            "C": NameOID.COUNTRY_NAME}
    # Most general first in the certificate (C, O, OU, CN): RFC 2253 prints them the other way round.
    order = ["C", "O", "OU", "CN"]
    return x509.Name([x509.NameAttribute(oids[k], attributes[k]) for k in order if k in attributes])


@dataclass(frozen=True)
class KeyPair:
    cert: Path  # PEM certificate
    key: Path  # PEM private key (PKCS#8)
    bundle: Path  # key and certificate in one file (a Java PEM keystore)


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "Dray Test CA"):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = _name(CN=name, O="Dray Tests")
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name.replace(' ', '-').lower()}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, subject: x509.Name, *, server: bool, write_to: Path | None = None) -> KeyPair:
        """A certificate for subject signed by this CA: a server one (for localhost and 127.0.0.1) or a client one.
        write_to: the directory of its files (default the CA's), named <stem>.pem, <stem>.key, <stem>-bundle.pem."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self._name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        directory = write_to or self.directory
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        pair = KeyPair(directory / f"{stem}.pem", directory / f"{stem}.key", directory / f"{stem}-bundle.pem")
        # Each file replaced whole (a reader never sees half of one), as a certificate rotation should do.
        for path, data in ((pair.cert, cert_pem), (pair.key, key_pem), (pair.bundle, key_pem + cert_pem)):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return pair

    def server(self, stem: str = "broker", cn: str = "dray-broker", **kw) -> KeyPair:
        return self.issue(stem, _name(CN=cn, O="Dray Tests"), server=True, **kw)

    def client(self, stem: str, **subject: str) -> KeyPair:
        return self.issue(stem, _name(**subject), server=False)
