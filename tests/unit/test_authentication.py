"""The broker's SASL shell (server/authentication.py): the per-address failed-login window, and where the JWKS of
OAUTHBEARER comes from (a path, a file:// URL, an http:// URL served here)."""

from __future__ import annotations

import http.server
import threading

from dray_broker.server import authentication
from dray_broker.server.authentication import FailedLogins


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_an_address_is_blocked_after_limit_failures_until_they_age_out():
    clock = Clock()
    limiter = FailedLogins(limit=3, window_ms=60_000, clock_ms=clock)
    for _ in range(2):
        limiter.failed("/10.0.0.1")
        clock.now += 1000
    assert not limiter.blocked("/10.0.0.1")
    limiter.failed("/10.0.0.1")
    assert limiter.blocked("/10.0.0.1") and not limiter.blocked("/10.0.0.2")
    clock.now += 58_000  # the first failure is 60 s old: out of the window
    assert not limiter.blocked("/10.0.0.1")
    clock.now += 10_000
    assert not limiter.blocked("/10.0.0.1")


def test_no_limit_and_bounded_memory(monkeypatch):
    off = FailedLogins(limit=0, window_ms=60_000)
    for _ in range(100):
        off.failed("/a")
    assert not off.blocked("/a")
    monkeypatch.setattr(authentication, "MAX_TRACKED_ADDRESSES", 10)
    clock = Clock()
    limiter = FailedLogins(limit=1, window_ms=1000, clock_ms=clock)
    for i in range(25):
        limiter.failed(f"/10.0.0.{i}")
    assert len(limiter._failures) <= 10
    assert limiter.blocked("/10.0.0.24")  # the newest are kept


async def test_the_jwks_is_read_from_a_path_a_file_url_or_http(tmp_path):
    document = b'{"keys": []}'
    path = tmp_path / "jwks.json"
    path.write_bytes(document)
    assert await authentication._read_jwks(str(path)) == document
    assert await authentication._read_jwks(path.as_uri()) == document

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        assert await authentication._read_jwks(url) == document
    finally:
        server.shutdown()
        server.server_close()
