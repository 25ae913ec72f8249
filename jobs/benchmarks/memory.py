"""rss_growth: a worker's peak RSS when streaming a data set 8x larger, against 1x.

Both runs are real jobs (local Ray, 2 Horovod workers, ``data.cache=stream``, one epoch);
the job reports the largest peak RSS of its workers (``peak_rss_mb``). Streaming means memory
must not grow with the data set: the target is a ratio <= 1.1.
"""

from __future__ import annotations

from pathlib import Path

from jobs.benchmarks.harness import Figure, ratio_figure


def rss_figure(
    small_uri: str, large_uri: str, small_rows: int, tmp: Path, note_where: str
) -> Figure:
    from pipeline.config import load_job_config
    from pipeline.launch import run_job

    peaks = []
    for uri in (small_uri, large_uri):
        cfg = load_job_config(
            "digits-fcn",
            [
                f"data.uri={uri}",
                "data.cache=stream",
                "data.batch_size=256",
                "optim.epochs=1",
                "optim.warmup_epochs=0",
                f"storage.path={tmp / 'rss-runs'}",
                f"tracking.uri=sqlite:///{tmp / 'rss.db'}",
                "tracking.register=false",
            ],
        )
        peaks.append(run_job(cfg, progress=lambda _m: None).metrics["peak_rss_mb"])
    return ratio_figure(
        "rss_growth",
        peaks[1],
        peaks[0],
        "<= 1.1",
        "MB",
        f"largest worker peak RSS, {small_rows:,} vs {8 * small_rows:,} rows streamed from "
        f"{note_where}; one job each (memory, not time)",
    )
