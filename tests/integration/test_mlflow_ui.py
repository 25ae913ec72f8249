"""`make mlflow-ui` serves the UI on loopback, and stops with its process group."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import pytest

from infra.processes import free_port, listening_addresses, stop_group
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_make_mlflow_ui_serves_on_loopback():
    port = free_port()
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "mlflow-ui", f"MLFLOW_PORT={port}"],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    status = r.status
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                time.sleep(1)
        assert status == 200
        listening = listening_addresses(port)
        assert listening == {"127.0.0.1"}
    finally:
        stop_group(proc.pid, grace_s=20, proc=proc)
