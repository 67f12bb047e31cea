"""TLS of the ssl and sasl_ssl listeners: the server's SSLContext from PEM files, reloaded in place, and the principal
of a client that presents a certificate (mTLS).

Reloading. The listeners keep one SSLContext; a reload loads the new certificate, key and CAs into it, which new
handshakes use, while open connections keep the session they have. The new files are first loaded into a scratch
context: a half-written file or a certificate that does not match its key is reported and the current ones stay (the
next change tries again). CA certificates added to --tls-ca are trusted after a reload; one removed from it stays
trusted until the broker restarts (OpenSSL's store only grows). The files are checked every --tls-check-ms and on
SIGHUP.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from pathlib import Path
from typing import Any

from dray_broker.auth.principal import ANONYMOUS, KafkaPrincipal, SslPrincipalMapper

log = logging.getLogger(__name__)

# A client that connects and does not finish its handshake in this time is dropped.
HANDSHAKE_TIMEOUT_S = 10.0


class TlsError(Exception):
    """The TLS files cannot be used (at start: the broker does not start)."""


class ServerTls:
    def __init__(self, cert: Path, key: Path, ca: Path | None = None, mapping_rules: str = "DEFAULT"):
        self.cert, self.key, self.ca = Path(cert), Path(key), Path(ca) if ca is not None else None
        self.mapper = SslPrincipalMapper(mapping_rules)
        self._seen = self._files()
        self.context = self._new_context()
        self._load(self.context)  # TlsError: the broker does not start
        log.info("TLS: %s", self.describe())

    @property
    def client_certificates(self) -> bool:
        """Clients must present a certificate signed by --tls-ca (mTLS)."""
        return self.ca is not None

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"cannot use the TLS certificate {self.cert} with the key {self.key}: {_reason(e)}") from None
        if self.ca is not None:
            try:
                context.load_verify_locations(cafile=self.ca)
            except (OSError, ssl.SSLError) as e:
                raise TlsError(f"cannot read the CA certificates {self.ca}: {_reason(e)}") from None

    def _files(self) -> tuple[tuple[int, int, int] | None, ...]:
        """What tells a file changed: inode, size and modification time of each (None: missing)."""
        out = []
        for path in (self.cert, self.key, self.ca):
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                st = None
            out.append((st.st_ino, st.st_size, st.st_mtime_ns) if st is not None else None)
        return tuple(out)

    def reload(self, why: str) -> bool:
        """Load the files again into the listeners' context (new handshakes use them); False, with a warning, when
        they cannot be used (the current ones stay)."""
        self._seen = self._files()
        try:
            self._load(self._new_context())  # all of it or nothing: the live context is never left half-loaded
            self._load(self.context)
        except TlsError as e:
            log.warning("TLS reload (%s) failed, still using the previous certificates: %s", why, e)
            return False
        log.info("TLS reloaded (%s): %s", why, self.describe())
        return True

    async def watch(self, interval_s: float) -> None:
        """Reload whenever a file changes (checked every interval_s)."""
        while True:
            await asyncio.sleep(interval_s)
            if self._files() != self._seen:
                self.reload("files changed")

    def describe(self) -> str:
        """The certificate served: its subject and expiry, and whether clients need certificates."""
        try:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
            said = f"certificate {cert.subject.rfc4514_string()} (expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            if cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
                said += ", EXPIRED"
            said += ")"
        except (OSError, ValueError) as e:
            said = f"certificate {self.cert} ({e})"
        return said + (f", client certificates signed by {self.ca} required" if self.ca is not None else "")

    def principal(self, transport: Any) -> KafkaPrincipal:
        """The principal of a TLS connection: its client certificate's subject (mapped by the rules), or ANONYMOUS
        without one. ValueError when the certificate cannot be read or no rule maps its subject."""
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return ANONYMOUS
        return self.mapper.principal(der)


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and "PEM lib" in str(e):  # OpenSSL says no more than that
        return "not a PEM certificate and its PEM private key (unencrypted)"
    if isinstance(e, ssl.SSLError) and e.reason:
        return f"{e.reason} ({e.library})" if e.library else e.reason
    return (e.strerror or str(e)) if isinstance(e, OSError) else str(e)

