"""Before a broker (or `dray up`) starts: is its data directory, or a port it would listen on, taken already?

Said in one line instead of "[Errno 98] address already in use": who holds it (Dray, or another program, with its
pid and command when this user may see them), how to stop it, and what to change to run another one beside it."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from dray_broker.server.broker_dir import BrokerDir

NEXT_PORTS_TRIED = 20


class InUse(Exception):
    pass


@dataclass(frozen=True)
class Taken:
    what: str  # "127.0.0.1:9092 (the Kafka listener)", "the data directory /x/dray-data"
    change: str  # what to pass to run another one: "--listen 127.0.0.1:9093"
    pid: int | None  # None: unknown (another user's process)
    command: str | None
    is_dray: bool


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _can_bind(host: str, port: int) -> bool:
    """False only when the address is in use; any other problem is left to the server's own bind to report."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()  # with SO_REUSEADDR, as the servers bind
    except OSError as e:
        return e.errno != errno.EADDRINUSE
    return True


def _dray_command(argv: list[str]) -> str | None:
    """'dray up' when argv runs Dray (dray ARGS, or python -m dray_broker.cli ARGS), else None."""
    for i, arg in enumerate(argv[:3]):
        if arg.rsplit("/", 1)[-1] in ("dray", "dray_broker.cli"):
            return " ".join(["dray", *argv[i + 1:i + 2]])
    return None


def _process(pid: int | None) -> tuple[int | None, str | None, bool]:
    """(pid, command as shown to the user, whether it is Dray). A process that Dray started (the Dagster UI of
    `dray up`) is shown as that Dray process."""
    if pid is None:
        return None, None, False
    try:
        process = psutil.Process(pid)
        argv = process.cmdline()
        for candidate in [process, *process.parents()]:
            command = _dray_command(argv if candidate is process else candidate.cmdline())
            if command is not None:
                return candidate.pid, command, True
    except psutil.Error:
        return pid, None, False
    return pid, " ".join([argv[0].rsplit("/", 1)[-1], *argv[1:3]]) if argv else None, False


def _listener_pid(port: int) -> int | None:
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.Error:
        return None
    return next((c.pid for c in connections
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid), None)


def port_taken(address: str, what: str, change: str) -> Taken | None:
    """What holds address (HOST:PORT), or None when it is free. change: the option that moves it, with {host} and
    {port} for a free port ("--listen {host}:{port}")."""
    host, port = split_address(address)
    if port == 0 or _can_bind(host, port):
        return None
    free = next((p for p in range(port + 1, min(port + 1 + NEXT_PORTS_TRIED, 65536)) if _can_bind(host, p)), None)
    pid, command, is_dray = _process(_listener_pid(port))
    return Taken(f"{host}:{port} ({what})", change.format(host=host, port=free if free is not None else "PORT"),
                 pid, command, is_dray)


def data_dir_taken(path: Path) -> Taken | None:
    """The broker that holds the data directory, or None when it is free."""
    holder = BrokerDir(path).holder()
    if holder is None:
        return None
    pid, command, _ = _process(holder.get("pid"))
    return Taken(f"the data directory {Path(path).resolve()}", "--data-dir OTHER_DIR", pid, command, True)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def in_use_message(taken: list[Taken]) -> str:
    """One line: who uses what, how to stop it, and the flags that start another one beside it."""
    holders: dict[int | None, list[Taken]] = {}
    for t in taken:
        holders.setdefault(t.pid, []).append(t)
    said, stops = [], []
    for pid, items in holders.items():
        first = items[0]
        shown = f" (pid {pid}: {first.command})" if pid is not None and first.command else (
            f" (pid {pid})" if pid is not None else "")
        if any(t.is_dray for t in items):
            said.append(f"Dray is running already{shown}, using {_and([t.what for t in items])}")
        else:
            where = "" if pid is not None else " (`ss -ltnp` shows which)"
            said.append(f"another program{shown}{where} uses {_and([t.what for t in items])}")
        stops.append(f"kill {pid}" if pid is not None else None)
    known = [s for s in stops if s]
    stop = "stop it" + (f" (Ctrl-C where it runs, or {', '.join(known)})" if known else "")
    return f"{'; '.join(said)}: {stop}, or start this one with {' '.join(t.change for t in taken)}"


def check_free(data_dir: Path | None, listeners: list[tuple[str, str, str]]) -> None:
    """InUse when the data directory or any listener (address, what, change: see port_taken) is taken."""
    taken = [t for t in [data_dir_taken(data_dir) if data_dir is not None else None,
                         *(port_taken(address, what, change) for address, what, change in listeners)]
             if t is not None]
    if taken:
        raise InUse(in_use_message(taken))
