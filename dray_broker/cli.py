"""The `dray` command."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys

import uvloop
from importlib.metadata import entry_points

from dray_broker.config import ConfigError, Settings, add_flags
from dray_broker.logs import setup_logging
from dray_broker.server.listeners import SecurityProtocol
from dray_broker.version import VERSION

log = logging.getLogger("dray")

DEFAULT_UP_HTTP = "127.0.0.1:9600"
SERVICE_READY_TIMEOUT_S = 90.0


def _or_exit(read):
    """read(), or exit 2 saying which setting is wrong."""
    try:
        return read()
    except ConfigError as e:
        print(f"dray: {e}", file=sys.stderr)
        sys.exit(2)


def _settings_or_exit(args) -> Settings:
    return _or_exit(lambda: Settings.load(args))


def _listeners(settings) -> list[tuple[str, str, str]]:
    """(HOST:PORT, what listens there, the flag that moves it) of each port a broker listens on."""
    kafka = settings.listeners
    listeners = [(listener.address, "the Kafka listener" if len(kafka) == 1 else f"the {listener.name} Kafka listener",
                  "--listen " + ("" if listener.protocol is SecurityProtocol.PLAINTEXT else
                                 listener.name.lower() + "://") + "{host}:{port}")
                 for listener in kafka]
    if settings.http_listen:
        listeners.append((settings.http_listen, "metrics and health", "--http-listen {host}:{port}"))
    return listeners


def _check_free_or_exit(settings, more_listeners=()) -> None:
    """Refuse at once, in one line, a data directory or a port that another process holds (before anything
    starts: `dray up` would otherwise start a second Dagster daemon next to the first)."""
    from dray_broker.server.in_use import InUse, check_free

    try:
        check_free(settings.data_dir, [*_listeners(settings), *more_listeners])
    except InUse as e:
        print(f"dray: {e}", file=sys.stderr)
        sys.exit(1)


async def _run_broker(settings, after_start=None, on_stop=None, on_force=None) -> None:
    """Run a broker until SIGTERM or SIGINT, then drain it; a second signal ends the process at once (nothing
    acknowledged is lost: acks follow durable writes). after_start: a coroutine function run once it serves
    (RuntimeError or InUse from it stop the broker: something it starts could not start). on_stop: called when
    the first signal comes (to stop other services while the broker drains); on_force: at the second."""
    from dray_broker.cluster_identity import ClusterMismatchError
    from dray_broker.routing.registry import BrokerIdInUse
    from dray_broker.server.broker import Broker
    from dray_broker.server.broker_dir import BrokerIdMismatch, DataDirInUse
    from dray_broker.server.in_use import InUse, check_free
    from dray_broker.server.tls import TlsError

    broker = Broker(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, broker.reload_tls)
    try:
        await broker.start()
    except (BrokerIdInUse, BrokerIdMismatch, ClusterMismatchError, DataDirInUse, TlsError, OSError) as e:
        problem: Exception = e
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:  # taken since the check: say by whom
            try:
                check_free(None, _listeners(settings))
            except InUse as found:
                problem = found
        log.error("cannot start: %s", problem)
        raise SystemExit(1) from None
    stopping = asyncio.ensure_future(stop.wait())
    starting = asyncio.ensure_future(after_start()) if after_start is not None else None
    if starting is not None:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        problem = starting.exception() if starting.done() else None
        if isinstance(problem, (RuntimeError, InUse)):
            log.error("cannot start: %s", problem)
            await broker.stop()
            raise SystemExit(1) from None
        if problem is not None:
            raise problem
    await stopping
    log.info("signal received: stopping (a second Ctrl-C stops at once)")

    def force() -> None:
        log.warning("second signal: stopping at once")
        if on_force is not None:
            on_force()
        os._exit(130)  # as an interrupted command

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, force)
    if on_stop is not None:
        on_stop()
    if starting is not None and not starting.done():  # a signal while starting: on_stop makes it end
        await asyncio.gather(starting, return_exceptions=True)
    await broker.stop()


def _run(coro) -> None:
    """Run on uvloop: its transports write large fetch responses without asyncio 3.11's buffer copies
    (measured: 2.5x less broker CPU per consumed MB, produce unchanged)."""
    uvloop.run(coro)


def cmd_broker(args) -> int:
    settings = _settings_or_exit(args)
    setup_logging(settings.log_level, settings.log_json)
    _check_free_or_exit(settings)
    _run(_run_broker(settings))
    return 0


def cmd_up(args) -> int:
    """Everything a laptop needs, with embedded defaults: the broker on 127.0.0.1:9092, then the services other
    installed packages add (dray_pipelines adds the Dagster webserver and daemon)."""
    settings = _settings_or_exit(args)
    if settings.http_listen is None:
        settings.http_listen = DEFAULT_UP_HTTP
    setup_logging(settings.log_level, settings.log_json)
    # The ports of the services other packages add, which they set as a default of this parser (dray_pipelines:
    # the Dagster UI's), are checked with the broker's.
    _check_free_or_exit(settings, _or_exit(lambda: [listener for listeners in getattr(args, "service_listeners", [])
                                                    for listener in listeners(args)]))
    services = []

    async def start_services() -> None:
        kafka = settings.listeners
        urls = [("Kafka bootstrap" if len(kafka) == 1 else f"Kafka {listener.name.lower()}",
                 f"{listener.advertised_host}:{listener.advertised_port or listener.port}") for listener in kafka]
        urls.append(("metrics, health", f"http://{settings.http_listen}/metrics /healthz /readyz"))
        for entry_point in entry_points(group="dray.services"):
            services.append(await asyncio.to_thread(entry_point.load(), settings, vars(args)))
        for service in services:
            if not await asyncio.to_thread(service.wait_ready, SERVICE_READY_TIMEOUT_S):
                log.warning("%s", service.problem or f"not ready after {SERVICE_READY_TIMEOUT_S:.0f} s: {service.urls}")
            urls += service.urls
        lines = "\n".join(f"  {name:<17} {url}" for name, url in urls)
        print(f"Dray {VERSION} is up (Ctrl-C stops everything):\n{lines}\n  {'data':<17} {settings.data_dir.resolve()}",
              flush=True)

    def stop_services() -> None:
        for service in services:
            service.terminate()

    def kill_services() -> None:
        for service in services:
            service.kill()

    try:
        _run(_run_broker(settings, after_start=start_services, on_stop=stop_services, on_force=kill_services))
    finally:
        for service in services:
            service.stop()
    if services:
        log.info("everything stopped")
    return 0


class SubcommandParser(argparse.ArgumentParser):
    """The parser of a subcommand reports arguments it does not know itself, with its own usage (argparse leaves
    them to the top-level parser, whose usage does not help)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


