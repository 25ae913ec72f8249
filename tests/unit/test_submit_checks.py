"""What jobs.submit refuses before it contacts a cluster: outputs that a remote cluster would
write on its head node and lose."""

from __future__ import annotations

import pytest

from jobs.submit import _train_args
from pipeline.errors import ConfigError
from tests.conftest import run_cli

REMOTE = "http://ray-head.example.internal:8265"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ([], {}, "storage.path=(default: ./runs) is a local folder"),
        (["--storage", "/mnt/runs"], {}, "storage.path=/mnt/runs is a local folder"),
        (
            ["--storage", "s3://bucket/runs"],
            {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"},
            "the tracking URI sqlite:///mlflow.db is a local store",
        ),
    ],
)
def test_a_remote_cluster_gets_no_local_outputs(args, env, needle):
    proc = run_cli("jobs.submit", "--address", REMOTE, "--", *args, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_shared_outputs_pass_and_a_cluster_on_this_machine_may_use_local_ones(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.internal:5000")
    args = ["--", "--storage", "s3://bucket/runs"]
    assert _train_args(args, REMOTE) == args[1:]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert _train_args(["--"], "http://127.0.0.1:8265") == []
    with pytest.raises(ConfigError):
        _train_args(["--"], "10.0.0.7:8265")


def test_a_driver_started_by_hand_forwards_its_env_and_a_submitted_job_only_what_differs(
    monkeypatch,
):
    """With RAY_ADDRESS, a driver run from a shell must pass its settings (the trace dir, S3
    endpoint, Ray Train's poll) to the workers itself; inside a submitted job the job's
    runtime env already holds them, and Ray refuses a key given twice."""
    import json

    from pipeline.distributed.ray_runtime import _submitted_job_env_vars

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _submitted_job_env_vars() == {}
    job = {"runtime_env": {"env_vars": {"MXTRAIN_TRACE_DIR": "/t", "PYTHONWARNINGS": "ignore"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _submitted_job_env_vars() == {"MXTRAIN_TRACE_DIR": "/t", "PYTHONWARNINGS": "ignore"}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "not json")
    assert _submitted_job_env_vars() == {}
