"""`make submit` against a real Ray head started here (`ray start --head` on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from infra.processes import free_port, stop_group
from tests.conftest import REPO, fresh_mlflow_store

pytestmark = pytest.mark.integration


def _answers(address: str) -> bool:
    """Whether the dashboard answers at all (token authentication may answer 401)."""
    return _status(f"{address}/api/version") != 0


def _status(url: str, token: str | None = None) -> int:
    """The HTTP status of a GET (0: no answer), with ``token`` as the bearer token."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head of its own (own ports, own process group), with token authentication as the
    shipped cluster configs start it; stopped by process group: `ray stop` would also stop any
    other Ray on the machine. Yields (dashboard address, token)."""
    import secrets

    ray_bin = str(Path(sys.executable).with_name("ray"))
    port, dashboard = free_port(), free_port()
    # Its own temp dir, so its address file (ray_current_cluster) does not outlive it in
    # /tmp/ray, where every later ray.init() on this machine would try to join it. Short,
    # because Ray's socket paths must fit in 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    token = secrets.token_hex(32)
    log = (tmp_path_factory.mktemp("ray-head") / "head.log").open("w")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--include-dashboard=true", "--num-cpus=4", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={
            **os.environ,
            # The job's entrypoint says `python`: on a cluster the image's; here this venv's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",
            "MXNET_CPU_WORKER_NTHREADS": "1",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
        },
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"

    try:
        deadline = time.monotonic() + 120
        while not _answers(address):
            assert head.poll() is None and time.monotonic() < deadline, "Ray head did not start"
            time.sleep(0.5)
        yield address, token
    finally:
        stop_group(head.pid, grace_s=5, proc=head)  # its workers outlive SIGTERM
        shutil.rmtree(temp_dir, ignore_errors=True)
    log.close()


def _submit(
    address: str, *train_args: str, mlflow_uri: str, token: str | None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "RAY_AUTH_TOKEN_PATH": "/nonexistent"}
    env.pop("RAY_AUTH_TOKEN", None)
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run(
        ["make", "--no-print-directory", "submit", f"RAY_ADDRESS={address}",
         f"ARGS={' '.join(train_args)}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip


def test_make_submit_runs_the_job_on_the_cluster(ray_head, digits_uri, tmp_path):
    address, token = ray_head
    uri = fresh_mlflow_store(tmp_path / "store")
    done = _submit(
        address, f"--data {digits_uri}", f"--storage {tmp_path / 'runs'}",
        "--set optim.epochs=2 --set optim.warmup_epochs=0", mlflow_uri=uri, token=token,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "connecting to the Ray cluster" in done.stdout  # the job's log, streamed
    assert "SUCCEEDED" in done.stdout.splitlines()[-1]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mxtrain").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "world_size")] == [2, 2]


def test_a_failing_job_fails_make_submit_with_its_last_error(ray_head, tmp_path):
    address, token = ray_head
    uri = fresh_mlflow_store(tmp_path / "store")
    done = _submit(address, f"--data {tmp_path / 'nowhere'}", mlflow_uri=uri, token=token)
    assert done.returncode != 0
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: job ")]
    assert errors and "FAILED" in errors[0] and "no Parquet files under train/" in errors[0]


def test_the_jobs_api_refuses_anyone_without_the_token(ray_head, digits_uri, tmp_path):
    address, token = ray_head
    assert _status(f"{address}/api/jobs/") == 401
    assert _status(f"{address}/api/jobs/", token="not-the-token") in (401, 403)
    assert _status(f"{address}/api/jobs/", token=token) == 200

    uri = fresh_mlflow_store(tmp_path / "store")
    done = _submit(address, f"--data {digits_uri}", mlflow_uri=uri, token=None)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and "RAY_AUTH_TOKEN" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