SETTINGS_HELP = ("Every setting is a flag, a DRAY_* environment variable or a key of the --config YAML file; flags win "
                 "over the environment, which wins over the file.")


def cmd_version(args) -> int:
    print(f"dray {VERSION}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dray", description="Kafka-compatible streaming on object storage")
    parser.add_argument("--version", "-V", action="version", version=f"dray {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=SubcommandParser)

    p = sub.add_parser("broker", help="run a broker", usage="%(prog)s [options]",
                       description=f"Run a broker until SIGTERM or Ctrl-C, then drain it. {SETTINGS_HELP}")
    add_flags(p)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("up", help="start the whole system on this machine (broker with embedded defaults)",
                       usage="%(prog)s [options]",
                       description="Start a broker with embedded defaults (a local directory as object store, SQLite "
                                   "metadata and Iceberg catalog under --data-dir) plus the services other installed "
                                   f"packages add (the Dagster webserver and daemon). {SETTINGS_HELP}")
    add_flags(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("version", help="print the version of Dray")
    p.set_defaults(func=cmd_version)

    # Commands from other installed packages (dray_pipelines adds compact and sql, and flags of `dray up`):
    # dray_broker never imports them.
    for entry_point in entry_points(group="dray.commands"):
        entry_point.load()(sub)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
