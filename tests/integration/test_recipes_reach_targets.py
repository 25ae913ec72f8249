"""Every recipe, run as shipped, reaches its accuracy target (slow: `make test-all`)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipeline.config import load_job_config
from pipeline.launch import run_job

TARGETS = {
    "digits-fcn": ("test_accuracy", 0.97),
    "digits-cnn": ("test_accuracy", 0.98),
    "digits-rnn": ("test_accuracy", 0.95),
    "digits-attention": ("test_accuracy", 0.95),
    "digits-gan": ("generated_accuracy", 0.80),
}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("recipe", sorted(TARGETS))
def test_recipe_reaches_its_target(recipe, digits_uri, tmp_path):
    cfg = load_job_config(recipe, [f"data.uri={digits_uri}", f"storage.path={tmp_path}"])
    result = run_job(cfg, progress=lambda _msg: None)
    run = MlflowClient().get_run(result.run_id)
    metric, target = TARGETS[recipe]
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "2"
    assert run.data.metrics[metric] >= target, (recipe, run.data.metrics[metric])
    assert MlflowClient().get_model_version_by_alias(cfg.registered_model_name, "candidate")
