"""The broker's own directory (--data-dir), as Kafka keeps its log directories:

- `.lock`: one broker at a time uses the directory (a second one is refused at once, saying which process holds
  it). An flock, so the kernel releases it when the process ends, however it ends.
- `meta.properties`: the broker id, kept across restarts (Kafka keeps node.id there), with the cluster it belongs
  to. Written atomically once the id is known. A --broker-id that differs from the stored one is an error, as in
  Kafka; a file from another cluster is replaced (its id means nothing in this cluster).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
META_FILE = "meta.properties"
META_VERSION = "1"


class DataDirInUse(Exception):
    pass


class BrokerIdMismatch(Exception):
    pass


@dataclass(frozen=True)
class StoredId:
    broker_id: int
    cluster_id: str


class BrokerDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta_file = self.path / META_FILE
        self._lock_fd: int | None = None

    # --- the lock -------------------------------------------------------------------------------------------------

    def lock(self, listen: str) -> None:
        """Hold the directory for this process; DataDirInUse if another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirInUse(self._in_use_message(holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "listen": listen}).encode(), 0)
        self._lock_fd = fd

    def holder(self) -> dict | None:
        """Who holds the directory ({"pid", "listen"}), or None when it is free (takes the lock and lets it go)."""
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR)
        except OSError:  # no lock file (never used), or not ours to open: the broker's own lock() will say
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        finally:
            os.close(fd)  # closing releases the lock
        return None

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _in_use_message(self, holder: dict) -> str:
        pid, listen = holder.get("pid"), holder.get("listen")
        who = f"a Dray broker (pid {pid}" + (f", listening on {listen})" if listen else ")") if pid else "another broker"
        stop = f"stop it (Ctrl-C where it runs, or kill {pid})" if pid else "stop it"
        return (f"the data directory {self.path.resolve()} is in use by {who}: {stop}, or give this one another "
                "--data-dir (and --listen)")

    # --- the broker id --------------------------------------------------------------------------------------------

    def stored_id(self) -> StoredId | None:
        try:
            text = self.meta_file.read_text()
        except FileNotFoundError:
            return None
        props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
        try:
            return StoredId(int(props["broker.id"]), props.get("cluster.id", ""))
        except (KeyError, ValueError):
            log.warning("ignoring %s: it holds no valid broker.id", self.meta_file)
            return None

    def store_id(self, broker_id: int, cluster_id: str) -> None:
        """Write meta.properties atomically (a temporary file, fsync, rename, fsync of the directory)."""
        text = (f"# The id of the Dray broker that uses this directory, kept across restarts.\n"
                f"version={META_VERSION}\ncluster.id={cluster_id}\nbroker.id={broker_id}\n")
        tmp = self.meta_file.with_name(META_FILE + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.meta_file)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def broker_id(self, configured: int | None, cluster_id: str) -> int | None:
        """The id this directory's broker has: the configured one (which must match a stored one of the same
        cluster), else the stored one; None when there is none yet (allocate one and store_id it)."""
        stored = self.stored_id()
        if stored is not None and stored.cluster_id != cluster_id:
            log.warning("%s belongs to broker %d of cluster %s, not of this cluster (%s): its id is not used",
                        self.meta_file, stored.broker_id, stored.cluster_id or "?", cluster_id)
            stored = None
        if configured is not None and stored is not None and configured != stored.broker_id:
            raise BrokerIdMismatch(
                f"--broker-id {configured} does not match broker id {stored.broker_id} kept in {self.meta_file}: "
                f"start this data directory's broker with --broker-id {stored.broker_id} (or without --broker-id), "
                f"give broker {configured} another --data-dir, or delete {self.meta_file} to give this directory "
                "a new id")
        if configured is not None:
            return configured
        return stored.broker_id if stored is not None else None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        holder: dict[str, Any] = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return holder
    except ValueError:
        return {}


def lock_data_dir(path: Path, listen: str) -> BrokerDir | None:
    """The broker's directory, held for this process (DataDirInUse when another broker holds it). A directory
    that cannot be written (a broker on Oxia and S3 needs none) only costs the stable id."""
    broker_dir = BrokerDir(path)
    try:
        broker_dir.lock(listen)
    except OSError as e:
        log.warning("cannot use the data directory %s (%s): the broker id is not kept across restarts", path, e)
        return None
    return broker_dir


async def broker_id_of(broker_dir: BrokerDir | None, configured: int | None, cluster_id: str,
                       allocate: Callable[[], Awaitable[int]]) -> tuple[int, bool]:
    """The broker's id, and whether it is a known one (configured, or kept in the directory): a broker with a
    known id may have a dead predecessor whose registration has yet to expire. A new id comes from allocate()
    and is kept in the directory at once, so that a start that fails later does not use up an id."""
    if broker_dir is None:
        return (configured, True) if configured is not None else (await allocate(), False)
    known = broker_dir.broker_id(configured, cluster_id)
    broker_id = known if known is not None else await allocate()
    if broker_dir.stored_id() != StoredId(broker_id, cluster_id):
        broker_dir.store_id(broker_id, cluster_id)
    return broker_id, known is not None
