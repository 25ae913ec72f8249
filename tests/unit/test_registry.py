"""The registry's promise: the alias only ever points at a version that passed its gate, and
a job that fails after registering leaves no version behind. Real MLflow (sqlite store in
tmp_path); the only fault injected is a refused alias call."""

from __future__ import annotations

import math
import os

import mxnet as mx
import pytest
from mlflow import MlflowClient

from models import build_model
from models.config import MLPConfig
from pipeline.config import load_job_config
from pipeline.data.contract import DatasetInfo, SplitInfo
from pipeline.model import bundle
from pipeline.tracking import registry
from pipeline.tracking.names import TAG_GATE

INFO = DatasetInfo("memory://", (1, 8, 8), 10, {"train": SplitInfo((), 64)})


@pytest.fixture
def trained(tmp_path) -> str:
    """A model bundle as a checkpoint holds it."""
    net = build_model("mlp", MLPConfig(width=8, depth=1), INFO.feature_shape, 10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, 64)))
    bundle.write(tmp_path / "ckpt", net, bundle.BundleMeta.for_data("classifier", 0, INFO))
    return str(tmp_path / "ckpt")


def _register(trained, metrics, *overrides):
    cfg = load_job_config("digits-fcn", list(overrides))
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    example = mx.nd.zeros((2, 64)).asnumpy()
    return cfg, run_id, registry.log_and_register_model(cfg, run_id, trained, example, metrics)


def test_a_run_that_meets_its_gate_gets_the_alias(trained):
    _, run_id, reg = _register(trained, {"test_accuracy": 0.975})
    assert reg.promoted and reg.verdict == "test_accuracy 0.9750 >= 0.97"
    version = MlflowClient().get_model_version_by_alias("digits-fcn", "candidate")
    assert version.run_id == run_id and version.tags[TAG_GATE] == "passed"


@pytest.mark.parametrize(
    ("metrics", "why"),
    [
        ({"test_accuracy": 0.145}, "test_accuracy 0.1450 < tracking.gate_min 0.97"),
        ({"test_accuracy": math.nan}, "test_accuracy nan < tracking.gate_min 0.97"),
        ({"val_accuracy": 0.99}, "the run has no metric test_accuracy"),
    ],
)
def test_a_run_below_its_gate_is_registered_without_the_alias(trained, metrics, why):
    _register(trained, {"test_accuracy": 0.99})  # an earlier good version holds the alias
    _, run_id, reg = _register(trained, metrics)
    assert not reg.promoted and why in reg.verdict
    client = MlflowClient()
    assert int(client.get_model_version_by_alias("digits-fcn", "candidate").version) == 1
    below = client.get_model_version("digits-fcn", str(reg.version))
    assert below.run_id == run_id and why in below.tags[TAG_GATE]


def test_without_a_gate_every_run_moves_the_alias(trained):
    _, _, reg = _register(trained, {"test_accuracy": 0.1}, "tracking.gate_metric=")
    assert reg.promoted and "no gate" in reg.verdict


def test_a_refused_alias_leaves_no_version(trained, monkeypatch):
    def refuse(self, name, alias, version):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(Exception, match="went away"):
        _register(trained, {"test_accuracy": 0.99})
    assert MlflowClient().search_model_versions("name = 'digits-fcn'") == []


def test_withdraw_deletes_the_versions_of_one_run_only(trained):
    _, keep, _ = _register(trained, {"test_accuracy": 0.99})
    _, drop, _ = _register(trained, {"test_accuracy": 0.99})
    registry.withdraw_versions(os.environ["MLFLOW_TRACKING_URI"], drop)
    left = MlflowClient().search_model_versions("name = 'digits-fcn'")
    assert [v.run_id for v in left] == [keep]
