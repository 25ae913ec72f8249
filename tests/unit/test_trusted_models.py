"""Nothing from the registry runs: a version's own loader code or pickle is never executed by
scoring, serving, compression or init.weights, and a bundle that is not ours, or is
malformed, or is a gzip bomb, is one line (security round two, #29)."""

from __future__ import annotations

import gzip
import io

import mlflow
import mxnet as mx
import numpy as np
import pytest

from models import build_model
from pipeline.config import load_job_config
from pipeline.errors import ConfigError
from pipeline.model import bundle, installed
from pipeline.predict.scorer import load_model, model_files
from pipeline.tracking.model_source import fetch_source_model
from pipeline.train.init_weights import read_bundle
from tests.conftest import run_cli
from tests.faults import register_crafted_version
from tests.unit.test_predict import INFO


@pytest.fixture
def fcn_bundle(tmp_path) -> bundle.Bundle:
    net = build_model("mlp", load_job_config("digits-fcn").model.arch, INFO.feature_shape, 10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, 64)))
    return bundle.write(tmp_path / "fcn", net, bundle.BundleMeta.for_data("classifier", 0, INFO))


def test_a_version_with_its_own_loader_code_is_scored_by_the_installed_loader(fcn_bundle, tmp_path):
    marker = tmp_path / "ran"
    uri = register_crafted_version("crafted", marker, artifacts=fcn_bundle.artifacts())
    source = fetch_source_model(uri, mlflow.get_tracking_uri(), tmp_path / "dl")
    # What the actors get: the bundle's three files, not the version's MLmodel or code.
    files = model_files(source.plain.directory)
    assert sorted(files) == sorted(bundle.FILES)
    loaded = load_model(files)
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    expected = mx.nd.softmax(fcn_bundle.load()(mx.nd.array(x))).asnumpy()
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=1e-6)
    assert not marker.exists()


def test_a_pickled_version_without_a_bundle_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "ran"
    uri = register_crafted_version("pickled", marker, pickled=True)
    with pytest.raises(ConfigError, match=r"not a model this pipeline logged \(.*holds no model"):
        fetch_source_model(uri, mlflow.get_tracking_uri(), tmp_path / "dl")
    for job in (
        [
            "jobs.predict",
            "--model",
            uri,
            "--data",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "o"),
        ],
        ["jobs.compress", "--model", uri, "--quantize", "int8"],
    ):
        done = run_cli(*job, timeout=300)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "not a model this pipeline logged" in lines[0], done.stderr
    assert not marker.exists()


def _gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed (about 1 KB per MB)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as gz:
        for _ in range(size >> 20):
            gz.write(bytes(1 << 20))
    return buffer.getvalue()


def test_bundles_that_lie_are_one_line(fcn_bundle, tmp_path, monkeypatch):
    # A pruned (gzip) bundle is read by init.weights (pyarrow used to gunzip it first).
    bundle.compress_params(fcn_bundle.directory)
    meta, arrays = read_bundle(str(fcn_bundle.directory), load_job_config("digits-fcn").s3)
    assert meta.kind == "classifier" and len(arrays) == len(fcn_bundle.arrays())

    # A bomb: 64 MB of zeros in ~64 KB of gzip, over a cap of 16 MB.
    monkeypatch.setattr(bundle, "MAX_WEIGHTS_BYTES", 16 * 1024**2)
    (fcn_bundle.directory / bundle.PARAMS_GZ_FILE).write_bytes(_gzip_bomb(64 * 1024**2))
    with pytest.raises(bundle.BundleError, match="unpacks to more than 16,777,216 bytes"):
        fcn_bundle.arrays()
    with pytest.raises(ConfigError, match=r"not a readable model bundle.*unpacks to more"):
        read_bundle(str(fcn_bundle.directory), load_job_config("digits-fcn").s3)
    (fcn_bundle.directory / bundle.PARAMS_GZ_FILE).write_bytes(b"not gzip")
    with pytest.raises(bundle.BundleError, match="not gzip-compressed"):
        fcn_bundle.arrays()


def test_an_int8_weight_named_but_not_stored_is_one_line(fcn_bundle):
    import dataclasses

    meta = dataclasses.replace(fcn_bundle.meta, int8_weights=("no_such_weight",))
    (fcn_bundle.directory / bundle.META_FILE).write_text(meta.to_json())
    liar = bundle.read(fcn_bundle.directory)
    with pytest.raises(bundle.BundleError, match="names no_such_weight an int8 weight"):
        liar.arrays()
    with pytest.raises(ConfigError, match="not a readable model bundle"):
        read_bundle(str(fcn_bundle.directory), load_job_config("digits-fcn").s3)


def test_the_served_model_is_written_with_the_installed_loader(fcn_bundle, tmp_path):
    from mlflow.models import Model

    plain = fcn_bundle.plain_copy(tmp_path / "plain")
    served = installed.save_for_serving(plain, tmp_path / "served", np.zeros((2, 64)))
    code = sorted(p.name for p in served.rglob("*.py"))
    assert code == [plain.pyfunc_code.name]
    assert (served / plain.pyfunc_code.name).read_bytes() == plain.pyfunc_code.read_bytes()
    spec = Model.load(str(served)).signature.inputs.to_dict()[0]
    assert tuple(spec["tensor-spec"]["shape"]) == (-1, 64)
