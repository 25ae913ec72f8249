"""Figures from whole training jobs (local Ray, 2 workers, our backend and reader, a sqlite
MLflow store), run in pairs in alternation (the side that goes first alternating too) so a
shared machine's drift falls on both sides:

* checkpoint_stall: seconds of training lost per mid-epoch checkpoint. A job with
  ``checkpoint.every_steps`` against the same job without; each job's training time is its
  samples over its ``samples_per_sec`` (the loop's epoch clocks, which include mid-epoch
  checkpoints and exclude evaluation), and a pair's loss is the difference over the number of
  mid-epoch checkpoints.
* tracking_overhead: wall time of the whole job, command to summary (MLflow run, per-epoch
  metrics, sample logging, the model logged and registered, the logger drained at the end),
  against the same job with ``tracking.enabled=false``.

Each figure is the median over the pairs, with their spread in the note.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from jobs.benchmarks.harness import Figure, ratio_figure
from pipeline.config import load_job_config


def run_job_for_bench(uri: str, recipe: str, tmp: Path, overrides: list[str]) -> tuple[float, dict]:
    """(wall seconds, final metrics) of one job."""
    from pipeline.launch import run_job

    cfg = load_job_config(
        recipe,
        [
            f"data.uri={uri}",
            f"storage.path={tmp / 'runs'}",
            f"tracking.uri=sqlite:///{tmp / 'whole-jobs.db'}",
            *overrides,
        ],
    )
    start = time.perf_counter()
    result = run_job(cfg, progress=lambda _msg: None)
    return time.perf_counter() - start, result.metrics


def _steps_per_epoch(uri: str, recipe: str) -> tuple[int, int]:
    """(training rows, steps per epoch per worker) of ``recipe`` on ``uri``."""
    from pipeline.data.contract import inspect_dataset
    from pipeline.data.ingest import steps_per_epoch

    cfg = load_job_config(recipe, [f"data.uri={uri}"])
    rows = inspect_dataset(uri, splits=("train",)).splits["train"].rows
    return rows, steps_per_epoch(rows, cfg.scaling.num_workers, cfg.data.batch_size)


def checkpoint_stall_figure(
    uri: str, recipe: str, epochs: int, every: int, reps: int, tmp: Path
) -> Figure:
    rows, steps = _steps_per_epoch(uri, recipe)
    # Mid-epoch checkpoints only: at steps every, 2*every, ... short of the epoch's end.
    checkpoints = epochs * ((steps - 1) // every)
    common = ["tracking.register=false", f"optim.epochs={epochs}", "optim.warmup_epochs=0"]
    losses = []
    for rep in range(reps):
        metrics = {}
        for steps_ in (every, 0) if rep % 2 == 0 else (0, every):
            overrides = [*common, f"checkpoint.every_steps={steps_}"]
            metrics[steps_] = run_job_for_bench(uri, recipe, tmp, overrides)[1]
        seconds = [epochs * rows / metrics[k]["samples_per_sec"] for k in (every, 0)]
        losses.append((seconds[0] - seconds[1]) / checkpoints)
    lost = statistics.median(losses)
    return Figure(
        "checkpoint_stall",
        lost,
        None,
        lost,
        "<= 0.1",
        "s/checkpoint",
        f"{recipe}, 2 workers, every_steps={every} ({checkpoints} mid-epoch checkpoints) vs"
        f" none; median of {reps} alternated pairs, spread {min(losses):.3f}..{max(losses):.3f}",
    )


def tracking_overhead_figure(uri: str, recipe: str, epochs: int, reps: int, tmp: Path) -> Figure:
    common = [f"optim.epochs={epochs}", "optim.warmup_epochs=0"]
    walls: tuple[list[float], list[float]] = ([], [])
    rates: tuple[list[float], list[float]] = ([], [])
    for rep in range(reps):
        sides = ((0, "true"), (1, "false"))
        for side, enabled in sides if rep % 2 == 0 else sides[::-1]:
            seconds, metrics = run_job_for_bench(
                uri, recipe, tmp, [*common, f"tracking.enabled={enabled}"]
            )
            walls[side].append(seconds)
            rates[side].append(metrics["samples_per_sec"])
    ratios = [a / b for a, b in zip(*walls, strict=True)]
    on, off = statistics.median(walls[0]), statistics.median(walls[1])
    return ratio_figure(
        "tracking_overhead",
        on,
        off,
        "<= 1.01",
        "s/job",
        f"{recipe}, 2 workers, {epochs} epochs, whole job (run, metrics, model logged and"
        f" registered, drain) vs tracking.enabled=false; median of {reps} alternated pairs,"
        f" ratio spread {min(ratios):.3f}..{max(ratios):.3f}; training samples/s"
        f" {statistics.median(rates[0]):,.0f} tracked vs {statistics.median(rates[1]):,.0f}",
    )
