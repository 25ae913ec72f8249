"""Running benchmark workers in processes of their own: under ``horovodrun`` (Gloo, this
machine) or plain, and reading the one JSON line each prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def horovodrun(np_: int, module: str, *args: str, timeout: int = 600) -> tuple[str, float]:
    """(stdout, launch unix time) of ``module`` run by ``horovodrun -np np_ --gloo``.

    Horovod runs with the cycle time our jobs give it (``scaling.horovod_cycle_ms``), not
    its 1 ms default: on shared cores the default's messages cost the bare scripts as much
    CPU as they cost our workers (docs/performance.md), so every baseline gets the setting."""
    from pipeline.config import load_job_config

    cycle_ms = load_job_config(None, []).scaling.horovod_cycle_ms
    horovodrun = str(Path(sys.executable).with_name("horovodrun"))
    start = time.time()
    proc = subprocess.run(
        [
            horovodrun,
            "-np",
            str(np_),
            "-H",
            f"localhost:{np_}",
            "--gloo",
            "--cycle-time-ms",
            f"{cycle_ms:g}",
            sys.executable,
            "-X",
            "faulthandler",  # a crashing rank prints its Python stack
            "-m",
            module,
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        crash = [
            ln for ln in proc.stderr.splitlines() if "Fatal Python error" in ln or "File " in ln
        ]
        raise RuntimeError(
            f"horovodrun {module} failed: {proc.stderr[-2000:]}\n" + "\n".join(crash[:40])
        )
    return proc.stdout, start


def json_line(stdout: str, tag: str) -> dict:
    for line in stdout.splitlines():
        if tag in line:
            return json.loads(line.split(tag, 1)[1])
    raise RuntimeError(f"no {tag} line in: {stdout[-2000:]}")


def python(module: str, *args: str, env: dict | None = None, timeout: int = 900) -> str:
    """stdout of ``python -m module args`` (this interpreter, the repository as cwd)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def jobs_train(
    uri: str, recipe: str, tmp: Path, sets: list[str], env: dict[str, str] | None = None
) -> tuple[float, float]:
    """(launch, exit) unix times of ``python -m jobs.train`` with 2 workers, as a user runs
    it, with ``--set`` overrides; its MLflow store is a sqlite file in ``tmp``."""
    overrides = [a for s in sets for a in ("--set", s)]
    command = [
        sys.executable, "-m", "jobs.train", "--recipe", recipe, "--data", uri, "--workers", "2",
        "--storage", str(tmp / "runs"), *overrides,
    ]  # fmt: skip
    start = time.time()
    proc = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={
            **(env if env is not None else os.environ),
            "PYTHONWARNINGS": "ignore",
            "MLFLOW_TRACKING_URI": tracking_store(tmp),
        },
    )
    if proc.returncode != 0:
        raise RuntimeError(f"jobs.train failed: {proc.stderr[-2000:]}")
    return start, time.time()


def tracking_store(tmp: Path) -> str:
    """The MLflow store of the jobs that :func:`jobs_train` runs in ``tmp``."""
    return f"sqlite:///{tmp / 'jobs-train.db'}"
