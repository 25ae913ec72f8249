"""mlflow_ui_memory: what `make mlflow-ui` keeps in memory against MLflow's own `mlflow ui`.

MLflow 3's `mlflow ui` starts 4 server workers, a job runner and huey consumers for its GenAI
jobs beside the UI; `make mlflow-ui` starts one server process without the job runner
(Makefile). Both serve the same store on a free loopback port; once /health answers and 20 s
have passed (what starts in the background has started), the private memory (USS) of every
process of the command's process group is summed. Memory, not time: one measurement each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from infra.processes import free_port, group_processes, stop_group, wait_for_http
from jobs.benchmarks.harness import Figure, ratio_figure
from jobs.benchmarks.procs import REPO

SETTLE_S = 20


def _serve_and_measure(command: list[str], store: str, port: int) -> tuple[int, float]:
    """(processes, summed USS in MB) of ``command`` serving ``store`` on ``port``."""
    import psutil

    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", proc)
        time.sleep(SETTLE_S)
        total = 0
        processes = group_processes(proc.pid)
        for process in processes:
            try:
                total += process.memory_full_info().uss
            except psutil.Error:
                continue
        return len(processes), total / 2**20
    finally:
        stop_group(proc.pid, grace_s=20, proc=proc)


def ui_memory_figure(tmp: Path) -> Figure:
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp / 'ui.db'}"
    MlflowClient(store).search_experiments()  # the tables, before either server starts
    port = free_port()
    ours = _serve_and_measure(
        ["make", "--no-print-directory", "mlflow-ui", f"MLFLOW_PORT={port}"], store, port
    )
    port = free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    theirs = _serve_and_measure(
        [mlflow_bin, "ui", "--backend-store-uri", store, "--port", str(port)], store, port
    )
    return ratio_figure(
        "mlflow_ui_memory",
        ours[1],
        theirs[1],
        "<= 0.25",
        "MB",
        f"summed private memory (USS) of the processes serving the UI {SETTLE_S} s after it "
        f"answered: make mlflow-ui {ours[0]} processes (make included) vs MLflow's `mlflow ui` "
        f"with its defaults {theirs[0]}; one measurement each (memory, not time)",
    )
