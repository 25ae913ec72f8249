"""Figures that need several processes: allreduce bandwidth, scaling, start-up.

* allreduce_bus_bw_<size>: ``hvd.allreduce`` of one float32 tensor between 2 ranks over Gloo
  (``horovodrun -np 2 --gloo``); bus bandwidth = 2 (n-1)/n x bytes / time. Baseline: a
  loopback memcpy (numpy copy) of the same size in this process. Reported, not judged.
* scaling_efficiency: 2-rank throughput / (2 x 1-rank throughput) of our training task under
  horovodrun, against the prediction t_compute / (t_compute + t_allreduce(gradient bytes))
  from the measured 1-rank step time and the allreduce time of the model's gradient size.
* startup_vs_horovodrun: seconds from launching ``python -m jobs.train`` (local Ray, 2
  workers) to its first training step, against ``horovodrun -np 2 --gloo`` running the same
  task on the same data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jobs.benchmarks.harness import Figure, ratio_figure

REPO = Path(__file__).resolve().parents[2]


def _horovodrun(np_: int, module: str, *args: str, timeout: int = 600) -> tuple[str, float]:
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


def _json_line(stdout: str, tag: str) -> dict:
    for line in stdout.splitlines():
        if tag in line:
            return json.loads(line.split(tag, 1)[1])
    raise RuntimeError(f"no {tag} line in: {stdout[-2000:]}")


def memcpy_seconds(nbytes: int, reps: int) -> float:
    src = np.ones(max(1, nbytes // 4), dtype=np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def allreduce_figures(sizes: list[int], reps: int) -> tuple[list[Figure], dict[int, float]]:
    stdout, _ = _horovodrun(
        2, "jobs.benchmarks.allreduce_worker", ",".join(map(str, sizes)), str(reps)
    )
    seconds = {int(k): v for k, v in _json_line(stdout, "ALLREDUCE ").items()}
    out = []
    for size in sizes:
        bus = 2 * (2 - 1) / 2 * size / seconds[size] / 1e9
        copy = size / memcpy_seconds(size, reps) / 1e9
        label = f"{size // 1024}KB" if size < 2**20 else f"{size // 2**20}MB"
        out.append(
            ratio_figure(
                f"allreduce_bus_bw_{label}",
                bus,
                copy,
                "",
                "GB/s",
                "2 ranks over Gloo on loopback; baseline: memcpy",
            )
        )
    return out, seconds


def _allreduce_time(seconds: dict[int, float], nbytes: int) -> float:
    """Interpolated (log-log) allreduce time for ``nbytes`` from the measured sizes."""
    sizes = sorted(seconds)
    xs = np.log([s for s in sizes])
    ys = np.log([seconds[s] for s in sizes])
    return float(np.exp(np.interp(np.log(nbytes), xs, ys)))


def scaling_figure(
    uri: str, recipe: str, epochs: int, batch: int, grad_bytes: int, seconds: dict[int, float]
) -> tuple[Figure, dict]:
    one = _json_line(
        _horovodrun(1, "jobs.benchmarks.hvd_train_worker", uri, recipe, str(epochs), str(batch))[0],
        "HVDTRAIN ",
    )
    two = _json_line(
        _horovodrun(2, "jobs.benchmarks.hvd_train_worker", uri, recipe, str(epochs), str(batch))[0],
        "HVDTRAIN ",
    )
    measured = two["samples_per_s"] / (2 * one["samples_per_s"])
    side_by_side = _side_by_side(recipe, batch)
    t_c = one["step_s"]
    t_a = _allreduce_time(seconds, grad_bytes)
    predicted = t_c / (t_c + t_a)
    fig = ratio_figure(
        "scaling_efficiency",
        measured,
        predicted,
        ">= 0.9",
        "efficiency",
        f"{recipe}: 1 rank {one['samples_per_s']:,.0f}, 2 ranks {two['samples_per_s']:,.0f} "
        f"samples/s; predicted from step {t_c * 1e3:.2f} ms + allreduce of "
        f"{grad_bytes / 2**20:.2f} MB {t_a * 1e3:.2f} ms; two bare Gluon loops side by side "
        f"reach {side_by_side:.2f} of 2x one alone (the cores' ceiling)",
    )
    return fig, {"hvd_one": one, "hvd_two": two, "side_by_side": side_by_side}


def _side_by_side(recipe: str, batch: int, steps: int = 300) -> float:
    """The ceiling this machine sets: two bare Gluon loops (no Horovod, no communication at
    all) side by side, against twice one alone. What they lose is the cost of sharing the
    cores."""
    from concurrent.futures import ThreadPoolExecutor

    command = [sys.executable, "-m", "jobs.benchmarks.bare_worker", recipe, str(steps), str(batch)]

    def one_run(_: int = 0) -> float:
        out = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=600, check=True
        ).stdout
        return _json_line(out, "BARE ")["samples_per_s"]

    alone = one_run()
    with ThreadPoolExecutor(2) as pool:
        pair = list(pool.map(one_run, range(2)))
    return sum(pair) / (2 * alone)


def startup_figure(uri: str, recipe: str, tmp: Path) -> Figure:
    trace_dir = tmp / "startup-trace"
    env = {
        **os.environ,
        "MXTRAIN_TRACE_DIR": str(trace_dir),
        "PYTHONWARNINGS": "ignore",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'startup.db'}",
    }
    start = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train",
            "--recipe",
            recipe,
            "--data",
            uri,
            "--workers",
            "2",
            "--storage",
            str(tmp / "startup-runs"),
            "--set",
            "optim.epochs=1",
            "--set",
            "optim.warmup_epochs=0",
            "--set",
            "tracking.register=false",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"jobs.train failed: {proc.stderr[-2000:]}")
    from pipeline.train import trace

    ray_first = min(e["t"] for e in trace.read_events(trace_dir) if e["event"] == "first_step")
    stdout, hvd_start = _horovodrun(2, "jobs.benchmarks.hvd_train_worker", uri, recipe, "1", "64")
    hvd_first = _json_line(stdout, "HVDTRAIN ")["first_step_unix"]
    return ratio_figure(
        "startup_vs_horovodrun",
        ray_first - start,
        hvd_first - hvd_start,
        "<= 1.5",
        "s",
        "launch to first step; ours checks the data, opens the MLflow run, starts Ray and "
        f"Ray Train's controller and workers first; ray.init + one task alone: "
        f"{_ray_floor():.1f} s",
    )


def _ray_floor() -> float:
    """Seconds for a fresh process to start a local Ray and run one task: what any job on a
    local Ray pays before its own work."""
    code = (
        "import time, logging; t = time.time(); import ray; "
        "ray.init(num_cpus=2, include_dashboard=True, dashboard_host='127.0.0.1', "
        "logging_level=logging.ERROR); ray.get(ray.remote(lambda: 1).remote()); "
        "print('RAYFLOOR', time.time() - t); ray.shutdown()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    ).stdout
    return float(out.split("RAYFLOOR", 1)[1].split()[0])
