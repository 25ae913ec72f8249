"""The distant S3 of infra/local/latency_proxy.py: what passes through it arrives intact, and
no request arrives sooner than the latency it stands for (lower bounds only: a loaded machine
may make things slower, never faster)."""

from __future__ import annotations

import functools
import http.client
import http.server
import threading
import time

import pytest

from infra.local import latency_proxy


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A plain HTTP/1.1 server on loopback serving one 2 MB file (keep-alive)."""
    root = tmp_path_factory.mktemp("upstream")
    payload = bytes(range(256)) * (8 * 1024)
    (root / "blob").write_bytes(payload)

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], payload
    server.shutdown()
    server.server_close()


def test_each_request_pays_the_latency_and_responses_the_bandwidth(upstream):
    port, payload = upstream
    with latency_proxy.running(port, latency_ms=50, mbps=10) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        started = time.monotonic()
        for _ in range(5):  # one keep-alive connection, one request after another
            conn.request("HEAD", "/blob")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        heads = time.monotonic() - started
        started = time.monotonic()
        conn.request("GET", "/blob")
        body = conn.getresponse().read()
        download = time.monotonic() - started
        conn.close()
    assert body == payload
    # The connection's handshake and five requests, 50 ms each.
    assert heads >= 6 * 0.05
    # 2 MB at 10 MB/s, after its request's 50 ms.
    assert download >= 0.05 + len(payload) / 10e6
