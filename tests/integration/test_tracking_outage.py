"""The tracking server goes away for a minute in the middle of a run, and nothing is lost.

A real MLflow server (sqlite store, artifacts served by it) behind a TCP proxy that stops
listening for 60 s after the first epoch's metrics arrived; during the outage a worker is
SIGKILLed, so a new worker group starts while the server is unreachable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from infra.processes import free_port, stop_group, wait_for_http
from pipeline.train import trace
from tests.faults import FlakyProxy
from tests.jobs import BackgroundJob, wait_for

pytestmark = pytest.mark.integration

OUTAGE_S = 60
#: Enough that the workers still train when one is killed, 2 s into the outage (about 30 s of
#: training for digits-fcn here); the driver then waits out the rest of the outage.
EPOCHS = 40


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free loopback port, stopped by process group."""
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"),
            *("--artifacts-destination", str(tmp_path / "artifacts")),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", proc)
        yield port
    finally:
        stop_group(proc.pid, grace_s=20, proc=proc)


# make test-all: it waits out a real minute (about 2 minutes in all). make test keeps the
# logger's side of it: buffering, order, retries and the count of what was lost
# (tests/unit/test_run_logger.py).
@pytest.mark.slow
def test_a_minute_without_mlflow_loses_nothing(mlflow_server, digits_uri, tmp_path):
    direct = MlflowClient(f"http://127.0.0.1:{mlflow_server}")
    proxy = FlakyProxy(mlflow_server, reset_first=0, slow_down_every=0)
    job = BackgroundJob(
        tmp_path / "job",
        [
            *("--recipe", "digits-fcn", "--data", digits_uri, "--storage", str(tmp_path / "runs")),
            *("--set", f"optim.epochs={EPOCHS}", "--set", "checkpoint.every_steps=10"),
            *("--set", "tracking.gate_min=0.9", "--set", "scaling.max_failures=1"),
        ],
        env={"MLFLOW_TRACKING_URI": proxy.endpoint},
    )

    def first_epoch_logged():
        exp = direct.get_experiment_by_name("mxtrain")
        runs = direct.search_runs([exp.experiment_id]) if exp else []
        return runs[0] if runs and "val_accuracy" in runs[0].data.metrics else None

    try:
        # The outage starts once the first epoch's metrics are on the server.
        run = wait_for(first_epoch_logged, "first epoch's metrics", 300, 0.2, job.ended)
        proxy.go_down()
        down_at = time.monotonic()
        # A worker dies during the outage: its group restarts without the server.
        time.sleep(2)
        pids = [e["pid"] for e in trace.read_events(job.trace) if e["rank"] == 1]
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        assert job.ended() is None, "the job ended during the outage: " + job.stderr()[-3000:]
        proxy.come_back()
        done = job.wait()
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        if job.proc.poll() is None:
            job.proc.kill()
        proxy.close()

    stdout, stderr = job.stdout(), job.stderr()
    assert "is unreachable; training goes on" in stderr
    assert "reachable again" in stderr
    run = direct.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mxtrain.attempts"] == "2"  # the restart was counted, not fatal
    for key in ("val_accuracy", "train_loss"):
        steps = sorted({m.step for m in direct.get_metric_history(run.info.run_id, key)})
        assert steps == list(range(EPOCHS)), (key, steps)
    assert "test_accuracy" in run.data.metrics
    version = direct.get_model_version_by_alias("digits-fcn", "candidate")
    assert version.run_id == run.info.run_id
    assert "registered digits-fcn version 1" in stdout
