"""rss_growth: a worker's peak RSS when streaming a data set 8x larger, against 1x.

Both runs are real jobs (local Ray, 2 Horovod workers, ``data.cache=stream``, one epoch);
the job reports the largest peak RSS of its workers (``peak_rss_mb``). Streaming means memory
is bounded by the reader's settings, not by the data set: the target is a ratio <= 1.1.

A reader keeps ``data.read_ahead_mb`` of row groups in flight. The 1x set's shard is 4 row
groups a worker, which the default 64 MB never fills (it holds about 30 of these): compared
at the default, 8x against 1x measures the read-ahead filling up, which the setting bounds,
not growth with the data. So the judged pair runs both sides at a read-ahead the 1x shard
fills (8 MB: 3 row groups); the note gives the pair at the default as well.
"""

from __future__ import annotations

from pathlib import Path

from jobs.benchmarks.harness import Figure, ratio_figure

#: A read-ahead the 1x shard fills (see the module's docstring).
FILLED_READ_AHEAD_MB = 8


def rss_figure(
    small_uri: str, large_uri: str, small_rows: int, tmp: Path, note_where: str
) -> Figure:
    from pipeline.config import load_job_config
    from pipeline.data.ingest import READ_AHEAD_MB
    from pipeline.launch import run_job

    def peak(uri: str, read_ahead_mb: float) -> float:
        cfg = load_job_config(
            "digits-fcn",
            [
                f"data.uri={uri}",
                "data.cache=stream",
                f"data.read_ahead_mb={read_ahead_mb}",
                "data.batch_size=256",
                "optim.epochs=1",
                "optim.warmup_epochs=0",
                f"storage.path={tmp / 'rss-runs'}",
                f"tracking.uri=sqlite:///{tmp / 'rss.db'}",
                "tracking.register=false",
            ],
        )
        return run_job(cfg, progress=lambda _m: None).metrics["peak_rss_mb"]

    small, large = (peak(uri, FILLED_READ_AHEAD_MB) for uri in (small_uri, large_uri))
    default_small, default_large = (peak(uri, READ_AHEAD_MB) for uri in (small_uri, large_uri))
    return ratio_figure(
        "rss_growth",
        large,
        small,
        "<= 1.1",
        "MB",
        f"largest worker peak RSS, {small_rows:,} vs {8 * small_rows:,} rows streamed from "
        f"{note_where}, data.read_ahead_mb={FILLED_READ_AHEAD_MB} (the 1x shard, 4 row "
        f"groups a worker, fills it); at the default {READ_AHEAD_MB} MB, which only the 8x "
        f"fills: {default_large:,.0f} vs {default_small:,.0f} MB "
        f"({default_large / default_small:.3f}); one job each (memory, not time)",
    )
