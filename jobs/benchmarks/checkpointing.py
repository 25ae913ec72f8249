"""checkpoint_stall: seconds of training lost per mid-epoch checkpoint.

Real jobs (local Ray, 2 workers, our backend and reader, sqlite MLflow), run in pairs in
alternation: the same job with ``checkpoint.every_steps`` and without. Each job's training time
is its samples over its ``samples_per_sec`` (the loop's epoch clocks, which include the
mid-epoch checkpoints and exclude evaluation); the loss per checkpoint of a pair is the
difference over the number of mid-epoch checkpoints. The figure is the median over the pairs,
with their spread.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from jobs.benchmarks.harness import Figure
from pipeline.config import load_job_config


def _train_seconds(uri: str, recipe: str, epochs: int, every: int, tmp: Path) -> tuple[float, int]:
    """(training seconds, steps per epoch per worker) of one job."""
    from pipeline.launch import run_job

    cfg = load_job_config(
        recipe,
        [
            f"data.uri={uri}",
            f"storage.path={tmp / 'runs'}",
            f"tracking.uri=sqlite:///{tmp / 'checkpoint-stall.db'}",
            "tracking.register=false",
            f"optim.epochs={epochs}",
            f"checkpoint.every_steps={every}",
        ],
    )
    result = run_job(cfg, progress=lambda _msg: None)
    rows = _train_rows(uri)
    per_worker = -(-rows // cfg.scaling.num_workers)
    steps = -(-per_worker // cfg.data.batch_size)
    return epochs * rows / result.metrics["samples_per_sec"], steps


def _train_rows(uri: str) -> int:
    from pipeline.data.contract import inspect_dataset

    return inspect_dataset(uri, splits=("train",)).splits["train"].rows


def checkpoint_stall_figure(
    uri: str, recipe: str, epochs: int, every: int, reps: int, tmp: Path
) -> Figure:
    losses = []
    checkpoints = 0
    for _ in range(reps):
        with_seconds, steps = _train_seconds(uri, recipe, epochs, every, tmp)
        without_seconds, _ = _train_seconds(uri, recipe, epochs, 0, tmp)
        # Mid-epoch checkpoints only: at steps every, 2*every, ... short of the epoch's end.
        checkpoints = epochs * ((steps - 1) // every)
        losses.append((with_seconds - without_seconds) / checkpoints)
    lost = statistics.median(losses)
    return Figure(
        "checkpoint_stall",
        lost,
        None,
        lost,
        "<= 0.1",
        "s/checkpoint",
        f"{recipe}, 2 workers, every_steps={every} ({checkpoints} mid-epoch checkpoints) vs"
        f" none; median of {reps} alternated pairs, spread {min(losses):.3f}..{max(losses):.3f}"
        "; ratio = value",
    )
