"""What a model variant costs and how well it does, measured the same way for every variant:
its weights' size on disk, non-zero parameters, CPU latency per batch (paired with the
float32 model, in the same process), and accuracy on a split of the data."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.config import S3Config
from pipeline.data.contract import DatasetInfo

#: Timed calls per latency figure and side; the sides alternate call by call.
LATENCY_REPS = 40


@dataclass(frozen=True)
class Rows:
    """Feature rows as the model takes them (float32, scaled) and their labels."""

    x: np.ndarray
    y: np.ndarray


def read_split(info: DatasetInfo, split: str, s3: S3Config | None, limit: int = 0) -> Rows:
    """The rows of ``split`` in stored order (the first ``limit`` only, if > 0)."""
    from pipeline.data.ingest import arrow_to_batch, epoch_pieces, open_source

    source = open_source(info, split, memory=False, s3=s3)
    xs, ys, total = [], [], 0
    try:
        pieces = epoch_pieces(info.splits[split], 0, 0, shuffle=False)
        for table in source.read_in_order(pieces):
            batch = arrow_to_batch(table, info.num_features, info.feature_scale)
            xs.append(batch.float_features())
            ys.append(batch.labels)
            total += len(batch)
            if limit and total >= limit:
                break
    finally:
        source.close()
    x, y = np.concatenate(xs), np.concatenate(ys)
    return Rows(x[:limit], y[:limit]) if limit else Rows(x, y)


def predict(net, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Class indices the network gives the rows ``x``."""
    import mxnet as mx

    out = [
        net(mx.nd.array(x[i : i + batch])).asnumpy().argmax(axis=1) for i in range(0, len(x), batch)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(net, rows: Rows) -> float:
    return float(np.mean(predict(net, rows.x) == rows.y))


def _call(net, x) -> Callable[[], None]:
    import mxnet as mx

    data = mx.nd.array(x)

    def run() -> None:
        net(data).wait_to_read()

    return run


def paired_latency(reference, variant, x: np.ndarray, reps: int = LATENCY_REPS) -> tuple:
    """(reference seconds, variant seconds, variant/reference ratio) per call on the batch
    ``x``: medians of ``reps`` calls each, the two sides alternating call by call (which side
    goes first alternates too) after warm-up calls, so drifts of the machine hit both; the
    ratio is the median of the per-pair ratios."""
    sides = (_call(reference, x), _call(variant, x))
    for run in sides * 3:
        run()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(reps):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            start = time.perf_counter()
            sides[side]()
            times[side].append(time.perf_counter() - start)
    ratios = [v / r for r, v in zip(*times, strict=True)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)
