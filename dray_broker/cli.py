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


def _settings_or_exit(args):
    try:
        return load_settings(args)
    except ConfigError as e:
        print(f"dray: {e}", file=sys.stderr)
        sys.exit(2)


async def _run_broker(settings) -> None:
    from dray_broker.routing.registry import BrokerIdInUse
    from dray_broker.server.broker import Broker

    broker = Broker(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await broker.start()
    except (BrokerIdInUse, OSError) as e:
        log.error("cannot start: %s", e)
        raise SystemExit(1) from None
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
    """Everything a laptop needs, with embedded defaults: the broker on 127.0.0.1:9092."""
    settings = _settings_or_exit(args)
    if settings.http_listen is None:
        settings.http_listen = DEFAULT_UP_HTTP
    setup_logging(settings.log_level, settings.log_json)
    host, port = settings.advertised
    print(f"Dray is starting (Ctrl-C stops):\n  Kafka bootstrap   {host}:{port}\n"
          f"  metrics, health   http://{settings.http_listen}/metrics /healthz /readyz\n"
          f"  data              {settings.data_dir.resolve()}", flush=True)
    _run(_run_broker(settings))
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
