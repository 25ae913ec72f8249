"""``python -m jobs.serve``'s server: MLflow's scoring app (its REST formats, its signature
checks) behind a guard of our own, run by uvicorn.

MLflow's scoring server has no switch for what a server on a developer's machine needs:

* **Host check.** A web page the user visits can make the browser send requests to
  ``127.0.0.1`` under a name the attacker controls (DNS rebinding); the ``Host`` header then
  carries that name. Only loopback names (with any port) are answered, others get 421.
* **Request size.** A body larger than ``--max-request-mb`` is refused with 413 before it is
  read into memory (by ``Content-Length``, and counted while it streams).
* **No stack traces.** MLflow puts the server's Python traceback into every error's JSON
  (``stack_trace``); the guard drops that field, keeping the message.

The model MLflow's app loads is the folder :func:`~pipeline.model.installed.
save_for_serving` wrote (this installation's loader), named by :data:`MODEL_ENV`: uvicorn
starts each worker from the factory :func:`create_app`, which reads it there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

#: The MLflow model folder to serve (written by jobs.serve).
MODEL_ENV = "MXTRAIN_SERVE_MODEL"
#: The largest request body, bytes.
MAX_BYTES_ENV = "MXTRAIN_SERVE_MAX_BYTES"
#: Host header names answered (any port).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: str) -> str:
    """The name of a Host header without its port (``[::1]:5001`` -> ``[::1]``)."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _TooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: Host check, body limit, errors without stack traces."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if host_name(headers.get("host", "").strip().lower()) not in LOOPBACK_NAMES:
            await _answer(send, 421, "this server answers requests to 127.0.0.1 or localhost only")
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _answer(send, 413, f"request body larger than {self.max_bytes:,} bytes")
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        started: dict[str, Any] = {}
        body: list[bytes] = []

        async def scrubbed(message: Message) -> None:
            # Error responses are held until complete, their JSON's stack_trace dropped.
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    await send(message)
                else:
                    started.update(message)
                return
            if not started or message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            content = _without_trace(b"".join(body))
            headers = [
                (k, v) for k, v in started.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(content)).encode()))
            await send({**started, "headers": headers})
            await send({"type": "http.response.body", "body": content})

        try:
            await self.app(scope, counted, scrubbed)
        except _TooLarge:
            await _answer(send, 413, f"request body larger than {self.max_bytes:,} bytes")


def _without_trace(content: bytes) -> bytes:
    try:
        answer = json.loads(content)
    except ValueError:
        return content
    if isinstance(answer, dict) and "stack_trace" in answer:
        answer.pop("stack_trace")
        return json.dumps(answer).encode()
    return content


async def _answer(send: Send, status: int, message: str) -> None:
    content = json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


def create_app() -> ASGIApp:
    """uvicorn's factory, in each worker: MLflow's scoring app for the folder in
    :data:`MODEL_ENV`, guarded."""
    from mlflow.pyfunc import scoring_server

    from pipeline.tracking.client import quiet_mlflow

    with quiet_mlflow():
        model = scoring_server.load_model_with_mlflow_config(os.environ[MODEL_ENV])
    return Guard(scoring_server.init(model), int(os.environ[MAX_BYTES_ENV]))
