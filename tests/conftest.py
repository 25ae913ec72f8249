"""Shared fixtures. Real parts only: a real Parquet data set, a real sqlite MLflow store in
tmp_path, and (in integration tests) a real Ray with real Horovod workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _mlflow_in_tmp(tmp_path, monkeypatch):
    """Every test gets its own MLflow store; nothing touches the repo's mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="session")
def digits_uri(tmp_path_factory) -> str:
    """The digits data set, prepared once per session by the real prepare_data job."""
    from pipeline.data.prepare import load_digits_splits, write_dataset

    out = tmp_path_factory.mktemp("data") / "digits"
    splits, shape, classes = load_digits_splits(seed=0)
    write_dataset(str(out), splits, shape, classes, rows_per_file=128, row_group_size=64)
    return str(out)


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
