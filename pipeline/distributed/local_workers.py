"""Ray Train's training workers on a Ray the job started, without a runtime env.

Ray Train gives its workers a runtime env: the ``RAY_TRAIN_*`` variables of its controller's
environment that it passes on, and ours (the early-imports hook's variable). A worker whose
actor has a runtime env starts through Ray's setup_worker, one more Python start and
``import ray`` (about 0.45 s of one core) before the worker proper, on the way to the first
step. On a Ray the job started, every process already has those variables (pipeline/
distributed/ray_runtime.py sets them in the environment the Ray starts with), so the
variables that equal the controller's own are left out; so is the hook's variable, since
the workers begin importing MXNet when Ray constructs them (:class:`RayTrainWorker`).
Whatever else a runtime env holds stays. A cluster keeps Train's own
classes (its processes have none of the job's variables).
"""

from __future__ import annotations

import os
from typing import Any

from ray.train.v2._internal.execution.worker_group import worker as train_worker
from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

from pipeline.distributed import early_imports


class RayTrainWorker(train_worker.RayTrainWorker):
    """Ray Train's worker actor, which starts importing MXNet and Horovod as Ray constructs
    it (early_imports.py), in the gaps of Train's set-up of the worker group. Named as
    Train's: Ray prefixes each line a worker prints with its actor class's name, and users
    read "(RayTrainWorker pid=...)" wherever the job runs."""

    def __init__(self) -> None:
        early_imports.start()
        super().__init__()


class InheritingWorkerGroup(WorkerGroup):
    """Ray Train's worker group, whose workers take from their environment the variables
    that Train would pass them in a runtime env (run in the controller, whose environment
    is the local Ray's), and start their imports without the setup hook's variable."""

    _worker_cls = RayTrainWorker

    @staticmethod
    def _get_worker_runtime_env(custom_runtime_env: Any) -> Any:
        runtime_env = dict(WorkerGroup._get_worker_runtime_env(custom_runtime_env))
        hook = early_imports.runtime_env_vars()
        env_vars = {
            name: value
            for name, value in (runtime_env.pop("env_vars", None) or {}).items()
            if os.environ.get(name) != value and hook.get(name) != value
        }
        return {**runtime_env, **({"env_vars": env_vars} if env_vars else {})}
