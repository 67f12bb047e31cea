"""Listeners as `--listen` and `--advertise` give them (server/listeners.py), and the endpoints each listener's
clients are told (routing/registry.py, routing/zones.py)."""

import pytest

from dray_broker.routing.registry import BrokerInfo
from dray_broker.routing.zones import brokers_for
from dray_broker.server.listeners import Endpoint, SecurityProtocol, make_listeners


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9092", (SecurityProtocol.PLAINTEXT, "127.0.0.1", 9092)),
    ("PLAINTEXT://h:1", (SecurityProtocol.PLAINTEXT, "h", 1)),
    ("ssl://0.0.0.0:9093", (SecurityProtocol.SSL, "0.0.0.0", 9093)),
    ("Sasl_Plaintext://h:9", (SecurityProtocol.SASL_PLAINTEXT, "h", 9)),
    ("SASL_SSL://[::1]:9094", (SecurityProtocol.SASL_SSL, "::1", 9094)),
    (":9092", (SecurityProtocol.PLAINTEXT, "", 9092)),
])
def test_an_endpoint_is_a_protocol_host_and_port(text, expected):
    e = Endpoint.parse(text)
    assert (e.protocol, e.host, e.port) == expected


@pytest.mark.parametrize("text, message", [
    ("h", r"is not \[PROTOCOL://\]HOST:PORT"), ("ssl://h:x", "is not"),
    ("h:70000", "is not"), ("tls://h:1", "unknown protocol 'tls'"),
])
def test_a_bad_endpoint_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        Endpoint.parse(text)


def test_each_listener_gets_the_advertised_endpoint_of_its_protocol():
    plain, secure = make_listeners("0.0.0.0:9092,sasl_ssl://10.0.0.5:9094", "SASL_SSL://kafka.example:443")
    assert (plain.name, plain.tls, plain.sasl, plain.advertised_host, plain.advertised_port) == (
        "PLAINTEXT", False, False, "127.0.0.1", 0)
    assert (secure.name, secure.tls, secure.sasl, secure.advertised_host, secure.advertised_port) == (
        "SASL_SSL", True, True, "kafka.example", 443)
    assert plain.bound(40001).advertised_port == 40001 and secure.bound(40002).advertised_port == 443
    (own_host,) = make_listeners("ssl://10.0.0.5:0")
    assert (own_host.advertised_host, own_host.bound(5555).advertised()) == (
        "10.0.0.5", Endpoint(SecurityProtocol.SSL, "10.0.0.5", 5555))


@pytest.mark.parametrize("listen, advertise, message", [
    ("", None, "no listener"),
    ("h:1,plaintext://h:2", None, "two PLAINTEXT listeners"),
    ("h:1", "ssl://x:1", "advertised SSL://x:1 has no SSL listener"),
    ("h:1,ssl://h:2", "ssl://x:1,ssl://y:1", "SSL is advertised twice"),
])
def test_listeners_that_cannot_be_told_apart_are_refused(listen, advertise, message):
    with pytest.raises(ValueError, match=message):
        make_listeners(listen, advertise)


def test_a_registration_keeps_every_listener_and_old_ones_still_read():
    info = BrokerInfo(1, "a", 9092, "z1", (("PLAINTEXT", "a", 9092), ("SSL", "a-tls", 9093)))
    assert BrokerInfo.decode(info.encode()) == info
    assert info.on("SSL") == BrokerInfo(1, "a-tls", 9093, "z1", info.listeners)
    assert info.on("PLAINTEXT") is info and info.on("SASL_SSL") is None
    old = BrokerInfo.decode(b'{"id": 2, "host": "b", "port": 19092, "zone": null}')  # before listeners
    assert old.listeners == (("PLAINTEXT", "b", 19092),) and old.on("PLAINTEXT") == old


def test_clients_see_the_brokers_of_their_listener_at_its_endpoints():
    a = BrokerInfo(1, "a", 9092, "z1", (("PLAINTEXT", "a", 9092), ("SSL", "a", 9093)))
    b = BrokerInfo(2, "b", 9092, "z2", (("PLAINTEXT", "b", 9092),))
    assert [(x.id, x.port) for x in brokers_for([a, b], None, "PLAINTEXT")] == [(1, 9092), (2, 9092)]
    assert [(x.id, x.port) for x in brokers_for([a, b], "zone_id=z2", "SSL")] == [(1, 9093)]
    assert brokers_for([a, b], None, "SASL_PLAINTEXT") == []
