"""The `dray` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop
from importlib.metadata import entry_points

from dray_broker.config import ConfigError, add_flags, load_settings
from dray_broker.logs import setup_logging

log = logging.getLogger("dray")

DEFAULT_UP_HTTP = "127.0.0.1:9600"
SERVICE_READY_TIMEOUT_S = 90.0


def _settings_or_exit(args):
    try:
        return load_settings(args)
    except ConfigError as e:
        print(f"dray: {e}", file=sys.stderr)
        sys.exit(2)


async def _run_broker(settings, after_start=None) -> None:
    """Run a broker until SIGTERM or SIGINT, then drain it. after_start: a coroutine function run once it serves."""
    from dray_broker.cluster_identity import ClusterMismatchError
    from dray_broker.routing.registry import BrokerIdInUse
    from dray_broker.server.broker import Broker

    broker = Broker(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await broker.start()
    except (BrokerIdInUse, ClusterMismatchError, OSError) as e:
        log.error("cannot start: %s", e)
        raise SystemExit(1) from None
    if after_start is not None:
        await after_start()
    await stop.wait()
    log.info("signal received: draining")
    await broker.stop()


def _run(coro) -> None:
    """Run on uvloop: its transports write large fetch responses without asyncio 3.11's buffer copies
    (measured: 2.5x less broker CPU per consumed MB, produce unchanged)."""
    uvloop.run(coro)


def cmd_broker(args) -> int:
    settings = _settings_or_exit(args)
    setup_logging(settings.log_level, settings.log_json)
    _run(_run_broker(settings))
    return 0


def cmd_up(args) -> int:
    """Everything a laptop needs, with embedded defaults: the broker on 127.0.0.1:9092, plus the services other
    installed packages add (dray_pipelines adds the Dagster webserver and daemon)."""
    settings = _settings_or_exit(args)
    if settings.http_listen is None:
        settings.http_listen = DEFAULT_UP_HTTP
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(settings.log_level, settings.log_json)
    host, port = settings.advertised
    services = [entry_point.load()(settings) for entry_point in entry_points(group="dray.services")]

    async def announce() -> None:
        urls = [("Kafka bootstrap", f"{host}:{port}"),
                ("metrics, health", f"http://{settings.http_listen}/metrics /healthz /readyz")]
        for service in services:
            if not await asyncio.to_thread(service.wait_ready, SERVICE_READY_TIMEOUT_S):
                log.warning("a service did not become ready in %.0f s: %s", SERVICE_READY_TIMEOUT_S, service.urls)
            urls += service.urls
        lines = "\n".join(f"  {name:<17} {url}" for name, url in urls)
        print(f"Dray is up (Ctrl-C stops everything):\n{lines}\n  {'data':<17} {settings.data_dir.resolve()}",
              flush=True)

    try:
        _run(_run_broker(settings, after_start=announce))
    finally:
        for service in services:
            service.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dray", description="Kafka-compatible streaming on object storage")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run a broker")
    add_flags(p)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("up", help="start the whole system on this machine (broker with embedded defaults)")
    add_flags(p)
    p.set_defaults(func=cmd_up)

    # Commands from other installed packages (dray_pipelines adds compact and sql): dray_broker never imports them.
    for entry_point in entry_points(group="dray.commands"):
        entry_point.load()(sub)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
