"""Where each rank's epoch went, so a straggler shows: per rank, samples/s, the share of the
epoch spent waiting for the reader's next batch, the share spent waiting for MXNet's engine
(the throttle reading a step's loss a few steps back: that step's compute and its
allreduce, which waits for the slowest rank), and the mean step time.

Measured with the clock only (no host sync of its own: the engine wait is the throttle's,
which the loop has anyway) and gathered once per epoch (one allgather of a few numbers per
rank). Rank 0 logs them as ``rank/<r>/<name>`` and names the slowest rank and why in the
run's description (:func:`pipeline.tracking.summary.slowest_line`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

from pipeline.tracking.names import RANK_PREFIX as PREFIX
from pipeline.tracking.names import SLOWEST_RANK as SLOWEST

T = TypeVar("T")

#: What is logged per rank, in the gathered row's order (then the node's index).
FIELDS = ("samples_per_sec", "data_wait_share", "engine_wait_share", "step_ms")


class DataClock:
    """Seconds the loop spent waiting for its next batch (``timed(batches)``)."""

    def __init__(self) -> None:
        self.waited = 0.0

    def timed(self, items: Iterable[T]) -> Iterator[T]:
        it = iter(items)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.waited += time.perf_counter() - start
            yield item


def gather(
    hvd,
    samples: int,
    seconds: float,
    data_wait: float,
    engine_wait: float,
    steps: int,
    node: int,
    name: str,
) -> dict[str, float]:
    """Every rank's figures of this epoch (an allgather: every rank calls it), as metrics."""
    import mxnet as mx

    seconds = max(seconds, 1e-9)
    row = [
        samples / seconds,
        data_wait / seconds,
        engine_wait / seconds,
        1000 * seconds / max(1, steps),
        float(node),
    ]
    table = hvd.allgather(mx.nd.array([row], dtype="float64"), name=name).asnumpy()
    return rank_metrics(table)


def rank_metrics(table: np.ndarray) -> dict[str, float]:
    """(world, len(FIELDS) + 1) gathered rows -> ``rank/<r>/<field>`` metrics, the node of
    each (``rank/<r>/node``) and the slowest rank."""
    metrics: dict[str, float] = {}
    for rank, row in enumerate(table):
        for field, value in zip(FIELDS, row, strict=False):
            metrics[f"{PREFIX}{rank}/{field}"] = float(value)
        metrics[f"{PREFIX}{rank}/node"] = float(row[len(FIELDS)])
    metrics[SLOWEST] = float(int(np.argmin(table[:, 0])))
    return metrics
