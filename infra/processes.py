"""Helpers for the local services that code and tests start and must stop again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """The local addresses on which some process of this machine listens on TCP ``port``
    (``{"127.0.0.1"}`` for a service on loopback only; ``0.0.0.0`` means every interface)."""
    import psutil

    return {
        c.laddr.ip
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }


def group_processes(pgid: int) -> list:
    """The live processes of process group ``pgid`` (psutil.Process objects): what a service
    started with ``start_new_session=True`` runs, its leader included."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(process.pid) == pgid:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def stop_group(pid: int, grace_s: float = 3.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL it after ``grace_s``.

    Services are started with ``start_new_session=True`` so that this reaches every child
    (Ray's raylet and workers, MLflow's gunicorn workers) and nothing else on the machine.
    Pass ``proc`` when this process started it, so that it is also reaped."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # children that outlived their leader, too
    if proc is not None:
        proc.wait()


def http_status(url: str, authorization: str | None = None, timeout_s: float = 5) -> int:
    """The HTTP status of a GET of ``url`` (0: nothing answered), with an ``Authorization``
    header when given (``Bearer <token>``, ``Basic <base64>``)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_for_http(
    url: str, proc: subprocess.Popen, timeout_s: float = 120, interval_s: float = 0.5
) -> None:
    """Wait until a GET of ``url`` answers 200 from the service ``proc`` started.

    Raises RuntimeError when ``proc`` exits first (with what it printed, if that went to a
    pipe) or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while http_status(url, timeout_s=2) != 200:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            raise RuntimeError(
                f"exited with code {proc.returncode} before {url} answered: {output[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")
        time.sleep(interval_s)
