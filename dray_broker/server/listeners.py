"""Kafka listeners: where a broker accepts connections, with which security protocol, and where clients are told to
connect for each (Kafka's `listeners` and `advertised.listeners`).

    --listen PROTOCOL://HOST:PORT      repeatable (or comma-separated in DRAY_LISTEN); PROTOCOL is plaintext, ssl,
                                       sasl_plaintext or sasl_ssl in any case; a bare HOST:PORT is plaintext
    --advertise PROTOCOL://HOST:PORT   the address clients of that listener are given (default: the listener's own
                                       host, 127.0.0.1 for a wildcard one, and its bound port)

A listener's name is its protocol's name (as Kafka's default listener names), so a broker has at most one listener
of each protocol. A client is answered (Metadata, FindCoordinator, DescribeCluster) with the endpoints of the
listener it connected on, each broker registering every listener's advertised endpoint (routing/registry.py).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

WILDCARD_HOSTS = ("", "0.0.0.0", "::")
DEFAULT_ADVERTISED_HOST = "127.0.0.1"


class SecurityProtocol(enum.Enum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def tls(self) -> bool:
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def sasl(self) -> bool:
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)


# The listener of a bare HOST:PORT, and the one registrations written before listeners existed have.
DEFAULT_LISTENER = SecurityProtocol.PLAINTEXT.value


@dataclass(frozen=True)
class Endpoint:
    """One `PROTOCOL://HOST:PORT` (a bare HOST:PORT is PLAINTEXT)."""

    protocol: SecurityProtocol
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Raise ValueError saying what is wrong."""
        text = text.strip()
        scheme, sep, address = text.partition("://")
        if sep:
            try:
                protocol = SecurityProtocol(scheme.upper())
            except ValueError:
                raise ValueError(f"{text!r}: unknown protocol {scheme!r} (use plaintext, ssl, sasl_plaintext or "
                                 "sasl_ssl)") from None
        else:
            protocol, address = SecurityProtocol.PLAINTEXT, text
        host, colon, port = address.rpartition(":")
        if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{text!r} is not [PROTOCOL://]HOST:PORT")
        if host.startswith("[") and host.endswith("]"):  # [::1]:9092
            host = host[1:-1]
        return cls(protocol, host, int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol.value}://{host}:{self.port}"


def parse_endpoints(text: str | None) -> list[Endpoint]:
    """Comma-separated endpoints (empty or None: none)."""
    return [Endpoint.parse(part) for part in (text or "").split(",") if part.strip()]


@dataclass(frozen=True)
class Listener:
    protocol: SecurityProtocol
    host: str  # the address it binds
    port: int  # 0 until bound: the system picks one
    advertised_host: str
    advertised_port: int  # 0: the bound port

    # Cached: read for every request (an enum's value is a slow descriptor).
    @functools.cached_property
    def tls(self) -> bool:
        return self.protocol.tls

    @functools.cached_property
    def sasl(self) -> bool:
        return self.protocol.sasl

    @functools.cached_property
    def name(self) -> str:
        """The listener name, as Kafka's default one: the protocol's name."""
        return self.protocol.value

    @property
    def address(self) -> str:
        """HOST:PORT it binds."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return str(Endpoint(self.protocol, self.host, self.port))

    def advertised(self) -> Endpoint:
        return Endpoint(self.protocol, self.advertised_host, self.advertised_port)

    def bound(self, port: int) -> Listener:
        """This listener once bound to port (a port 0 listener learns the port the system gave it)."""
        return Listener(self.protocol, self.host, port, self.advertised_host, self.advertised_port or port)


# What a connection made without a listener (in tests) is on.
PLAINTEXT_LISTENER = Listener(SecurityProtocol.PLAINTEXT, "127.0.0.1", 0, "127.0.0.1", 0)


def make_listeners(listen: str, advertise: str | None = None) -> list[Listener]:
    """The listeners of --listen and --advertise (comma-separated endpoints). Raise ValueError when a protocol has
    two listeners, or an advertised endpoint has no listener of its protocol."""
    listening = parse_endpoints(listen)
    if not listening:
        raise ValueError("no listener: give at least one [PROTOCOL://]HOST:PORT")
    by_protocol: dict[SecurityProtocol, Endpoint] = {}
    for e in listening:
        if e.protocol in by_protocol:
            raise ValueError(f"two {e.protocol.value} listeners ({by_protocol[e.protocol]} and {e}): a broker has "
                             "at most one listener of each protocol")
        by_protocol[e.protocol] = e
    advertised: dict[SecurityProtocol, Endpoint] = {}
    for e in parse_endpoints(advertise):
        if e.protocol not in by_protocol:
            raise ValueError(f"advertised {e} has no {e.protocol.value} listener (listeners: "
                             f"{', '.join(map(str, listening))})")
        if e.protocol in advertised:
            raise ValueError(f"{e.protocol.value} is advertised twice ({advertised[e.protocol]} and {e})")
        advertised[e.protocol] = e
    listeners = []
    for e in listening:
        a = advertised.get(e.protocol)
        host = a.host if a else (DEFAULT_ADVERTISED_HOST if e.host in WILDCARD_HOSTS else e.host)
        listeners.append(Listener(e.protocol, e.host, e.port, host, a.port if a else 0))
    return listeners
