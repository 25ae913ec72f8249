"""The adversarial task on real Ray + 2 Horovod workers: three DistributedTrainers (generator,
discriminator, judge) stay in lock-step, the generator learns to draw the digits it is asked
for, and the registered generator serves images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline.config import load_job_config
from pipeline.launch import run_job
from pipeline.train import trace

pytestmark = pytest.mark.integration

EPOCHS = 10


def test_gan_two_workers_stay_identical_and_register_a_generator(digits_uri, tmp_path, monkeypatch):
    monkeypatch.setenv(trace.ENV, str(tmp_path / "trace"))
    cfg = load_job_config(
        "digits-gan",
        [
            f"data.uri={digits_uri}",
            f"storage.path={tmp_path / 'runs'}",
            f"optim.epochs={EPOCHS}",
            "model.channels=16",
            # A small, fast-learning variant of the recipe (60 epochs of 64 channels at 2e-4):
            # measured 0.67 generated_accuracy after 10 epochs (0.16 at the recipe's rate).
            "optim.learning_rate=0.001",
            "tracking.gate_min=0.5",  # the bar this test asserts, below the recipe's 0.80
        ],
    )
    result = run_job(cfg, progress=lambda _msg: None)

    records = trace.read_steps(tmp_path / "trace")
    for epoch in range(EPOCHS):
        ranks = {r["rank"]: r for r in records if r["epoch"] == epoch}
        assert set(ranks) == {0, 1}
        assert ranks[0]["steps"] == ranks[1]["steps"] > 0
        assert not set(ranks[0]["ids"]) & set(ranks[1]["ids"])
        assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "2"
    for key in ("d_loss", "g_loss", "val_generated_accuracy", "g_grad_norm", "d_grad_norm"):
        steps = [m.step for m in client.get_metric_history(result.run_id, key)]
        assert sorted(steps) == list(range(EPOCHS)), key
    # Chance is 0.1: a generator that ignores its label, or draws noise, stays near it.
    assert run.data.metrics["judge_test_accuracy"] >= 0.9  # the judge can be trusted
    assert run.data.metrics["generated_accuracy"] >= 0.5
    samples = [a.path for a in client.list_artifacts(result.run_id, "samples/epoch_001")]
    assert samples == ["samples/epoch_001/samples.png"]

    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model("models:/digits-gan@candidate")
    labels = pd.DataFrame({"label": np.arange(10, dtype=np.int64)})
    first = model.predict(labels, params={"seed": 3})
    again = model.predict(labels, params={"seed": 3})
    other = model.predict(labels, params={"seed": 4})
    assert first.shape == (10, 64) and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
