"""Shared fixtures. Real parts only: a real Parquet data set, a real sqlite MLflow store in
tmp_path, and (in integration tests) a real Ray with real Horovod workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: What each recipe, run as shipped, promises: (metric, lowest value). The recipe files' "Target:"
#: lines and the README's recipe table say the same (tests/unit/test_recipe_targets.py checks).
RECIPE_TARGETS = {
    "digits-fcn": ("test_accuracy", 0.97),
    "digits-cnn": ("test_accuracy", 0.98),
    "digits-rnn": ("test_accuracy", 0.95),
    "digits-attention": ("test_accuracy", 0.95),
    "digits-gan": ("generated_accuracy", 0.80),
    "fashion-mlp": ("test_accuracy", 0.89),
    "fashion-cnn": ("test_accuracy", 0.93),
}


_TEMPLATE: list[Path] = []


def fresh_mlflow_store(directory: Path) -> str:
    """A new MLflow sqlite store in ``directory``: a copy of one made (migrated) once per
    session, because creating the tables costs every new store about 1.5 s. Returns its URI."""
    if not _TEMPLATE:
        import tempfile

        from mlflow import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()  # creates the tables
        _TEMPLATE.append(template)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE[0], directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _mlflow_in_tmp(tmp_path, monkeypatch):
    """Every test gets its own MLflow store; nothing touches the repo's mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_mlflow_store(tmp_path / "mlflow-store"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _remove_mlflow_template():
    yield
    for template in _TEMPLATE:
        shutil.rmtree(template.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def digits_uri(tmp_path_factory) -> str:
    """The digits data set, prepared once per session by the real prepare_data job."""
    from pipeline.data.datasets import load_digits_splits
    from pipeline.data.prepare import write_dataset

    out = tmp_path_factory.mktemp("data") / "digits"
    write_dataset(str(out), load_digits_splits(seed=0), rows_per_file=128, row_group_size=64)
    return str(out)


@pytest.fixture(scope="session")
def hvd():
    """``horovod.mxnet``, initialised in this process: Horovod's single-rank mode."""
    import horovod.mxnet as hvd

    hvd.init()
    return hvd


def one_rank_task(hvd, recipe: str, seed: int, overrides: list[str] | None = None):
    """The recipe's task as one rank builds it (batches of 16 8x8 images, 10 classes)."""
    import mxnet as mx

    from pipeline.config import load_job_config
    from pipeline.data.contract import DatasetInfo, SplitInfo
    from pipeline.train.context import WorkerContext
    from pipeline.train.tasks import make_task

    cfg = load_job_config(recipe, ["data.batch_size=16", *(overrides or [])])
    info = DatasetInfo("memory://", (1, 8, 8), 10, {"train": SplitInfo((), 64)})
    mx.random.seed(seed)
    return make_task(WorkerContext(cfg, info, mx.cpu(), hvd, 1, 0))


def random_batches(n: int, seed: int) -> list:
    """``n`` batches of 16 random rows with random labels, for one_rank_task."""
    import numpy as np

    from pipeline.data.ingest import Batch

    rng = np.random.default_rng(seed)
    return [
        Batch(
            rng.random((16, 64), dtype=np.float32),
            rng.integers(0, 10, 16, dtype=np.int64),
            np.arange(16, dtype=np.int64),
        )
        for _ in range(n)
    ]


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` from the repo root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real S3 server (SeaweedFS) with authentication on free loopback ports, for the
    session; stopped by process group at the end."""
    from infra.local.seaweedfs import start

    server = start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(seaweedfs, monkeypatch):
    """A fresh bucket and the AWS environment that reaches it. Returns (bucket, env)."""
    import uuid

    import boto3

    from infra.local.seaweedfs import local_credentials

    access, secret = local_credentials()
    env = {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": seaweedfs.endpoint,
        "AWS_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # run_job sets it in-process for MLflow's S3 store; set here, it is undone after the test.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", seaweedfs.endpoint)
    for key in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(key, raising=False)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=seaweedfs.endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return bucket, env


def list_keys(bucket: str, prefix: str = "") -> list[str]:
    import boto3

    client = boto3.client("s3")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


@pytest.fixture(scope="session")
def fashion_uri(tmp_path_factory) -> str:
    """Fashion-MNIST from Debian's package (`make test` installs it), prepared once per
    session by the real loader and writer."""
    from pipeline.data.datasets import load_fashion_mnist
    from pipeline.data.prepare import write_dataset

    out = tmp_path_factory.mktemp("data") / "fashion-mnist"
    write_dataset(str(out), load_fashion_mnist(), rows_per_file=5000, row_group_size=500)
    return str(out)


# The test process ends without the interpreter's finalization. In-process, the tests leave
# MXNet's threaded engine, Horovod's single-rank background thread (the hvd fixture) and Ray's
# driver core behind; their C++ singletons are destroyed in no fixed order at exit, and that
# order sometimes crashes (a segmentation fault after "509 passed", make's exit 2: CI, stop 40).
# Everything pytest writes (the summary, its cache, session fixtures' teardown) is done by the
# time pytest_unconfigure runs; only the native teardown is skipped. Job processes, which the
# tests run as users do, exit normally and their exit codes are asserted.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if not _EXIT_STATUS:
        return  # the session never ran (a usage error): pytest's own exit
    if "mxnet" in sys.modules:
        sys.modules["mxnet"].nd.waitall()  # nothing queued in the engine is lost
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])
