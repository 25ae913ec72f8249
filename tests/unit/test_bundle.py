"""The model bundle: what training exports is what the pyfunc loaders read back.

The loaders are logged as source files and cannot import the bundle module, so the contract
between them (file names, artifact keys, model.json keys) is checked here end to end: a bundle
written by :func:`bundle.write` is saved as an MLflow pyfunc model, loaded by MLflow and
predicts what the network computed."""

from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pandas as pd
import pytest

from models import build_model
from models.config import MLPConfig
from pipeline.data.contract import DatasetInfo, SplitInfo
from pipeline.model import bundle
from tests.jobs import tiny_generator_bundle

INFO = DatasetInfo("memory://", (1, 8, 8), 10, {"train": SplitInfo((), 64)})


def _ready(net, *inputs):
    net.initialize(mx.init.Xavier())
    net.hybridize()
    return net(*inputs)


def _as_pyfunc(model: bundle.Bundle, path, example=None):
    """Saved and loaded by MLflow with the signature the job logs."""
    import mlflow.pyfunc

    from pipeline.model.installed import pyfunc_arguments

    with pyfunc_arguments(model, example) as arguments:
        mlflow.pyfunc.save_model(str(path), **arguments)
    return mlflow.pyfunc.load_model(str(path))


def test_classifier_bundle_round_trip_through_its_pyfunc(tmp_path):
    net = build_model("mlp", MLPConfig(width=16, depth=1), INFO.feature_shape, 10)
    x = mx.nd.random.uniform(shape=(6, INFO.num_features))
    reference = mx.nd.softmax(_ready(net, x)).asnumpy()

    meta = bundle.BundleMeta.for_data("classifier", 4, INFO)
    bundle.write(tmp_path / "b", net, meta)
    model = bundle.read(tmp_path / "b")
    assert model.meta == meta and model.meta.inputs == ("data",)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(bundle.FILES)
    np.testing.assert_allclose(
        mx.nd.softmax(model.load()(x)).asnumpy(), reference, rtol=1e-5, atol=1e-6
    )

    copied = model.copy_to(tmp_path / "copy")
    served = _as_pyfunc(copied, tmp_path / "pyfunc", x.asnumpy()[:2])
    np.testing.assert_allclose(served.predict(x.asnumpy()), reference, rtol=1e-5, atol=1e-6)


def test_a_classifier_of_named_classes_predicts_names_and_probabilities(tmp_path):
    """String labels: the pyfunc returns the class's name beside each class's probability,
    and the logged signature says so."""
    import dataclasses

    from pipeline.data.columns import ColumnMapping

    names = ("ankle boot", "bag", "coat")
    info = dataclasses.replace(INFO, num_classes=3, mapping=ColumnMapping("y", classes=names))
    net = build_model("mlp", MLPConfig(width=16, depth=1), info.feature_shape, 3)
    x = mx.nd.random.uniform(shape=(40, info.num_features))
    reference = mx.nd.softmax(_ready(net, x)).asnumpy()
    bundle.write(tmp_path / "b", net, bundle.BundleMeta.for_data("classifier", 0, info))
    model = bundle.read(tmp_path / "b")
    assert model.meta.class_names == names

    served = _as_pyfunc(model, tmp_path / "pyfunc", x.asnumpy()[:2])
    frame = served.predict(x.asnumpy())
    probs = frame[[f"probability_{n}" for n in names]].to_numpy()
    np.testing.assert_allclose(probs, reference, rtol=1e-5, atol=1e-6)
    assert list(frame["prediction"]) == [names[i] for i in reference.argmax(axis=1)]
    assert served.metadata.signature.outputs.input_names()[:2] == [
        "prediction",
        "probability_ankle boot",
    ]


def test_generator_bundle_round_trip_through_its_pyfunc(tmp_path):
    model = tiny_generator_bundle(tmp_path / "b")
    latent = model.meta.latent_dim
    assert bundle.read(tmp_path / "b").meta.inputs == ("data0", "data1")

    served = _as_pyfunc(model, tmp_path / "pyfunc")
    labels = pd.DataFrame({"label": np.arange(10, dtype=np.int64)})
    images = served.predict(labels, params={"seed": 1})
    assert images.shape == (10, INFO.num_features)
    # The pyfunc draws its noise from the seed: the same draw through the network directly.
    z = np.random.default_rng(1).standard_normal((10, latent)).astype(np.float32)
    direct = model.load()(mx.nd.array(z), mx.nd.one_hot(mx.nd.arange(10), 10)).asnumpy()
    np.testing.assert_allclose(images, direct, rtol=1e-5, atol=1e-6)


def test_bundles_written_before_inputs_were_recorded_still_read(tmp_path):
    net = build_model("mlp", MLPConfig(width=4, depth=1), INFO.feature_shape, 10)
    _ready(net, mx.nd.zeros((2, INFO.num_features)))
    bundle.write(tmp_path, net, bundle.BundleMeta.for_data("classifier", 0, INFO))
    raw = json.loads((tmp_path / bundle.META_FILE).read_text())
    del raw["inputs"]
    (tmp_path / bundle.META_FILE).write_text(json.dumps(raw))
    assert bundle.read(tmp_path).meta.inputs == ("data",)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / bundle.PARAMS_FILE).unlink(), "model-0000.params missing"),
        (lambda d: (d / bundle.META_FILE).write_text("[1, 2"), "not a bundle description"),
        (lambda d: (d / bundle.META_FILE).write_text('{"kind": "x"}'), "not a bundle"),
        (
            lambda d: (d / bundle.META_FILE).write_text(
                bundle.BundleMeta("regressor", ("data",), 0, 64, (64,), 1).to_json()
            ),
            "unknown kind 'regressor'",
        ),
    ],
)
def test_a_damaged_bundle_is_refused_by_name(tmp_path, damage, message):
    net = build_model("mlp", MLPConfig(width=4, depth=1), INFO.feature_shape, 10)
    _ready(net, mx.nd.zeros((2, INFO.num_features)))
    bundle.write(tmp_path, net, bundle.BundleMeta.for_data("classifier", 0, INFO))
    damage(tmp_path)
    with pytest.raises(bundle.BundleError, match=message):
        bundle.read(tmp_path)
