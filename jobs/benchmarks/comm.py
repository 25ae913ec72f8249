"""allreduce_bus_bw_<size>: ``hvd.allreduce`` of one float32 tensor between 2 ranks over Gloo
(``horovodrun -np 2 --gloo``); bus bandwidth = 2 (n-1)/n x bytes / time. Baseline: a loopback
memcpy (numpy copy) of the same size in this process. Reported, not judged: they explain the
scaling figure (``allreduce_time`` interpolates them for its model of a step).
"""

from __future__ import annotations

import time

import numpy as np

from jobs.benchmarks.harness import Figure, ratio_figure
from jobs.benchmarks.procs import horovodrun, json_line


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
    stdout, _ = horovodrun(
        2, "jobs.benchmarks.allreduce_worker", ",".join(map(str, sizes)), str(reps)
    )
    seconds = {int(k): v for k, v in json_line(stdout, "ALLREDUCE ").items()}
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


def allreduce_time(seconds: dict[int, float], nbytes: int) -> float:
    """Interpolated (log-log) allreduce time for ``nbytes`` from the measured sizes."""
    sizes = sorted(seconds)
    xs = np.log([s for s in sizes])
    ys = np.log([seconds[s] for s in sizes])
    return float(np.exp(np.interp(np.log(nbytes), xs, ys)))
