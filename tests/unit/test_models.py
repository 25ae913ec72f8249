from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from models import build_model, count_params
from models.config import CNNConfig


def _initialised(cfg: CNNConfig, shape=(1, 8, 8), classes=10):
    net = build_model("cnn", cfg, shape, classes)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, int(np.prod(shape)))))
    return net


def _expected_cnn_params(c: int, stages: int, blocks: int, in_ch: int, classes: int) -> int:
    bn = lambda ch: 4 * ch  # gamma, beta, running mean, running var  # noqa: E731
    total = in_ch * c * 9 + bn(c)  # stem
    ch_in, ch = c, c
    for stage in range(stages):
        for block in range(blocks):
            first = block == 0 and stage > 0
            total += ch_in * ch * 9 + bn(ch) + ch * ch * 9 + bn(ch)
            if first:
                total += ch_in * ch + bn(ch)
            ch_in = ch
        ch *= 2
    return total + ch_in * classes + classes


@pytest.mark.parametrize(("channels", "stages", "blocks"), [(8, 1, 1), (16, 2, 1), (8, 3, 2)])
def test_cnn_output_shape_and_param_count(channels, stages, blocks):
    net = _initialised(CNNConfig(channels=channels, stages=stages, blocks_per_stage=blocks))
    out = net(mx.nd.random.uniform(shape=(5, 64)))
    assert out.shape == (5, 10)
    assert count_params(net) == _expected_cnn_params(channels, stages, blocks, 1, 10)


def test_cnn_export_import_round_trip_is_identical(tmp_path):
    net = _initialised(CNNConfig(channels=8, dropout=0.2))
    x = mx.nd.random.uniform(shape=(7, 64))
    expected = net(x).asnumpy()
    net.export(str(tmp_path / "m"), epoch=0)
    loaded = mx.gluon.SymbolBlock.imports(
        str(tmp_path / "m-symbol.json"), ["data"], str(tmp_path / "m-0000.params")
    )
    np.testing.assert_allclose(loaded(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_cnn_refuses_flat_features():
    with pytest.raises(ValueError, match="image-shaped features"):
        build_model("cnn", CNNConfig(), (64,), 10)


def test_models_import_nothing_from_the_infrastructure():
    import ast
    from pathlib import Path

    forbidden = {"ray", "horovod", "mlflow", "boto3", "pipeline"}
    for path in Path(__file__).resolve().parents[2].joinpath("models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
