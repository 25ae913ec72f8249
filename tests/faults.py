"""Fault injection for tests: fakes of the network (a flaky S3, an MLflow outage, a Ray head
without its job agent) and of the registry (a version with code of its own). The other fake
in the suite is ``_FakeMX`` in test_distributed_units.py: an MXNet that reports GPUs, for the
device choice no machine here can run."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: 133\r\n\r\n"
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>\n"
)


class FlakyProxy:
    """A loopback TCP proxy in front of an S3 server that misbehaves on purpose.

    Connection n (0-based): the first ``reset_first`` are reset (RST) on accept; after those,
    every ``slow_down_every``-th answers its first request with HTTP 503 SlowDown and closes;
    the others are piped through unchanged. Counts what it did in ``resets``/``slow_downs``.
    :meth:`go_down` and :meth:`come_back` make an outage of any server (S3, MLflow).
    """

    def __init__(self, upstream_port: int, reset_first: int = 3, slow_down_every: int = 4):
        self.upstream_port = upstream_port
        self.reset_first = reset_first
        self.slow_down_every = slow_down_every
        self.resets = 0
        self.slow_downs = 0
        self.passed = 0
        self._n = 0
        self._open: set[socket.socket] = set()
        self.port = 0
        self._listen()

    def _listen(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, args=(self._sock,), daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        # A thread blocked in accept() keeps a closed socket listening (Linux): shutdown wakes
        # it. Without it one more connection got through after go_down, and a client that kept
        # it alive (the driver's HTTP pool) went on through the "outage".
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)

    def go_down(self) -> None:
        """The server behind is gone: new connections are refused (nothing listens on the
        port) and open ones are cut."""
        self.close()
        for conn in list(self._open):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def come_back(self) -> None:
        """Listen on the same port again."""
        self._listen()

    def _accept(self, listening: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listening.accept()
            except OSError:
                return
            if self._stop.is_set():  # accepted as the proxy went down
                conn.close()
                return
            n = self._n
            self._n += 1
            if n < self.reset_first:
                self.resets += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            elif self.slow_down_every and (n - self.reset_first) % self.slow_down_every == 1:
                threading.Thread(target=self._slow_down, args=(conn,), daemon=True).start()
            else:
                self.passed += 1
                threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _slow_down(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                conn.sendall(SLOW_DOWN)
                self.slow_downs += 1
            except OSError:
                return

    def _pipe(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError:
            conn.close()
            return

        def copy(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        self._open.update((conn, upstream))
        t = threading.Thread(target=copy, args=(upstream, conn), daemon=True)
        t.start()
        copy(conn, upstream)
        t.join(timeout=60)
        self._open.difference_update((conn, upstream))
        conn.close()
        upstream.close()


# -- a model version shaped by someone who may write the registry -----------------------------

_CRAFTED_LOADER = '''"""A pyfunc loader as an attacker would register it: it runs on import."""
import pathlib

import mlflow.models
import mlflow.pyfunc

pathlib.Path({marker!r}).write_text("the registry's code ran")


class Crafted(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Crafted())
'''


class _Pickled:
    """A python_model whose unpickling writes ``marker`` (what a cloudpickled model can do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "the registry's pickle ran"))


def register_crafted_version(
    name: str, marker, artifacts: dict[str, str] | None = None, pickled: bool = False
) -> str:
    """A version of ``name`` whose MLmodel runs code that writes ``marker`` when loaded: a
    models-from-code loader of its own (with ``artifacts``, e.g. a real bundle's files), or a
    cloudpickled python_model. Returns ``models:/name/<version>``; ``marker`` is removed
    after logging (MLflow may load the model while logging it)."""
    import pathlib
    import tempfile

    import mlflow
    import mlflow.pyfunc

    marker = pathlib.Path(marker)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        if pickled:
            from mlflow.pyfunc import PythonModel

            class Model(PythonModel):
                def __init__(self) -> None:
                    self.payload = _Pickled(str(marker))

                def predict(self, context, model_input, params=None):
                    return model_input

            info = mlflow.pyfunc.log_model(name="model", python_model=Model(), artifacts=artifacts)
        else:
            loader = pathlib.Path(tmp, "loader.py")
            loader.write_text(_CRAFTED_LOADER.format(marker=str(marker)))
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(loader), artifacts=artifacts
            )
    version = mlflow.register_model(info.model_uri, name)
    marker.unlink(missing_ok=True)
    return f"models:/{name}/{version.version}"


# -- a Ray head whose job agent is not up yet --------------------------------------------------


class AgentNotReadyProxy:
    """An HTTP proxy on loopback in front of a real Ray dashboard that answers the first
    ``refusals`` job submissions (``POST /api/jobs/``) as a head does in the seconds before
    its job agent is up: 500, "No available agent to submit job, please try again later".
    Every other request is forwarded as it is. Use as a context manager."""

    MESSAGE = b"No available agent to submit job, please try again later."

    def __init__(self, upstream: str, refusals: int = 2) -> None:
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.refusals = refusals
        self.refused = 0
        self.address = ""

    def __enter__(self) -> AgentNotReadyProxy:
        import http.client
        import http.server

        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                submission = self.command == "POST" and self.path.rstrip("/") == "/api/jobs"
                if submission and proxy.refused < proxy.refusals:
                    proxy.refused += 1
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(proxy.MESSAGE)))
                    self.end_headers()
                    self.wfile.write(proxy.MESSAGE)
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
