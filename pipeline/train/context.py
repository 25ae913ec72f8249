"""What a worker's training code knows about where it runs: :class:`WorkerContext`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import JobConfig
from pipeline.data.contract import DatasetInfo
from pipeline.train.precision import Precision


@dataclass(frozen=True)
class WorkerContext:
    """Runtime state of one Horovod rank, built once by the loop and handed to its task.

    Attributes:
        cfg: the job's configuration.
        info: the data set's shape, classes and splits.
        device: the MXNet context this rank computes on (``mx.cpu()`` or ``mx.gpu(i)``).
        hvd: the ``horovod.mxnet`` module, initialised.
        world: number of ranks.
        rank: this rank (0 is the chief: it logs and checkpoints).
    """

    cfg: JobConfig
    info: DatasetInfo
    device: Any
    hvd: Any
    world: int
    rank: int

    @property
    def precision(self) -> Precision:
        return Precision.from_config(self.cfg)
