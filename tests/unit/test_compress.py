"""Smaller models (jobs.compress): global magnitude pruning, the mask held through training,
gzip-compressed bundles loading through the pyfunc, INT8 variants registered beside their
source, and bad requests refused in one line. Real MXNet and a real MLflow sqlite store;
the distributed fine-tuning runs in tests/integration/test_compress.py."""

from __future__ import annotations

import mlflow
import mxnet as mx
import numpy as np
import pytest
from mlflow import MlflowClient

from models import build_model
from models.config import CNNConfig
from pipeline.compress.job import CompressRequest, compress
from pipeline.config import config_from_params, load_job_config
from pipeline.data.contract import DatasetInfo, SplitInfo
from pipeline.errors import ConfigError
from pipeline.model import bundle
from pipeline.model.prune import (
    apply_masks,
    global_magnitude_masks,
    nonzero_params,
    sparsity_by_layer,
)
from pipeline.tracking import registry
from pipeline.tracking.client import param_value
from tests.conftest import one_rank_task, random_batches, run_cli

INFO = DatasetInfo("memory://", (1, 8, 8), 10, {"train": SplitInfo((), 64)})


def test_global_pruning_zeroes_the_smallest_weights_over_all_layers():
    rng = np.random.default_rng(0)
    weights = {
        "arg:big_weight": rng.normal(0, 1.0, (40, 10)).astype(np.float32),
        "arg:small_weight": rng.normal(0, 0.01, (10, 10)).astype(np.float32),
        "arg:big_bias": np.full(40, 1e-6, np.float32),  # tiny, but not prunable
    }
    pruned = apply_masks(weights, global_magnitude_masks(weights, 0.5))
    report = sparsity_by_layer(pruned)
    assert report["all"] == pytest.approx(0.5)  # exactly the share, over both weights
    assert report["arg:small_weight"] == 1.0  # one threshold for all: the small layer goes first
    assert np.array_equal(pruned["arg:big_bias"], weights["arg:big_bias"])
    kept = np.abs(pruned["arg:big_weight"][pruned["arg:big_weight"] != 0])
    dropped = np.abs(weights["arg:big_weight"][pruned["arg:big_weight"] == 0])
    assert kept.min() >= dropped.max()
    assert nonzero_params(pruned) == 250 + 40
    with pytest.raises(ValueError, match="sparsity"):
        global_magnitude_masks(weights, 1.0)


def _export(net, directory, compress=False) -> bundle.Bundle:
    written = bundle.write(directory, net, bundle.BundleMeta.for_data("classifier", 0, INFO))
    if compress:
        bundle.compress_params(written.directory)
    return written


def _small_cnn():
    net = build_model("cnn", CNNConfig(channels=8, stages=2), INFO.feature_shape, 10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, 64)))
    return net


def test_a_pruned_model_keeps_its_zeros_through_training(tmp_path, hvd):
    """init.weights starts the task from a pruned bundle; init.hold_zeros keeps every pruned
    weight at zero through momentum and weight decay, while the others learn."""
    task = one_rank_task(hvd, "digits-cnn", 0)
    net = task.model.net
    source = _export(net, tmp_path / "src")
    arrays = source.arrays()
    pruned = apply_masks(arrays, global_magnitude_masks(arrays, 0.8))
    start = bundle.write_arrays(tmp_path / "start", source, pruned, compress=False)

    sets = [f"init.weights={start.directory}", "init.hold_zeros=true"]
    tuned = one_rank_task(hvd, "digits-cnn", 1, sets)
    weights = {n: p.data().asnumpy() for n, p in tuned.model.params.items()}
    zero = {n: w == 0 for n, w in weights.items() if n.endswith("weight") and w.ndim >= 2}
    share = np.mean(np.concatenate([z.ravel() for z in zero.values()]))
    assert share == pytest.approx(0.8, abs=1e-4)
    for batch in random_batches(6, seed=2):
        tuned.train_step(batch, 0.5)
    after = {n: p.data().asnumpy() for n, p in tuned.model.params.items()}
    for n, was_zero in zero.items():
        assert np.all(after[n][was_zero] == 0), n
    assert any(not np.allclose(after[n][~z], weights[n][~z]) for n, z in zero.items())

    # Without hold_zeros the same start drifts away from its zeros (the network was built
    # again, under other names: the weights are matched by position, as init.weights does).
    free = one_rank_task(hvd, "digits-cnn", 1, sets[:1])
    for batch in random_batches(6, seed=2):
        free.train_step(batch, 0.5)
    by_position = dict(zip(tuned.model.params.keys(), free.model.params.values(), strict=True))
    revived = [np.any(by_position[n].data().asnumpy()[z] != 0) for n, z in zero.items()]
    assert any(revived)


def test_init_weights_of_another_architecture_is_one_line(tmp_path, hvd):
    from pipeline.train.init_weights import match_weights, read_bundle

    source = _export(_small_cnn(), tmp_path / "src")
    cfg = load_job_config("digits-cnn", [f"init.weights={source.directory}"])
    _, arrays = read_bundle(cfg.init.weights, cfg.s3)
    task = one_rank_task(hvd, "digits-fcn", 0)
    with pytest.raises(ConfigError, match=r"init.weights=.*use the model settings"):
        match_weights(task.model.params, arrays, cfg.init.weights)
    with pytest.raises(ConfigError, match=r"init.hold_zeros: .*empty"):
        load_job_config("digits-cnn", ["init.hold_zeros=true"])


