"""What every operator command shares: connection flags, Kafka clients (confluent-kafka), clear errors.

The commands talk to a broker over the Kafka protocol, as any admin client would. A broker that cannot be reached
is reported within the connect timeout (5 s at most) instead of librdkafka's long retries; librdkafka's own log
lines are kept off the terminal (set DRAY_CLIENT_DEBUG=1 to see them). The connection settings (--bootstrap,
DRAY_BOOTSTRAP...) are dray_broker.config.ClientSettings."""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from dray_broker.config import ClientSettings, ConfigError, flag_help
from dray_broker.tools.client_properties import PropertiesError, librdkafka_properties, read_properties
from dray_broker.tools.output import note

CLIENT_ID = "dray-cli"
CONNECT_TIMEOUT_S = 5.0

# Exit codes: 0 done, 1 the operation failed, 2 bad usage (argparse's too), 3 no broker reachable, 130 interrupted.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

_UNREACHABLE_CODES = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}


class ToolError(Exception):
    """A failure to report as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def _rdkafka_logger(debug: bool) -> logging.Logger:
    logger = logging.getLogger("dray.cli.rdkafka")
    if not logger.handlers:
        if debug:
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("rdkafka %(levelname)s %(message)s"))
        else:
            handler = logging.NullHandler()
        logger.addHandler(handler)
        logger.propagate = False
    return logger


# --- flags ------------------------------------------------------------------------------------------------------


def connection_flags(*, json_flag: bool = True) -> argparse.ArgumentParser:
    """A parent parser with the flags every command takes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    bootstrap = ClientSettings.model_fields["bootstrap"]
    g.add_argument("--bootstrap", "-b", metavar="HOST:PORT[,...]",
                   help=flag_help(bootstrap.description, "DRAY_BOOTSTRAP", bootstrap.default))
    g.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long to wait for each answer from the broker (default %(default)s); "
                        f"an unreachable broker is reported within {CONNECT_TIMEOUT_S:g} s")
    g.add_argument("-X", "--property", action="append", default=[], metavar="KEY=VALUE", dest="properties",
                   help="a librdkafka client property, e.g. -X security.protocol=ssl (repeatable; over "
                        "--command-config)")
    command_config = ClientSettings.model_fields["command_config"]
    g.add_argument("--command-config", metavar="FILE", type=Path,
                   help=flag_help(command_config.description, "DRAY_COMMAND_CONFIG", None) +
                   " (Java client names such as ssl.truststore.location or sasl.jaas.config are translated)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def key_value(text: str, what: str = "KEY=VALUE") -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ToolError(f"expected {what}, got {text!r}", EXIT_USAGE)
    return key, value


def parse_timestamp(text: str) -> int:
    """Milliseconds since the epoch, from a number of milliseconds or an ISO 8601 date-time (UTC if no zone)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ToolError(f"{text!r} is neither milliseconds since the epoch nor an ISO 8601 date-time "
                        "(e.g. 2026-01-31T12:00:00Z)", EXIT_USAGE) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


# --- clients ----------------------------------------------------------------------------------------------------


def client_config(args, **extra) -> dict:
    """librdkafka's configuration: this tool's defaults, then --command-config, then the command's own (extra),
    then -X."""
    conf = {
        "bootstrap.servers": args.bootstrap,
        "client.id": CLIENT_ID,
        "logger": _rdkafka_logger(args.client_debug),
        "socket.connection.setup.timeout.ms": int(min(args.timeout, CONNECT_TIMEOUT_S) * 1000),
        "socket.timeout.ms": int(max(args.timeout, 1) * 1000),
    }
    if getattr(args, "command_config", None) is not None:
        try:
            conf.update(librdkafka_properties(read_properties(args.command_config)))
        except PropertiesError as e:
            raise ToolError(f"--command-config {args.command_config}: {e}", EXIT_USAGE) from None
    conf.update(extra)
    for prop in args.properties:
        key, value = key_value(prop, "-X KEY=VALUE")
        conf[key] = value
    return conf


def check_reachable(args) -> None:
    """Fail fast, with a clear message, when no bootstrap server accepts a TCP connection."""
    timeout = min(args.timeout, CONNECT_TIMEOUT_S)
    deadline = time.monotonic() + timeout
    problems = []
    for server in args.bootstrap.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise ToolError(f"--bootstrap {server!r} is not HOST:PORT", EXIT_USAGE)
        host = host.strip("[]")
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, deadline - time.monotonic())):
                return
        except OSError as e:
            problems.append(f"{server.strip()}: {e.strerror or e}")
    raise ToolError(f"cannot reach a broker at {args.bootstrap} within {timeout:g} s ({'; '.join(problems)})",
                    EXIT_UNREACHABLE)


def admin_client(args) -> AdminClient:
    """An admin client to a broker that answered a Metadata request within the connect timeout."""
    check_reachable(args)
    admin = AdminClient(client_config(args))
    timeout = min(args.timeout, CONNECT_TIMEOUT_S)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as e:
        raise ToolError(f"cannot reach a Kafka broker at {args.bootstrap} within {timeout:g} s "
                        f"({e.args[0].str() if e.args else e})", EXIT_UNREACHABLE) from None
    return admin


def wait(future: concurrent.futures.Future, args, what: str):
    """The result of an admin future, with timeouts and Kafka errors turned into ToolError."""
    try:
        return future.result(timeout=args.timeout + 1)
    except concurrent.futures.TimeoutError:
        raise ToolError(f"{what}: the broker did not answer within {args.timeout:g} s", EXIT_UNREACHABLE) from None
    except KafkaException as e:
        raise kafka_error(e, what) from None


def kafka_error(e: KafkaException | KafkaError, what: str) -> ToolError:
    err = e.args[0] if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError) else e
    if not isinstance(err, KafkaError):
        return ToolError(f"{what}: {e}")
    code = err.code()
    if code in _UNREACHABLE_CODES or code == KafkaError._TIMED_OUT:
        return ToolError(f"{what}: cannot reach the broker ({err.str()})", EXIT_UNREACHABLE)
    return ToolError(f"{what}: {err.str()}")


def topic_metadata(admin: AdminClient, args) -> dict:
    """name -> TopicMetadata for every topic (a Metadata request for all topics never auto-creates one)."""
    try:
        md = admin.list_topics(timeout=args.timeout)
    except KafkaException as e:
        raise kafka_error(e, "listing topics") from None
    return md.topics


def require_topic(admin: AdminClient, args, topic: str):
    found = topic_metadata(admin, args).get(topic)
    if found is None or (found.error is not None and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        raise ToolError(f"topic {topic!r} does not exist (create it with: dray topics create {topic})")
    if found.error is not None:
        raise ToolError(f"topic {topic!r}: {found.error.str()}")
    return found


def command(func: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """Run a command: ToolError and Kafka errors become one line on stderr and an exit code."""

    @functools.wraps(func)
    def run(args) -> int:
        try:
            # (topics take a --config of their own)
            connection = ClientSettings.load({"bootstrap": args.bootstrap,
                                              "command_config": getattr(args, "command_config", None)})
        except ConfigError as e:
            note(f"dray: {e}")
            return EXIT_USAGE
        args.bootstrap, args.client_debug = connection.bootstrap, connection.client_debug
        args.command_config = connection.command_config
        try:
            return func(args) or 0
        except ToolError as e:
            note(f"dray: {e}")
            return e.code
        except KafkaException as e:
            err = kafka_error(e, args.command)
            note(f"dray: {err}")
            return err.code
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`dray consume ... | head`): not an error. Keep Python quiet at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0

    return run


# --- offsets ----------------------------------------------------------------------------------------------------


def list_offsets(admin: AdminClient, args, partitions: list[tuple[str, int]], spec) -> dict[tuple[str, int], int]:
    """(topic, partition) -> offset for one OffsetSpec (earliest, latest, for_timestamp) over many partitions.
    For a timestamp with no record at or after it, the offset is -1."""
    if not partitions:
        return {}
    futures = admin.list_offsets({TopicPartition(t, p): spec for t, p in partitions}, request_timeout=args.timeout)
    return {(tp.topic, tp.partition): wait(f, args, f"listing offsets of {tp.topic}[{tp.partition}]").offset
            for tp, f in futures.items()}


def log_offsets(admin: AdminClient, args, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (log start offset, log end offset)."""
    start = list_offsets(admin, args, partitions, OffsetSpec.earliest())
    end = list_offsets(admin, args, partitions, OffsetSpec.latest())
    return {tp: (start[tp], end[tp]) for tp in partitions}
