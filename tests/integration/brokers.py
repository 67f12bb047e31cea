"""Run `dray broker` as a real subprocess for tests: on a free port, with the backends a test asks for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

READY_LINE = "ready on"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BrokerProcess:
    """One broker process. Restartable on the same data dir and port."""

    data_dir: Path
    metadata: str | None = None
    object_store: str | None = None
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "BrokerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "dray_broker.cli", "broker", "--data-dir", str(self.data_dir),
                "--listen", self.bootstrap, "--flush-ms", "2", *self.extra_args]
        if self.metadata:
            args += ["--metadata", self.metadata]
        if self.object_store:
            args += ["--object-store", self.object_store]
        self.log_path = self.data_dir / f"broker-{self.port}.log"
        log = open(self.log_path, "ab")
        seen = self.log_path.stat().st_size  # a restart appends: look for the ready line after this
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            if READY_LINE in self.log()[seen:]:
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"broker did not become ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (drain) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"broker did not drain in {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: the broker dies with whatever it had in memory."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> "BrokerProcess":
        self.stop()
        return self.start()
