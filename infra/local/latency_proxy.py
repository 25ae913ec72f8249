"""A distant S3 on this machine: a TCP proxy on loopback in front of the local SeaweedFS that
adds what a real endpoint 30-100 ms away costs.

    python -m infra.local.latency_proxy --upstream 8333 --port 8334 --latency-ms 30 --mbps 100

Loopback SeaweedFS answers in about 1 ms, so code that makes one request after another looks
fast here and takes hours against S3. Through this proxy:

* every request waits ``--latency-ms`` before the server sees it (the round trip a request
  costs before its first byte: AWS quotes 20-100 ms), and a new connection the same once more
  (its handshake);
* every connection's responses flow at most ``--mbps`` megabytes per second (a single S3
  stream gives 50-100 MB/s; parallel range reads are how clients go faster).

A request is what the client sends after the server's last answer on that connection
(HTTP/1.1 keep-alive: one request in flight per connection, as boto3 and pyarrow's S3 client
use them). Latency is added on the way in, so concurrent connections overlap their waits as
they would against a real endpoint, and a client that reads 100 files one after another
pays 100 round trips.

It runs in a process of its own (the measured code keeps its cores' share), started by the
tests and the benchmark like SeaweedFS (:func:`start`), and by ``make object-store
LATENCY_MS=30``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Delay:
    #: Seconds before a request (and a new connection's first one, once more) goes on.
    latency_s: float
    #: Bytes per second of one connection's responses; 0 = no cap.
    bytes_per_s: float


async def _pipe_requests(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: Delay,
    answered: asyncio.Event,
) -> None:
    """Client -> server: the first bytes of each request wait one latency."""
    while data := await reader.read(CHUNK):
        if answered.is_set():  # the server answered since the client last sent: a new request
            answered.clear()
            await asyncio.sleep(delay.latency_s)
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def _pipe_responses(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: Delay,
    answered: asyncio.Event,
) -> None:
    """Server -> client, at most ``bytes_per_s``: each chunk takes its time on the wire, and
    idle time earns no credit (a link does not save up bandwidth)."""
    free_at = 0.0
    while data := await reader.read(CHUNK):
        answered.set()
        if delay.bytes_per_s:
            now = time.monotonic()
            free_at = max(free_at, now) + len(data) / delay.bytes_per_s
            await asyncio.sleep(free_at - now)
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def _serve_connection(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_port: int,
    delay: Delay,
) -> None:
    await asyncio.sleep(delay.latency_s)  # the connection's handshake
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        client_writer.close()
        return
    answered = asyncio.Event()
    answered.set()  # the connection's first request waits too
    try:
        await asyncio.gather(
            _pipe_requests(client_reader, server_writer, delay, answered),
            _pipe_responses(server_reader, client_writer, delay, answered),
        )
    except (ConnectionError, OSError):
        pass
    finally:
        for w in (client_writer, server_writer):
            w.close()


async def serve(port: int, upstream_port: int, delay: Delay, ready=None) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(r, w, upstream_port, delay), "127.0.0.1", port
    )
    if ready is not None:
        ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


@dataclass(frozen=True)
class LatencyProxy:
    """A proxy process: ``endpoint`` is what clients use instead of the server's."""

    port: int
    pid: int
    latency_ms: float
    mbps: float

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        from infra.processes import stop_group

        stop_group(self.pid, grace_s=2)


def start(upstream_port: int, latency_ms: float, mbps: float = 0, port: int = 0) -> LatencyProxy:
    """Start the proxy in a process of its own (its own process group); return once it
    accepts connections."""
    import socket

    from infra.processes import free_port

    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "infra.local.latency_proxy",
            "--upstream", str(upstream_port), "--port", str(port),
            "--latency-ms", str(latency_ms), "--mbps", str(mbps),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return LatencyProxy(port, proc.pid, latency_ms, mbps)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the latency proxy did not start on port {port}")
        time.sleep(0.1)


@contextlib.contextmanager
def running(upstream_port: int, latency_ms: float, mbps: float = 0) -> Iterator[LatencyProxy]:
    proxy = start(upstream_port, latency_ms, mbps)
    try:
        yield proxy
    finally:
        proxy.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m infra.local.latency_proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--upstream", type=int, required=True, help="the server's port on 127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    p.add_argument("--latency-ms", type=float, default=30.0, help="per request (default 30)")
    p.add_argument(
        "--mbps", type=float, default=100.0, help="MB/s per connection, 0 = no cap (default 100)"
    )
    args = p.parse_args(argv)
    if args.latency_ms < 0 or args.mbps < 0:
        p.error("--latency-ms and --mbps must be >= 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    delay = Delay(args.latency_ms / 1000.0, args.mbps * 1e6)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.upstream, delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
