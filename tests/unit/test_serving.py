"""jobs.serve's options and the guard in front of MLflow's scoring app (in process, no
model): loopback names only, a bounded body however it is sent, no stack traces."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from jobs.serve import build_parser, check_args
from pipeline.errors import ConfigError
from pipeline.predict.serving import Guard, host_name


async def _echo_app(scope, receive, send):
    """Reads the whole body; answers 200 with its length, or 400 with a stack trace."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    failed = scope["path"] == "/fail"
    content = json.dumps(
        {"message": "bad input", "stack_trace": "Traceback ..."} if failed else {"size": size}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    await send(
        {"type": "http.response.start", "status": 400 if failed else 200, "headers": headers}
    )
    await send({"type": "http.response.body", "body": content})


def test_the_guard_answers_loopback_names_and_bounded_bodies_only():
    client = TestClient(Guard(_echo_app, max_bytes=100), base_url="http://127.0.0.1:5001")
    assert client.post("/x", content=b"a" * 100).json() == {"size": 100}
    assert client.post("/x", content=b"a", headers={"Host": "localhost:5001"}).status_code == 200
    rebound = client.post("/x", content=b"a", headers={"Host": "attacker.example"})
    assert rebound.status_code == 421
    assert client.post("/x", content=b"a" * 101).status_code == 413
    # Streamed without a length (chunked): counted as it comes.
    chunks = iter([b"a" * 60, b"a" * 60])
    assert client.post("/x", content=chunks).status_code == 413
    failed = client.post("/fail", content=b"{}")
    assert failed.status_code == 400 and failed.json() == {"message": "bad input"}
    assert int(failed.headers["content-length"]) == len(failed.content)


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:5001", "127.0.0.1"), ("localhost", "localhost"), ("[::1]:80", "[::1]")],
)
def test_host_names_lose_their_port(header, name):
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "-3"], "--workers -3: must be between 1 and 64"),
        (["--workers", "0"], "--workers 0: must be between 1 and 64"),
        (["--timeout", "0"], "--timeout 0: must be between 1 and 3600"),
        (["--max-request-mb", "0"], "--max-request-mb 0: must be between 1 and 1024"),
        (["--port", "70000"], "--port 70000: not a TCP port"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0: the scoring server has no authentication"),
    ],
)
def test_options_out_of_bounds_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        check_args(build_parser().parse_args(["--model", "models:/m@a", *argv]))
