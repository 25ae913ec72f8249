"""Elastic workers: WORKERS=MIN-MAX on a Ray with fewer slots than MAX."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from pipeline.config import load_job_config
from pipeline.distributed.threads import thread_env
from pipeline.train.schedule import lr_at

pytestmark = pytest.mark.integration


@pytest.fixture
def ray_with_three_slots():
    import ray

    ray.init(num_cpus=3, include_dashboard=True, runtime_env={"env_vars": thread_env(1)})
    yield
    ray.shutdown()


def test_elastic_job_uses_the_slots_there_are_and_scales_the_learning_rate(
    ray_with_three_slots, digits_uri, tmp_path
):
    from jobs.train import parse_workers
    from pipeline.launch import run_job

    cfg = load_job_config(
        "digits-cnn",
        ["optim.epochs=2", "optim.warmup_epochs=0"],
        {"data.uri": digits_uri, "storage.path": str(tmp_path / "runs"), **parse_workers("2-4")},
    )
    result = run_job(cfg, progress=lambda _: None)

    client = MlflowClient(result.tracking_uri)
    sizes = [m.value for m in client.get_metric_history(result.run_id, "world_size")]
    assert sizes == [3.0, 3.0], "3 slots, so 3 of at most 4 workers"
    steps = math.ceil(math.ceil(1439 / 3) / cfg.data.batch_size)
    lrs = [m.value for m in client.get_metric_history(result.run_id, "learning_rate")]
    expected = [lr_at(cfg.optim, 3, (e + 1) * steps - 1, steps) for e in range(2)]
    assert lrs == pytest.approx(expected)
    assert lrs != pytest.approx([lr_at(cfg.optim, 4, (e + 1) * steps - 1, steps) for e in range(2)])
    assert client.get_run(result.run_id).info.status == "FINISHED"
