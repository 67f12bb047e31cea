"""`--command-config`: Kafka client properties files read as Java reads them, and Java client names turned into
librdkafka's (dray_broker/tools/client_properties.py)."""

import pytest

from dray_broker.tools.client_properties import PropertiesError, librdkafka_properties, read_properties


def test_a_properties_file_reads_as_java_reads_it(tmp_path):
    f = tmp_path / "client.properties"
    f.write_text("# comment\n! also a comment\n\nsecurity.protocol=SASL_SSL\nsasl.mechanism : SCRAM-SHA-512\n"
                 "  client.id   dray-ops\n"
                 "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n"
                 "    username=\"alice\" \\\n    password=\"p=w\\\\\\\"d\";\n"
                 "ssl.truststore.location=C:\\\\certs\\\\ca.pem\nweird\\=key=v\n")
    assert read_properties(f) == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "client.id": "dray-ops",
        "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required username="alice" '
                            'password="p=w\\"d";',
        "ssl.truststore.location": "C:\\certs\\ca.pem", "weird=key": "v"}


def test_java_client_names_become_librdkafka_names():
    assert librdkafka_properties({
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required username="alice" '
                            'password="p=w\\"d";',
        "ssl.truststore.type": "PEM", "ssl.truststore.location": "/ca.pem",
        "ssl.keystore.type": "PEM", "ssl.keystore.location": "/client.pem",
        "ssl.endpoint.identification.algorithm": "",
    }) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice",
           "sasl.password": 'p=w"d', "ssl.ca.location": "/ca.pem", "ssl.key.location": "/client.pem",
           "ssl.certificate.location": "/client.pem", "ssl.endpoint.identification.algorithm": "none"}
    # librdkafka's own names pass as they are; a PKCS12 key store is librdkafka's too.
    assert librdkafka_properties({"security.protocol": "ssl", "ssl.ca.location": "/ca.pem",
                                  "ssl.keystore.type": "PKCS12", "ssl.keystore.location": "/k.p12",
                                  "ssl.keystore.password": "x"}) == {
        "security.protocol": "ssl", "ssl.ca.location": "/ca.pem", "ssl.keystore.location": "/k.p12",
        "ssl.keystore.password": "x"}


@pytest.mark.parametrize("props, message", [
    ({"ssl.truststore.location": "/t.jks"}, "ssl.truststore.type JKS: only PEM trust stores"),
    ({"ssl.keystore.location": "/k.jks"}, "ssl.keystore.type JKS: use a PEM or PKCS12 key store"),
    ({"sasl.jaas.config": "com.example.Module required;"}, "only PlainLoginModule and ScramLoginModule"),
    ({"sasl.jaas.config": 'x.PlainLoginModule required username="a";'}, "sasl.jaas.config has no password"),
])
def test_what_librdkafka_cannot_take_is_refused_by_name(props, message):
    with pytest.raises(PropertiesError, match=message):
        librdkafka_properties(props)


def test_a_missing_file_is_said_so(tmp_path):
    with pytest.raises(PropertiesError, match="cannot read .*nope.properties"):
        read_properties(tmp_path / "nope.properties")
