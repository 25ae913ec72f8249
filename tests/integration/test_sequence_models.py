"""The recurrent and attention families on real Ray + 2 Horovod workers, with gradient clipping
engaged: a short run of each recipe (the full ones are in test_recipes_reach_targets, slow)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipeline.config import load_job_config
from pipeline.distributed.threads import thread_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for both runs (each job would otherwise start and stop its own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, runtime_env={"env_vars": thread_env(1)})
    yield
    ray.shutdown()


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.parametrize("recipe", ["digits-rnn", "digits-attention"])
def test_two_workers_learn_with_clipped_gradients(recipe, shared_ray, digits_uri, tmp_path):
    from pipeline.launch import run_job

    cfg = load_job_config(
        recipe,
        [
            f"data.uri={digits_uri}",
            f"storage.path={tmp_path / 'runs'}",
            "optim.epochs=2",
            "optim.warmup_epochs=0",
            # Below the gradient norms these models start with, so clipping acts.
            "optim.grad_clip_norm=0.5",
        ],
    )
    result = run_job(cfg, progress=lambda _msg: None)

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "2"
    loss = _history(client, result.run_id, "train_loss")
    clipped = _history(client, result.run_id, "grad_clipped_fraction")
    norms = _history(client, result.run_id, "grad_norm")
    assert len(loss) == 2 and loss[1] < loss[0], loss
    assert len(clipped) == 2 and max(clipped) > 0, (clipped, norms)
    assert run.data.metrics["test_accuracy"] >= 0.5
