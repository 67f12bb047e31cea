#!/usr/bin/env python3
"""Build or run the test services (Oxia, MinIO) by hand, as the test suite does.

    .venv/bin/python scripts/services.py build        # build the cached binaries (minutes the first time)
    .venv/bin/python scripts/services.py up           # start both on free loopback ports until Ctrl-C
    .venv/bin/python scripts/services.py up oxia      # only one of them
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import services  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "up", "where"])
    parser.add_argument("which", nargs="*", help="oxia and/or minio (default: both)")
    args = parser.parse_args(argv)
    which = args.which or ["oxia", "minio"]
    if set(which) - {"oxia", "minio"}:
        parser.error(f"unknown service(s): {sorted(set(which) - {'oxia', 'minio'})}")

    if args.command == "where":
        print(f"cache: {services.services_dir()}")
        for path in (services.oxia_binary_path(), services.minio_binary_path()):
            print(f"{path}: {'present' if path.exists() else 'missing'}")
        return 0

    for name in which:
        started = time.monotonic()
        path = services.ensure_oxia_binary() if name == "oxia" else services.ensure_minio_binary()
        print(f"{name}: {path} ({time.monotonic() - started:.0f} s)", flush=True)
    if args.command == "build":
        return 0

    handles = []
    try:
        if "oxia" in which:
            oxia = services.start_oxia()
            handles.append(oxia)
            print(f"oxia:  {oxia.address}  (metadata store URL oxia://{oxia.address}; log {oxia.log_path})")
        if "minio" in which:
            minio = services.start_minio()
            handles.append(minio)
            print(f"minio: {minio.endpoint}  bucket {minio.bucket}  (log {minio.log_path})")
            print(f"       object store URL {minio.url('dray')}")
        print("Ctrl-C stops them.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        for handle in handles:
            handle.stop()


if __name__ == "__main__":
    sys.exit(main())
