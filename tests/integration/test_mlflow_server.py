"""The shared MLflow server of infra/mlflow: PostgreSQL (Debian's package) as the backend
store, SeaweedFS as the artifact store, basic auth on, bound to loopback; started and stopped
through its CLI, as an operator would."""

from __future__ import annotations

import json
import shutil
import tempfile
from base64 import b64encode
from pathlib import Path

import pytest

from infra.processes import http_status
from pipeline.config import load_job_config
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "admin-test-password-1"


def _status(uri: str, auth: tuple[str, str] | None = None) -> int:
    basic = b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
    url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=5"
    return http_status(url, f"Basic {basic}" if basic else None, timeout_s=10)


@pytest.fixture(scope="module")
def tracking_server(seaweedfs, tmp_path_factory):
    """Started by the CLI; its PostgreSQL data directory where Debian's postgres user can
    reach it (pytest's own tmp dirs are private to root)."""
    import boto3

    from infra.local.seaweedfs import local_credentials
    from infra.processes import free_port

    access, secret = local_credentials()
    s3 = {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": seaweedfs.endpoint,
        "MLFLOW_S3_ENDPOINT_URL": seaweedfs.endpoint,
        "AWS_REGION": "us-east-1",
    }
    boto3.client("s3", endpoint_url=seaweedfs.endpoint, region_name="us-east-1",
                 aws_access_key_id=access, aws_secret_access_key=secret
                 ).create_bucket(Bucket="team-mlflow")  # fmt: skip
    state = tmp_path_factory.mktemp("mlflow-server")
    pgdata = Path(tempfile.mkdtemp(prefix="mxtrain-pg-", dir="/tmp"))
    port = free_port()
    args = ["infra.mlflow.server", "start", "--dir", str(state), "--port", str(port),
            "--artifacts", "s3://team-mlflow/artifacts", "--pgdata", str(pgdata),
            "--workers", "1"]  # fmt: skip
    started = run_cli(*args, env={**s3, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD})
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield {"uri": f"http://127.0.0.1:{port}", "state": state, "s3": s3}
    finally:
        stopped = run_cli("infra.mlflow.server", "stop", "--dir", str(state))
        shutil.rmtree(pgdata, ignore_errors=True)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr


def test_requests_without_or_with_wrong_credentials_get_401(tracking_server):
    from infra.processes import listening_addresses

    uri = tracking_server["uri"]
    assert _status(uri) == 401
    assert _status(uri, ("admin", "wrong")) == 401
    assert _status(uri, ("admin", ADMIN_PASSWORD)) == 200
    port = int(uri.rsplit(":", 1)[1])
    listening = listening_addresses(port)
    assert listening == {"127.0.0.1"}


