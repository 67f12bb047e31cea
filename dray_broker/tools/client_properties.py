"""`--command-config FILE`: a Kafka client properties file, as Kafka's own tools take it (kafka-topics.sh
--command-config), turned into librdkafka properties for the operator commands.

The file is Java's .properties format (key=value or key: value, # and ! comments, a trailing backslash continues
a line). Java client names are translated where librdkafka names the same thing otherwise:

    sasl.jaas.config (PlainLoginModule / ScramLoginModule username= password=)  ->  sasl.username, sasl.password
    ssl.truststore.location (type PEM) -> ssl.ca.location;  ssl.truststore.certificates -> ssl.ca.pem
    ssl.keystore.location (type PEM: key and certificate in one file) -> ssl.key.location, ssl.certificate.location
    ssl.keystore.location (type PKCS12), ssl.keystore.password -> the same librdkafka properties
    ssl.keystore.key, ssl.keystore.certificate.chain -> ssl.key.pem, ssl.certificate.pem
    ssl.endpoint.identification.algorithm= (empty: no host name check) -> none

Every other key goes to librdkafka as it is (security.protocol, sasl.mechanism, ssl.ca.location... are the same in
both), so a file written with librdkafka's names works too; librdkafka refuses a key it does not know, by name.
"""

from __future__ import annotations

import re
from pathlib import Path

# Java's keys that only steer how the others are read, or that librdkafka has no use for.
_CONSUMED = {"ssl.truststore.type", "ssl.keystore.type", "ssl.truststore.location", "ssl.keystore.location",
             "ssl.truststore.certificates", "ssl.keystore.key", "ssl.keystore.certificate.chain",
             "sasl.jaas.config", "ssl.truststore.password"}
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')
_JAAS_MODULES = ("PlainLoginModule", "ScramLoginModule")


class PropertiesError(ValueError):
    """A file that cannot be read or a property librdkafka cannot be given."""


def read_properties(path: Path) -> dict[str, str]:
    """The key-value pairs of a Java .properties file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PropertiesError(f"cannot read {path}: {e.strerror or e}") from None
    out: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if _continues(line):
            logical += line[:-1]
            continue
        logical += line
        key, value = _split(logical)
        out[key] = value
        logical = ""
    if logical:
        key, value = _split(logical)
        out[key] = value
    return out


def _continues(line: str) -> bool:
    """An odd number of trailing backslashes continues the line."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _split(line: str) -> tuple[str, str]:
    i = 0
    while i < len(line) and line[i] not in "=: \t":
        i += 2 if line[i] == "\\" else 1
    key = line[:i]
    rest = line[i:].lstrip(" \t")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t")
    return _unescape(key), _unescape(rest)


def _unescape(text: str) -> str:
    escapes = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), text)


def librdkafka_properties(props: dict[str, str]) -> dict[str, str]:
    """The librdkafka properties that say what a Java client's properties say."""
    out = {k: v for k, v in props.items() if k not in _CONSUMED}
    if "sasl.jaas.config" in props:
        out.update(_jaas(props["sasl.jaas.config"]))
    trust_type = props.get("ssl.truststore.type", "JKS").upper()
    if "ssl.truststore.certificates" in props:
        out["ssl.ca.pem"] = props["ssl.truststore.certificates"]
    if "ssl.truststore.location" in props:
        if trust_type != "PEM":
            raise PropertiesError(f"ssl.truststore.type {trust_type}: only PEM trust stores can be used here "
                                  "(export the CA certificates as PEM: keytool -exportcert -rfc)")
        out["ssl.ca.location"] = props["ssl.truststore.location"]
    key_type = props.get("ssl.keystore.type", "JKS").upper()
    if "ssl.keystore.key" in props:
        out["ssl.key.pem"] = props["ssl.keystore.key"]
    if "ssl.keystore.certificate.chain" in props:
        out["ssl.certificate.pem"] = props["ssl.keystore.certificate.chain"]
    if "ssl.keystore.location" in props:
        location = props["ssl.keystore.location"]
        if key_type == "PEM":
            out["ssl.key.location"] = out["ssl.certificate.location"] = location
        elif key_type == "PKCS12":
            out["ssl.keystore.location"] = location
        else:
            raise PropertiesError(f"ssl.keystore.type {key_type}: use a PEM or PKCS12 key store")
    if out.get("ssl.endpoint.identification.algorithm", None) == "":
        out["ssl.endpoint.identification.algorithm"] = "none"
    return out


def _jaas(config: str) -> dict[str, str]:
    """username and password of a PLAIN or SCRAM login module's JAAS line."""
    if not any(module in config for module in _JAAS_MODULES):
        raise PropertiesError("sasl.jaas.config: only PlainLoginModule and ScramLoginModule (username, password) "
                              "can be used here; give librdkafka's sasl.* properties with -X for others")
    options = {k: _unescape(v) for k, v in _JAAS_OPTION.findall(config)}
    missing = [k for k in ("username", "password") if k not in options]
    if missing:
        raise PropertiesError(f"sasl.jaas.config has no {' and no '.join(missing)}")
    return {"sasl.username": options["username"], "sasl.password": options["password"]}
