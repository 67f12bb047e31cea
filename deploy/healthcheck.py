"""The container image's HEALTHCHECK: exit 0 when the broker answers GET /readyz on DRAY_HTTP_LISTEN.

    python /opt/dray/healthcheck.py                       # the broker roles (`dray broker`, `dray up`)
    python /opt/dray/healthcheck.py http://127.0.0.1:3000/server_info   # any other URL (the Dagster webserver)

A wildcard listen address (0.0.0.0, ::) is probed on the loopback address. Standard library only: it runs every
few seconds and must start fast.
"""

import os
import sys
import urllib.request


def readyz_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/readyz"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        url = argv[1]
    else:
        listen = os.environ.get("DRAY_HTTP_LISTEN")
        if not listen:
            print("healthcheck: DRAY_HTTP_LISTEN is unset (the broker serves /readyz there)", file=sys.stderr)
            return 1
        url = readyz_url(listen)
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("DRAY_HEALTHCHECK_TIMEOUT", "3"))) as r:
            ok = r.status == 200
    except OSError as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1
    if not ok:
        print(f"healthcheck: {url}: HTTP {r.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