def test_a_job_logs_to_it_with_credentials(tracking_server, digits_uri, tmp_path, monkeypatch):
    """A user made by the admin runs the 2-worker job: rank 0's metrics, the model and its
    registration all pass the auth; runs live in PostgreSQL, artifacts in the bucket."""
    import boto3
    import psycopg
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    from pipeline.launch import run_job

    uri = tracking_server["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    AuthServiceClient(uri).create_user("trainer", "trainer-password-1")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trainer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "trainer-password-1")
    cfg = load_job_config(
        "digits-fcn",
        [
            f"data.uri={digits_uri}",
            f"storage.path={tmp_path / 'runs'}",
            "optim.epochs=1",
            "optim.warmup_epochs=0",
        ],
    )
    result = run_job(cfg, progress=lambda _msg: None)

    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mxtrain.world_size"] == "2"
    assert client.get_metric_history(result.run_id, "train_loss")  # logged by rank 0
    assert result.registration is not None
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server

    s3 = tracking_server["s3"]
    objects = boto3.client(
        "s3",
        endpoint_url=s3["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
    ).list_objects_v2(Bucket="team-mlflow", Prefix="artifacts/")
    keys = [o["Key"] for o in objects.get("Contents", [])]
    assert any(k.endswith("/MLmodel") for k in keys), keys[:10]  # the logged model's files

    state = json.loads((tracking_server["state"] / "server.json").read_text())
    password = (tracking_server["state"] / "postgres-password").read_text().strip()
    assert (tracking_server["state"] / "postgres-password").stat().st_mode & 0o077 == 0
    with psycopg.connect(
        host="127.0.0.1", port=state["pgport"], user="mlflow", password=password, dbname="mlflow"
    ) as conn, conn.cursor() as cur:  # fmt: skip
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (result.run_id,))
        assert cur.fetchone() == ("FINISHED",)


def test_a_job_with_a_wrong_password_stops_with_one_line(tracking_server, digits_uri):
    proc = run_cli(
        "jobs.train", "--recipe", "digits-fcn", "--data", digits_uri, "--workers", "1",
        env={"MLFLOW_TRACKING_URI": tracking_server["uri"], "MLFLOW_TRACKING_USERNAME": "admin",
             "MLFLOW_TRACKING_PASSWORD": "wrong"},
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "MLFLOW_TRACKING_PASSWORD" in lines[-1], lines[-3:]
    assert "Traceback" not in proc.stderr


def test_a_password_in_the_tracking_uri_is_shown_nowhere(
    tracking_server, digits_uri, tmp_path, monkeypatch
):
    """``http://user:password@host`` as the tracking URI works (MLflow sends it as basic auth)
    and the password appears in no output line, param, tag or Ray log; with a wrong password
    the one error line does not show it either."""
    import time

    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    uri = tracking_server["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    secret = "uri-password-7f3a"
    AuthServiceClient(uri).create_user("uriuser", secret)
    with_password = uri.replace("http://", f"http://uriuser:{secret}@")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name)

    started = time.time()
    args = ["jobs.train", "--recipe", "digits-fcn", "--data", digits_uri,
            "--storage", str(tmp_path / "runs"), "--set", "optim.epochs=1",
            "--set", "optim.warmup_epochs=0", "--set", "tracking.experiment=uri-test",
            # Its own model: another user registered digits-fcn in this server already.
            "--set", "tracking.model_name=uri-test-model"]  # fmt: skip
    proc = run_cli(*args, "--set", f"tracking.uri={with_password}", env=tracking_server["s3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert secret not in proc.stdout + proc.stderr
    assert "uriuser:***@" in proc.stdout  # the URI is shown, redacted

    client = MlflowClient(uri.replace("http://", f"http://admin:{ADMIN_PASSWORD}@"))
    (run,) = client.search_runs([client.get_experiment_by_name("uri-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == with_password.replace(secret, "***")
    assert all(secret not in v for v in [*run.data.params.values(), *run.data.tags.values()])
    sessions = [p for p in Path("/tmp/ray").glob("session_2*") if p.stat().st_ctime >= started]
    logs = [f for s in sessions for f in (s / "logs").rglob("*") if f.is_file()]
    assert any(f.name.startswith("worker-") for f in logs), sessions  # the job's own logs
    for path in logs:
        assert secret.encode() not in path.read_bytes(), path

    wrong = with_password.replace(secret, "not-the-password-9")
    proc = run_cli(*args, "--set", f"tracking.uri={wrong}", env=tracking_server["s3"])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "not-the-password-9" not in proc.stdout + proc.stderr


def test_no_run_ending_prints_the_tracking_password(tracking_server, capsys):
    """MLflow prints "View run ... at: <URI>" when a run ends against a server, password
    and all; importing pipeline.tracking turns that off for every kind of run: a training
    run FAILED or KILLED, a scoring run, a search's and a variant's run."""
    from pipeline.tracking.client import client_for
    from pipeline.tracking.mlflow_run import end_run
    from pipeline.tracking.predict_run import PredictRun

    uri = tracking_server["uri"].replace("http://", f"http://admin:{ADMIN_PASSWORD}@")
    client = client_for(uri)
    exp = client.create_experiment("run-endings")
    for status in ("FAILED", "KILLED"):  # a training job's driver: end_run
        end_run(uri, client.create_run(exp).info.run_id, status)
    PredictRun(uri, client.create_run(exp).info.run_id).finish({"rows": 1.0}, {"rows": 1})
    PredictRun(uri, client.create_run(exp).info.run_id).fail()
    for status in ("FINISHED", "KILLED"):  # a search's parent and trials, a variant's run
        client.set_terminated(client.create_run(exp).info.run_id, status)
    shown = capsys.readouterr()
    assert ADMIN_PASSWORD not in shown.out + shown.err
    assert "View run" not in shown.out
    ended = client.search_runs([exp], max_results=20)
    assert sorted(r.info.status for r in ended) == sorted(
        ["FAILED", "KILLED", "FINISHED", "FAILED", "FINISHED", "KILLED"]
    )


def test_registering_a_model_another_user_owns_is_one_line(tracking_server, digits_uri):
    """`trainer` registered digits-fcn (test above); `uriuser` may not add versions to it."""
    uri = tracking_server["uri"].replace("http://", "http://uriuser:uri-password-7f3a@")
    proc = run_cli(
        "jobs.train", "--recipe", "digits-fcn", "--data", digits_uri, "--workers", "1",
        "--set", "optim.epochs=1", "--set", "optim.warmup_epochs=0",
        "--set", "tracking.experiment=uri-test", "--set", f"tracking.uri={uri}",
        env=tracking_server["s3"],
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "(403)" in lines[-1], lines[-3:]
    assert "'uriuser'" in lines[-1] and "tracking.model_name" in lines[-1]
    assert "Traceback" not in proc.stderr and "uri-password-7f3a" not in proc.stderr


def test_refuses_a_public_interface(tmp_path):
    proc = run_cli("infra.mlflow.server", "start", "--dir", str(tmp_path), "--host", "0.0.0.0")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --host 0.0.0.0 is not a private interface")
    assert not (tmp_path / "server.json").exists()


def test_first_start_without_an_admin_password_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    proc = run_cli("infra.mlflow.server", "start", "--dir", str(tmp_path / "state"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: set MLFLOW_AUTH_ADMIN_PASSWORD")
    assert not (tmp_path / "state" / "postgres" / "PG_VERSION").exists()  # nothing created
