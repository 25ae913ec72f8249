"""Every recipe, run as shipped, reaches its accuracy target (slow: `make test-all`)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipeline.config import load_job_config
from pipeline.launch import run_job
from tests.conftest import RECIPE_TARGETS


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("recipe", sorted(RECIPE_TARGETS))
def test_recipe_reaches_its_target(recipe, request, tmp_path):
    data = request.getfixturevalue("fashion_uri" if recipe.startswith("fashion") else "digits_uri")
    cfg = load_job_config(recipe, [f"data.uri={data}", f"storage.path={tmp_path}"])
    result = run_job(cfg, progress=lambda _msg: None)
    run = MlflowClient().get_run(result.run_id)
    metric, target = RECIPE_TARGETS[recipe]
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "2"
    assert run.data.metrics[metric] >= target, (recipe, run.data.metrics[metric])
    assert MlflowClient().get_model_version_by_alias(cfg.registered_model_name, "candidate")
