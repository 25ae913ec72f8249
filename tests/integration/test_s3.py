"""Parquet on object storage for real: SeaweedFS with authentication on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config import load_job_config
from pipeline.data.contract import inspect_dataset
from pipeline.errors import StorageUnavailableError
from pipeline.launch import run_job
from pipeline.train import trace
from tests.conftest import RECIPE_TARGETS, REPO, list_keys, run_cli
from tests.faults import FlakyProxy
from tests.jobs import checkpoints, wait_for

pytestmark = pytest.mark.integration


def _prepare(uri: str, env: dict) -> None:
    proc = run_cli("jobs.prepare_data", "--out", uri, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr


def test_train_from_s3_with_outputs_in_the_bucket(s3_env, tmp_path):
    bucket, env = s3_env
    data = f"s3://{bucket}/digits"
    _prepare(data, env)
    assert f"digits/{'_manifest.json'}" in list_keys(bucket, "digits/")

    started = time.time()
    # botocore at DEBUG for the whole job: the secret must appear nowhere.
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    botocore_log = logging.getLogger("botocore")
    botocore_log.addHandler(handler)
    old_level = botocore_log.level
    botocore_log.setLevel(logging.DEBUG)
    try:
        cfg = load_job_config(
            "digits-cnn",
            [
                f"data.uri={data}",
                f"storage.path=s3://{bucket}/runs",
                f"tracking.artifact_uri=s3://{bucket}/mlflow",
                "tracking.experiment=s3-test",
            ],
        )
        result = run_job(cfg, progress=lambda _msg: None)
    finally:
        botocore_log.removeHandler(handler)
        botocore_log.setLevel(old_level)

    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] >= RECIPE_TARGETS["digits-cnn"][1]
    assert run.data.tags["mxtrain.data_uri"] == data
    assert run.data.params["scaling.num_workers"] == "2"

    checkpoints = list_keys(bucket, "runs/")
    assert any("/checkpoint_" in k and k.endswith("model-0000.params") for k in checkpoints)
    artifacts = list_keys(bucket, "mlflow/")
    assert any(k.endswith("MLmodel") for k in artifacts)
    assert any(k.endswith("model-0000.params") for k in artifacts)
    assert run.info.artifact_uri.startswith(f"s3://{bucket}/mlflow")

    secret = env["AWS_SECRET_ACCESS_KEY"]
    debug_text = captured.getvalue()
    assert "Authorization" in debug_text or "Signature" in debug_text  # the logging was on
    assert secret not in debug_text
    assert all(secret not in v for v in run.data.params.values())
    assert all(secret not in v for v in run.data.tags.values())
    # The job's own Ray session (started after this test began): its logs must exist and hold
    # the workers' output, or the check below would pass by checking nothing.
    sessions = [p for p in Path("/tmp/ray").glob("session_2*") if p.stat().st_ctime >= started]
    logs = [f for s in sessions for f in (s / "logs").rglob("*") if f.is_file()]
    worker_out = [f for f in logs if f.name.startswith("worker-") and f.suffix == ".out"]
    assert any(b"epoch" in f.read_bytes() for f in worker_out), sessions
    for path in logs:
        if path.stat().st_size < 50_000_000:
            assert secret.encode() not in path.read_bytes(), path


def test_wrong_secret_fails_fast_with_one_line(s3_env, tmp_path):
    bucket, env = s3_env
    _prepare(f"s3://{bucket}/digits", env)
    proc = run_cli(
        "jobs.train",
        "--data",
        f"s3://{bucket}/digits",
        env={**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "access denied" in lines[0] and bucket in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "not-the-secret" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("what", ["missing bucket", "missing prefix", "unreachable endpoint"])
def test_storage_failures_name_the_fix(s3_env, what):
    bucket, env = s3_env
    uri = f"s3://{bucket}/nothing-here"
    if what == "missing bucket":
        uri, needle = "s3://no-such-bucket-x/digits", "does not exist"
    elif what == "missing prefix":
        needle = "no Parquet files under train/"
    else:
        env = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # discard port: nothing there
        needle = "cannot reach"
    proc = run_cli("jobs.train", "--data", uri, "--set", "s3.max_attempts=2", env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert MlflowClient().search_experiments(filter_string="name = 'mxtrain'") == []


def test_transient_faults_are_retried_and_rows_stay_exact(s3_env, seaweedfs, tmp_path, monkeypatch):
    bucket, env = s3_env
    data = f"s3://{bucket}/digits"
    _prepare(data, env)
    proxy = FlakyProxy(seaweedfs.s3_port, reset_first=3, slow_down_every=4)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv(trace.ENV, str(tmp_path / "trace"))
    try:
        cfg = load_job_config(
            "digits-cnn",
            [
                f"data.uri={data}",
                "data.cache=stream",  # every epoch's reads go through the proxy, from workers
                "optim.epochs=2",
                "optim.warmup_epochs=0",
                f"storage.path={tmp_path / 'runs'}",
            ],
        )
        result = run_job(cfg, progress=lambda _msg: None)
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint)
    assert proxy.resets == 3 and proxy.slow_downs >= 1, (proxy.resets, proxy.slow_downs)
    assert MlflowClient().get_run(result.run_id).info.status == "FINISHED"

    info = inspect_dataset(data)
    rows = info.splits["train"].rows
    records = trace.read_steps(tmp_path / "trace")
    for epoch in range(2):
        ids = [i for r in records if r["epoch"] == epoch for i in r["ids"]]
        assert len(ids) == rows and len(set(ids)) == rows


def test_read_only_credentials_are_refused_before_any_run(s3_env, tmp_path):
    """Listing passes with read-only credentials; the probe write in preflight does not."""
    bucket, env = s3_env
    data = f"s3://{bucket}/digits"
    _prepare(data, env)
    identities = json.loads((REPO / "infra/local/s3-identities.json").read_text())
    readonly = next(i for i in identities["identities"] if i["name"] == "mxtrain-readonly")
    creds = readonly["credentials"][0]
    env = {
        **env,
        "AWS_ACCESS_KEY_ID": creds["accessKey"],
        "AWS_SECRET_ACCESS_KEY": creds["secretKey"],
    }
    proc = run_cli("jobs.train", "--data", data, "--storage", f"s3://{bucket}/runs", env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "may read bucket" in lines[0] and "not write" in lines[0], lines
    assert MlflowClient().search_experiments(filter_string="name = 'mxtrain'") == []
    assert list_keys(bucket, "runs/") == []


def test_storage_gone_mid_run_is_reported_as_unavailable_not_as_a_bad_file(
    s3_env, seaweedfs, tmp_path, monkeypatch
):
    """S3 goes away after the first checkpoint. The workers' reads fail after the client's
    retries; Ray Train may retry that (the store may come back), and the last line says the
    storage did not answer, not that the file should be replaced."""
    bucket, env = s3_env
    data = f"s3://{bucket}/digits"
    _prepare(data, env)
    proxy = FlakyProxy(seaweedfs.s3_port, reset_first=0, slow_down_every=0)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    runs = tmp_path / "runs"

    def outage_after_first_checkpoint() -> None:
        with contextlib.suppress(AssertionError):  # none in time: the outage starts anyway
            wait_for(lambda: checkpoints(runs), "complete checkpoint")
        proxy.go_down()

    watcher = threading.Thread(target=outage_after_first_checkpoint, daemon=True)
    watcher.start()
    cfg = load_job_config(
        "digits-fcn",
        [
            f"data.uri={data}",
            "data.cache=stream",
            "optim.epochs=3",
            "checkpoint.every_steps=5",
            "s3.max_attempts=2",
            "scaling.max_failures=1",
            f"storage.path={runs}",
        ],
    )
    try:
        with pytest.raises(StorageUnavailableError) as err:
            run_job(cfg, progress=lambda _msg: None)
    finally:
        watcher.join(timeout=5)
        proxy.close()
    message = str(err.value)
    assert "storage did not answer after retries" in message and "replace" not in message
    assert f"s3://{bucket}/digits/" in message
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("mxtrain").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["mxtrain.attempts"] == "2"  # retried once: it is not the data's fault


def _two_checkpoints_in_bucket(hvd, bucket: str, local, tamper) -> tuple:
    """An older and a newest checkpoint of one run, the newest changed by ``tamper(folder)``
    before both are uploaded to ``s3://bucket/runs/job-1``. Returns (location, digest of the
    weights in the older one)."""
    import pyarrow.fs as pafs

    from pipeline.storage import resolve
    from tests.conftest import one_rank_task
    from tests.unit.test_checkpoint import NEWEST, OLDER, _digest, _write

    task = one_rank_task(hvd, "digits-cnn", seed=0)
    _write(task, local / OLDER, next_epoch=1)
    expected = _digest(task)
    _write(task, local / NEWEST, next_epoch=2)
    tamper(local / NEWEST)
    loc = resolve(f"s3://{bucket}/runs/job-1")
    for name in (OLDER, NEWEST):
        pafs.copy_files(str(local / name), loc.join(name), destination_filesystem=loc.filesystem)
    return loc, expected


def test_resume_reads_checkpoints_from_the_bucket_and_skips_a_corrupt_one(hvd, s3_env, tmp_path):
    """The workers' own checkpoint search on object storage: list, download, verify, fall
    back past a corrupt newest one."""
    from pipeline.train import checkpoint
    from tests.unit.test_checkpoint import NEWEST, OLDER, _digest, _resume_fresh

    def torn_upload(folder) -> None:
        params = folder / checkpoint.PARAMS
        params.write_bytes(params.read_bytes()[:-16] + b"\0" * 16)

    bucket, _ = s3_env
    loc, expected = _two_checkpoints_in_bucket(hvd, bucket, tmp_path, torn_upload)

    fresh, state, warnings = _resume_fresh(hvd, loc.filesystem, loc.path)
    assert state is not None and state["next_epoch"] == 1
    assert state["checkpoint"].endswith(OLDER)
    assert _digest(fresh) == expected
    assert len(warnings) == 1 and NEWEST in warnings[0]


def test_a_planted_key_writes_nothing_outside_and_resume_falls_back(
    hvd, s3_env, tmp_path, monkeypatch
):
    """Someone with write access to the bucket names ``../escaped.bin`` in the newest
    checkpoint's manifest and puts that object where the name points: the download writes
    nothing outside its temporary folder, and the run resumes from the checkpoint before.
    (SeaweedFS refuses keys that hold ``..``, which AWS S3 accepts; test_checkpoint.py plants
    such a key in a filesystem that keeps it.)"""
    import boto3

    from tests.unit.test_checkpoint import (
        NEWEST,
        _downloads_nested_in,
        _name_in_manifest,
        _resume_fresh,
    )

    bucket, _ = s3_env
    payload = b"written where a key pointed"
    sha256 = hashlib.sha256(payload).hexdigest()
    loc, _ = _two_checkpoints_in_bucket(
        hvd,
        bucket,
        tmp_path / "local",
        lambda folder: _name_in_manifest(folder, "../escaped.bin", sha256),
    )
    key = "runs/job-1/escaped.bin"  # where checkpoint_.../../escaped.bin points
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=payload)

    _downloads_nested_in(tmp_path, monkeypatch)
    _, state, warnings = _resume_fresh(hvd, loc.filesystem, loc.path)
    assert state is not None and state["next_epoch"] == 1
    assert len(warnings) == 1 and NEWEST in warnings[0]
    assert list(tmp_path.rglob("escaped.bin")) == []
    assert not Path("/escaped.bin").exists()


def test_seaweedfs_own_ports_refuse_requests_that_bypass_s3_auth(s3_env, seaweedfs):
    """The filer's HTTP port serves every bucket's files without S3 signatures; with the keys
    of security.toml (readable by its owner only) it refuses unsigned reads, lists and writes."""
    import re
    import urllib.error
    import urllib.request

    import boto3
    import psutil

    bucket, _ = s3_env
    boto3.client("s3").put_object(Bucket=bucket, Key="x/secret.txt", Body=b"private")
    cmdline = " ".join(psutil.Process(seaweedfs.pid).cmdline())
    filer = re.search(r"-filer\.port=(\d+)", cmdline).group(1)
    base = f"http://127.0.0.1:{filer}/buckets/{bucket}/x/"
    for request in (
        urllib.request.Request(base),
        urllib.request.Request(f"{base}secret.txt"),
        urllib.request.Request(f"{base}planted.txt", data=b"evil", method="PUT"),
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401, request.full_url
    assert (seaweedfs.directory / "security.toml").stat().st_mode & 0o077 == 0


def test_make_object_store_starts_a_distant_s3_in_a_relative_folder_and_stops_it(tmp_path):
    """`make object-store LATENCY_MS=30`'s command, as the Makefile runs it (a folder relative
    to the working directory), answers through the proxy and stops whole."""
    import boto3

    from infra.local.seaweedfs import local_credentials
    from infra.processes import free_port

    port = free_port()
    cli = [sys.executable, "-m", "infra.local.seaweedfs"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--dir", "store", "--s3-port", str(port), "--bucket", "relative", "--latency-ms", "30"]
    bad = subprocess.run(
        [*cli, "start", *args[:4], "--bucket", "b"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=180,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.strip().startswith("error: ") and "3-63 lowercase letters" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    started = subprocess.run(
        [*cli, "start", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "as a distant S3 (30 ms a request" in started.stdout
        access, secret = local_credentials()
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=access,
            aws_secret_access_key=secret,
        )
        s3.put_object(Bucket="relative", Key="k", Body=b"x")
        assert s3.get_object(Bucket="relative", Key="k")["Body"].read() == b"x"
    finally:
        stopped = subprocess.run(
            [*cli, "stop", "--dir", "store"], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
    assert stopped.returncode == 0 and "object store stopped" in stopped.stdout
    assert not (tmp_path / "store" / "weed.pid").exists()
