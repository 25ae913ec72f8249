"""A local Ray started by a job (pipeline/distributed/ray_runtime.py): its processes get the
job's variables from the environment they start with, and Ray Train's controller starts
without a runtime env (pipeline/distributed/trainer.py), nor do its training workers
(pipeline/distributed/local_workers.py)."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.integration


def test_a_local_rays_processes_inherit_the_job_env_and_trains_controller_has_no_runtime_env(
    monkeypatch, tmp_path
):
    import ray
    import ray.train
    from ray.util.state import list_tasks

    from pipeline.distributed.ray_runtime import ray_runtime
    from pipeline.distributed.trainer import OwnDataTrainer

    for name in ("RAY_ADDRESS", "MIMALLOC_PURGE_DELAY", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")  # the user's value wins
    seen = tmp_path / "seen.json"
    names = ("MIMALLOC_PURGE_DELAY", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "OMP_NUM_THREADS")

    def train() -> None:
        watcher = os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
        seen.write_text(json.dumps({**{n: os.environ.get(n) for n in names}, "w": watcher}))

    # The State API (the task list) needs the dashboard's APIs.
    with ray_runtime(2, 1, lambda _m: None, dashboard=True) as ray_ends_with_job:
        assert ray_ends_with_job
        # The driver's own environment is as it was; the Ray's processes have the job's.
        assert "MIMALLOC_PURGE_DELAY" not in os.environ
        OwnDataTrainer(
            train,
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(storage_path=str(tmp_path / "runs")),
            ray_ends_with_job=True,
        ).fit()
        envs = {
            t.name: json.loads(t.runtime_env_info["serialized_runtime_env"])
            for t in list_tasks(filters=[("type", "=", "ACTOR_CREATION_TASK")], detail=True)
        }
    assert json.loads(seen.read_text()) == {
        "MIMALLOC_PURGE_DELAY": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        "OMP_NUM_THREADS": "1",
        "w": "1",
    }
    # Without a runtime env a worker starts without Ray's setup_worker (one more Python):
    # the controller, its synchronization actor, and the training workers, which had the
    # variables above (Train's, and the user's value) from the Ray's environment.
    assert envs["LocalTrainController.__init__"] == {}
    assert envs["SynchronizationActor.__init__"] == {}
    assert envs["RayTrainWorker.__init__"] == {}  # ours (local_workers.py): Train's has one


def test_a_local_rays_autoscaler_monitor_is_gone_before_ray_shutdown_ends_the_rest(
    monkeypatch,
):
    # On SIGTERM it tries to report its own failure through the gone GCS, and ray.shutdown
    # waits a second for it before it kills it.
    import ray
    from ray._private import node as ray_node

    from pipeline.distributed.ray_runtime import ray_runtime

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    alive_at_shutdown: dict[str, bool] = {}
    kill = ray_node.Node._kill_process_type

    def noting(self, process_type, *args, **kwargs):
        infos = self.all_processes.get(process_type, [])
        alive_at_shutdown[process_type] = any(i.process.poll() is None for i in infos)
        return kill(self, process_type, *args, **kwargs)

    monkeypatch.setattr(ray_node.Node, "_kill_process_type", noting)
    with ray_runtime(1, 1, lambda _m: None):
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
    assert alive_at_shutdown["monitor"] is False
    assert alive_at_shutdown["raylet"] and alive_at_shutdown["gcs_server"]  # Ray ends them
