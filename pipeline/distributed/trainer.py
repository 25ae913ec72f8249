"""Ray Train's DataParallelTrainer without the set-up a job that reads its own Parquet, on a
Ray of its own, never uses.

Ray Train v2 starts, for every run, on the way to the first step:

* Ray Data's set-up, datasets or not: a ``DatasetManager`` actor (one more Ray worker
  process, which imports ``ray.data``) and a copy of the driver's ``DataContext`` sent to
  every worker before the train function starts, whose unpickling imports ``ray.data``
  there too. Our workers read their shards themselves (pipeline/data/ingest.py) and never
  call ``ray.train.get_dataset_shard``.
* a detached ``PlacementGroupCleaner`` actor (one more process, and its stop at the end)
  that frees the run's placement group if the controller dies ungracefully while its driver
  lives on, so that a long-lived cluster gets its CPUs back. Ray frees a job's placement
  groups itself when the job's driver ends: a local Ray that the job started
  (pipeline/distributed/ray_runtime.py) ends with it, and ``python -m jobs.train`` ends
  when its one training does, on any Ray. Where the driver outlives the training (a
  search's trials, a notebook on a cluster), the cleaner stays.
* an ``_AutoscalingCoordinatorActor`` (one more process, which imports ``ray.data``) to
  which the scaling policy sends the run's resource request, for a cluster autoscaler to
  read; the controller waits for that process to start before it starts the workers. A
  local Ray the job started has no autoscaler: there the policy sends nothing.

On a Ray the job started, the controller also starts without the runtime env Train gives it
(environment variables the job's Ray already has everywhere), and so without Ray's
setup_worker; so do the training workers (local_workers.py).

On 2 cores each is CPU taken from the processes starting the same job (make bench, startup).
"""

from __future__ import annotations

import threading
from typing import Any

import ray
from ray._raylet import RAY_NODE_ID_KEY  # type: ignore[attr-defined]  # a Cython module
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import (
    PlacementGroupCleanerCallback,
)
from ray.train.v2._internal.execution.controller import TrainController
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from pipeline.distributed.local_workers import InheritingWorkerGroup


class NoAutoscalerPolicy(FixedScalingPolicy):
    """Ray Train's fixed-size policy without its resource requests to the autoscaling
    coordinator (on a Ray without an autoscaler nobody reads them). Cancelling, at the end,
    is a no-op for a policy that never sent one."""

    def after_controller_start(self, train_run_context) -> None:
        return None

    def _maybe_send_resource_request(self) -> None:
        return None


class LocalTrainController(TrainController):
    """Ray Train's controller whose workers start without a runtime env (local_workers.py),
    for a Ray the job started."""

    worker_group_cls = InheritingWorkerGroup


class OwnDataTrainer(DataParallelTrainer):
    """A DataParallelTrainer for train functions that read their own data. Given no
    ``datasets`` it leaves out Ray Train's Ray Data set-up; with ``ray_ends_with_job`` (the
    job started this Ray and shuts it down) also the placement-group cleaner and, for a
    fixed number of workers, the autoscaling coordinator, and its controller starts without
    a runtime env of its own; with ``driver_ends_with_job`` (the
    driver process ends when this training does) the placement-group cleaner."""

    def __init__(
        self,
        *args: Any,
        ray_ends_with_job: bool = False,
        driver_ends_with_job: bool = False,
        **kwargs: Any,
    ):
        self._ray_ends_with_job = ray_ends_with_job
        self._driver_ends_with_job = driver_ends_with_job
        super().__init__(*args, **kwargs)

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        unused: tuple[type, ...] = () if self.datasets else (DatasetsCallback,)
        if self._ray_ends_with_job or self._driver_ends_with_job:
            unused = (*unused, PlacementGroupCleanerCallback)
        return [cb for cb in callbacks if not isinstance(cb, unused)]

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any):
        policy = controller_init_kwargs.get("scaling_policy")
        if self._ray_ends_with_job and type(policy) is FixedScalingPolicy:
            controller_init_kwargs["scaling_policy"] = NoAutoscalerPolicy(policy.scaling_config)
        if self._ray_ends_with_job:
            return self._run_controller_without_runtime_env(**controller_init_kwargs)
        return super()._initialize_and_run_controller(**controller_init_kwargs)

    def _run_controller_without_runtime_env(self, **controller_init_kwargs: Any):
        """Ray Train's controller as Ray Train starts it (an actor on the driver's node,
        Ctrl-C handled) but without the runtime env Train gives it, which holds environment
        variables only: Train's own, and those of the driver's that Train passes on. A Ray
        the job started has them all in its processes' environment already
        (pipeline/distributed/ray_runtime.py), and a worker with a runtime env starts through
        Ray's setup_worker, one more Python start before the worker proper; the controller's
        synchronization actor inherits its runtime env, so it starts without one too."""
        node = ray.get_runtime_context().get_node_id()
        actor_class: Any = ray.remote(num_cpus=0, label_selector={RAY_NODE_ID_KEY: node})(
            LocalTrainController
        )
        controller = actor_class.remote(**controller_init_kwargs)
        if threading.current_thread() is threading.main_thread():
            self._register_sigint_handler(controller)
        ray.get(controller.run.remote())
        return ray.get(controller.get_result.remote())
