"""`make submit` against a real Ray head started here (`ray start --head` on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from infra.local.ray_head import http_status as _status
from infra.local.ray_head import start_head
from tests.conftest import REPO, fresh_mlflow_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head of its own with token authentication (infra/local/ray_head.py)."""
    with start_head(tmp_path_factory.mktemp("ray-head") / "head.log") as head:
        yield head


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
    address, token = ray_head.dashboard, ray_head.token
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
    # The uploaded copy has no .git: the code tags are the submitting checkout's.
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == head
    assert run.data.tags["mlflow.source.type"] == "JOB"
    assert run.data.tags["mxtrain.git.dirty"] in ("true", "false")


def test_a_failing_job_fails_make_submit_with_its_last_error(ray_head, tmp_path):
    address, token = ray_head.dashboard, ray_head.token
    uri = fresh_mlflow_store(tmp_path / "store")
    done = _submit(address, f"--data {tmp_path / 'nowhere'}", mlflow_uri=uri, token=token)
    assert done.returncode != 0
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: job ")]
    assert errors and "FAILED" in errors[0] and "no Parquet files under train/" in errors[0]


def test_the_jobs_api_refuses_anyone_without_the_token(ray_head, digits_uri, tmp_path):
    address, token = ray_head.dashboard, ray_head.token
    assert _status(f"{address}/api/jobs/") == 401
    assert _status(f"{address}/api/jobs/", token="not-the-token") in (401, 403)
    assert _status(f"{address}/api/jobs/", token=token) == 200

    uri = fresh_mlflow_store(tmp_path / "store")
    done = _submit(address, f"--data {digits_uri}", mlflow_uri=uri, token=None)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and "RAY_AUTH_TOKEN" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_submission_waits_for_a_head_whose_job_agent_is_not_up(ray_head, digits_uri, tmp_path):
    """Right after `ray start --head` the Jobs API answers 500 "No available agent" for a
    few seconds (seen as a traceback from make submit in CI-like scripts): the submission
    waits, says so once, and goes through."""
    from ray.job_submission import JobSubmissionClient

    from tests.faults import AgentNotReadyProxy

    address, token = ray_head.dashboard, ray_head.token
    env = {**os.environ, "RAY_AUTH_TOKEN": token, "RAY_AUTH_TOKEN_PATH": "/nonexistent"}
    args = ["--data", digits_uri, "--storage", str(tmp_path / "runs")]
    with AgentNotReadyProxy(address, refusals=2) as proxy:
        done = subprocess.run(
            [sys.executable, "-m", "jobs.submit", "--address", proxy.address, "--no-wait",
             "--", *args],
            cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert proxy.refused == 2
    lines = done.stdout.splitlines()
    assert lines[0].startswith("waiting for the cluster's job agent")
    job_id = lines[-1].split()[2]
    assert lines[-1] == f"submitted job {job_id} to {proxy.address}"
    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    client.stop_job(job_id)  # it was taken; its training is not this test's


def test_a_process_that_ran_a_local_ray_joins_a_cluster_with_the_clusters_token(
    ray_head, monkeypatch
):
    """Ray reads a process's token once and caches it: a job on a local Ray and then one on
    a cluster, in one process (make bench's groups, a notebook), presented the local Ray's
    token to the cluster and was refused (InvalidAuthToken)."""
    import ray

    from pipeline.distributed.ray_runtime import ray_runtime

    def one_task() -> str:
        """The GCS port of the Ray the task ran on (its host is the node's address)."""
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        return ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]

    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    with ray_runtime(1, 1, lambda _m: None):
        local = one_task()
    for name, value in ray_head.client_env().items():
        monkeypatch.setenv(name, value)
    with ray_runtime(1, 1, lambda _m: None):
        assert one_task() == ray_head.gcs_address.rsplit(":", 1)[1] != local