def test_a_compressed_bundle_loads_and_predicts_like_the_plain_one(tmp_path):
    net = _small_cnn()
    plain = _export(net, tmp_path / "plain")
    packed = _export(net, tmp_path / "packed", compress=True)
    assert packed.params_file == bundle.PARAMS_GZ_FILE
    assert not (packed.directory / bundle.PARAMS_FILE).exists()
    x = mx.nd.array(np.random.default_rng(0).random((4, 64), dtype=np.float32))
    np.testing.assert_array_equal(plain.load()(x).asnumpy(), packed.load()(x).asnumpy())

    cfg = load_job_config("digits-cnn", [])
    run_id = MlflowClient().create_run("0").info.run_id
    registry.log_and_register_model(cfg, run_id, str(packed.directory), x.asnumpy(), {})
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")  # the logged pyfunc, gz and all
    probs = mx.nd.softmax(plain.load()(x)).asnumpy()
    np.testing.assert_allclose(served.predict(x.asnumpy()), probs, rtol=1e-5)


def test_a_run_config_comes_back_from_its_params():
    for recipe in ("fashion-cnn", "digits-rnn", "digits-gan"):
        cfg = load_job_config(recipe, ["init.weights=s3://b/start", "init.hold_zeros=true"])
        params = {k: param_value(v) for k, v in cfg.to_dict().items()}
        params["data.rows.train"] = "100"  # logged beside the config; not a key
        assert config_from_params(params) == cfg


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (CompressRequest("models:/nope@candidate", quantize="int8"), "no registered model 'nope'"),
        (CompressRequest("models:/digits-fcn@gone", quantize="int8"), "has no alias @gone"),
        (CompressRequest("models:/digits-fcn/7", quantize="int8"), "has no version 7"),
        (CompressRequest("fashion-cnn", quantize="int8"), "expected models:/<name>@<alias>"),
        (CompressRequest("models:/digits-fcn@candidate", prune=1.0), r"must be in \[0, 1\)"),
        (CompressRequest("models:/digits-fcn@candidate"), "nothing to do"),
    ],
)
def test_bad_requests_are_refused_before_any_work(request_, message, tmp_path):
    net = build_model("mlp", load_job_config("digits-fcn").model.arch, INFO.feature_shape, 10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, 64)))
    source = _export(net, tmp_path / "fcn")
    cfg = load_job_config("digits-fcn", [])
    run_id = MlflowClient().create_run("0").info.run_id
    registry.log_and_register_model(cfg, run_id, str(source.directory), np.zeros((2, 64)), {})
    with pytest.raises(ConfigError, match=message):
        compress(request_)


def test_a_generator_is_refused_with_the_reason(tmp_path):
    from tests.jobs import tiny_generator_bundle

    cfg = load_job_config("digits-gan", [])
    tiny_generator_bundle(tmp_path / "gen")
    run_id = MlflowClient().create_run("0").info.run_id
    registry.log_and_register_model(cfg, run_id, str(tmp_path / "gen"), np.zeros((2, 64)), {})
    done = run_cli("jobs.compress", "--model", "models:/digits-gan/1", "--quantize", "int8")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a generator" in lines[0] and "classifier" in lines[0]


def test_an_int8_model_travels_with_int8_weights_and_predicts_as_quantized(tmp_path):
    """oneDNN's INT8 convolutions take float32 weights, fold batch norm into them and quantize
    them when first run; the bundle stores them folded and as int8 (a quarter of the size),
    and the model loaded from it (bundle or pyfunc) computes about what the quantized model
    does."""
    from pipeline.compress.quantize import int8_storage, quantize_classifier

    net = _small_cnn()
    source = _export(net, tmp_path / "f32")
    rows = np.random.default_rng(0).random((256, 64), dtype=np.float32)
    quantized = quantize_classifier(source.load(), rows[:128])
    logits = quantized(mx.nd.array(rows)).asnumpy()
    plain = bundle.write(tmp_path / "int8", quantized, source.meta)
    arrays, names = int8_storage(plain)
    assert names and all(n.startswith("conv") for n in names)

    packed = bundle.pack_int8(
        bundle.write(tmp_path / "packed", quantized, source.meta), arrays, names
    )
    assert bundle.read(packed.directory).meta.int8_weights == tuple(names)
    assert packed.size_bytes() < 0.4 * plain.size_bytes()
    got = packed.load()(mx.nd.array(rows)).asnumpy()
    # Stored as int8, the weights move the outputs a little (see int8_storage): the packed
    # model strays from float32 no more than twice as far as the quantized one does. (The
    # classes of a trained model agree with float32's on >= 99% of test rows:
    # tests/integration/test_compress.py.)
    reference = source.load()(mx.nd.array(rows)).asnumpy()
    quantization_error = np.mean(np.abs(logits - reference))
    assert np.mean(np.abs(got - reference)) <= 2 * quantization_error

    cfg = load_job_config("digits-cnn", [])
    run_id = MlflowClient().create_run("0").info.run_id
    registry.log_and_register_model(cfg, run_id, str(packed.directory), rows[:2], {})
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    probs = mx.nd.softmax(mx.nd.array(got)).asnumpy()
    np.testing.assert_allclose(served.predict(rows), probs, atol=1e-5)
