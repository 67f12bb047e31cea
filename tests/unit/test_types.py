"""The request path type-checks: mypy over the server, the protocol codec, every route's handler, the services they
are given and the modules those call directly (the files and flags are pyproject.toml's [tool.mypy]). It catches a
handler that returns what its route does not allow (a Deferred from a route that is not deferred, a bare kio
entity), a handler that reaches for something its service does not hold, and a None or a wrong type passed down the
produce, fetch and login paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_request_path_type_checks():
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, f"mypy found errors:\n{run.stdout}{run.stderr}"
