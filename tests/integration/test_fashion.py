"""Fashion-MNIST, the real data set: 70,000 28x28 images stored as uint8, trained by 2 Horovod
workers. make test runs one epoch of fashion-mlp with fashion-cnn's augmentation (crop and flip
of every image in the reader; 430 steps per worker) so the path is covered, at a quarter of
fashion-cnn's compute; make test-all runs every recipe as shipped against its target
(test_recipes_reach_targets.py)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipeline.config import load_job_config
from pipeline.launch import run_job

pytestmark = pytest.mark.integration


def test_one_epoch_of_fashion_mlp_learns_the_real_data(fashion_uri, tmp_path):
    cfg = load_job_config(
        "fashion-mlp",
        [
            f"data.uri={fashion_uri}",
            f"storage.path={tmp_path / 'runs'}",
            "augment.crop_padding=2",
            "augment.flip=true",
            "optim.epochs=1",
            "optim.warmup_epochs=0",
            "tracking.gate_min=0.75",
        ],
    )
    result = run_job(cfg, progress=lambda _msg: None)
    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.rows.train"] == "55000"
    assert run.data.params["data.rows.test"] == "10000"  # the official test set
    # Chance is 0.1; this first epoch (no warm-up, crop and flip) measured 0.80 test accuracy.
    assert result.metrics["test_accuracy"] >= 0.75
    assert result.registration is not None and result.registration.promoted
    _answers_in_names(result, fashion_uri)


def _answers_in_names(result, fashion_uri: str) -> None:
    """Names, not numbers: the classes' names travel from the prepared set's schema to the
    per-class report and to the registered model's answers."""
    from pathlib import Path

    import mlflow
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.data.datasets import FASHION_MNIST_CLASSES

    report = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="errors"))
    assert "Ankle boot" in (report / "per_class.json").read_text()
    reg = result.registration
    model = mlflow.pyfunc.load_model(f"models:/{reg.name}/{reg.version}")
    test = pq.read_table(sorted(Path(fashion_uri, "test").glob("*.parquet"))[0]).slice(0, 200)
    pixels = np.stack(test.column("features").to_numpy(zero_copy_only=False)) / np.float32(255)
    answer = model.predict(pixels.astype(np.float32))
    assert list(answer.columns[:2]) == ["prediction", "probability_T-shirt/top"]
    truth = np.asarray(FASHION_MNIST_CLASSES)[test.column("label").to_numpy()]
    assert (answer["prediction"].to_numpy() == truth).mean() >= 0.75
