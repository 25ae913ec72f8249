"""Ray Train's DataParallelTrainer without the set-up a job that reads its own Parquet, on a
Ray of its own, never uses.

Ray Train v2 starts, for every run, on the way to the first step:

* Ray Data's set-up, datasets or not: a ``DatasetManager`` actor (one more Ray worker
  process, which imports ``ray.data``) and a copy of the driver's ``DataContext`` sent to
  every worker before the train function starts, whose unpickling imports ``ray.data``
  there too. Our workers read their shards themselves (pipeline/data/ingest.py) and never
  call ``ray.train.get_dataset_shard``.
* a detached ``PlacementGroupCleaner`` actor (one more process) that frees the run's
  placement group if the controller dies ungracefully, so that a long-lived cluster gets its
  CPUs back. A local Ray that the job started (pipeline/distributed/ray_runtime.py) ends with
  the job, placement groups and all; on a cluster, or a Ray that a search or a notebook
  owns, the cleaner stays.

On 2 cores each is CPU taken from the processes starting the same job (make bench, startup).
"""

from __future__ import annotations

from typing import Any

from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import (
    PlacementGroupCleanerCallback,
)
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer


class OwnDataTrainer(DataParallelTrainer):
    """A DataParallelTrainer for train functions that read their own data. Given no
    ``datasets`` it leaves out Ray Train's Ray Data set-up; with ``ray_ends_with_job`` (the
    job started this Ray and shuts it down) also the placement-group cleaner."""

    def __init__(self, *args: Any, ray_ends_with_job: bool = False, **kwargs: Any):
        self._ray_ends_with_job = ray_ends_with_job
        super().__init__(*args, **kwargs)

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        unused: tuple[type, ...] = () if self.datasets else (DatasetsCallback,)
        if self._ray_ends_with_job:
            unused = (*unused, PlacementGroupCleanerCallback)
        return [cb for cb in callbacks if not isinstance(cb, unused)]
