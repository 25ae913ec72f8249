"""A Ray head of its own on this machine, as the shipped cluster configs start one: with
token authentication, in its own process group and temp dir. Its dashboard (the Jobs API)
listens on 127.0.0.1. Its GCS and raylet listen on every interface, as `ray start` binds
them, and require the token; Ray registers the node under the machine's address even when
told ``--node-ip-address=127.0.0.1`` (``services.resolve_ip_for_localhost``).

Used by the tests of cluster submission and by the warm start-up benchmark (a job joining a
running cluster through ``RAY_ADDRESS``)::

    with start_head(log_path) as head:
        env = {**os.environ, **head.client_env()}   # RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN

It is stopped by process group, never by ``ray stop`` (which stops every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra import processes
from infra.processes import free_port, stop_group


@dataclass(frozen=True)
class RayHead:
    gcs_address: str  #: what ``ray.init(address=...)`` and ``RAY_ADDRESS`` take
    dashboard: str  #: http://127.0.0.1:<port>: the jobs API (``make submit``)
    token: str

    def client_env(self) -> dict[str, str]:
        """What a driver on this machine needs in its environment to join the cluster."""
        return {
            "RAY_ADDRESS": self.gcs_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
        }


def http_status(url: str, token: str | None = None) -> int:
    """The HTTP status of a GET (0: no answer), with ``token`` as the bearer token."""
    return processes.http_status(url, f"Bearer {token}" if token else None)


@contextlib.contextmanager
def start_head(
    log_path: Path,
    num_cpus: int = 4,
    timeout_s: float = 120,
    extra_env: dict[str, str] | None = None,
) -> Iterator[RayHead]:
    """Start the head, wait until its dashboard answers, yield it, stop it and its workers.
    ``extra_env``: more of the head's environment (Ray's ``RAY_<setting>`` system config)."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    port, dashboard_port = free_port(), free_port()
    # Its own temp dir, so its address file (ray_current_cluster) does not outlive it in
    # /tmp/ray, where every later ray.init() on this machine would try to join it. Short,
    # because Ray's socket paths must fit in 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    token = secrets.token_hex(32)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        head = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
             "--include-dashboard=true", f"--num-cpus={num_cpus}", "--disable-usage-stats",
             f"--temp-dir={temp_dir}",
             # The job agent (which runs submitted jobs) binds 52365 by default: with another
             # Ray on this machine holding it, the head never gets one and every submission
             # is refused ("No available agent").
             f"--dashboard-agent-listen-port={free_port()}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={
                **os.environ,
                # A job's entrypoint says `python`: on a cluster the image's; here this venv's.
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "OMP_NUM_THREADS": "1",
                "MXNET_CPU_WORKER_NTHREADS": "1",
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": token,
                **(extra_env or {}),
            },
        )  # fmt: skip
    head_info = RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", token)
    try:
        deadline = time.monotonic() + timeout_s
        # Any answer will do: token authentication may answer 401.
        while http_status(f"{head_info.dashboard}/api/version") == 0:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start; its log: {log_path}")
            time.sleep(0.5)
        yield head_info
    finally:
        stop_group(head.pid, grace_s=5, proc=head)  # its workers outlive SIGTERM
        shutil.rmtree(temp_dir, ignore_errors=True)
