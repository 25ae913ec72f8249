"""Every model family: output shapes, parameter count as configured, and an
export -> SymbolBlock.imports round trip that gives identical outputs."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from models import build_gan, build_model, count_params
from models.config import CNNConfig, GANConfig, MLPConfig, RNNConfig, TransformerConfig

D, C, T = 64, 10, 8  # 8x8 digits: 64 features, 10 classes, 8 rows as time steps


def _ready(net, *inputs):
    net.initialize(mx.init.Xavier())
    net.hybridize()
    return net(*inputs)


def _cnn_params(cfg: CNNConfig) -> int:
    bn = lambda ch: 4 * ch  # gamma, beta, running mean, running var  # noqa: E731
    total = 1 * cfg.channels * 9 + bn(cfg.channels)  # stem, 1 input channel
    ch_in = ch = cfg.channels
    for stage in range(cfg.stages):
        for block in range(cfg.blocks_per_stage):
            total += ch_in * ch * 9 + bn(ch) + ch * ch * 9 + bn(ch)
            if block == 0 and stage > 0:  # 1x1 projection shortcut
                total += ch_in * ch + bn(ch)
            ch_in = ch
        ch *= 2
    return total + ch_in * C + C


def _mlp_params(cfg: MLPConfig) -> int:
    total, fan_in = 0, D
    for _ in range(cfg.depth):
        total += fan_in * cfg.width + (4 * cfg.width if cfg.batch_norm else cfg.width)
        fan_in = cfg.width
    return total + fan_in * C + C


def _rnn_params(cfg: RNNConfig) -> int:
    gates = 4 if cfg.cell == "lstm" else 3
    dirs = 2 if cfg.bidirectional else 1
    total, fan_in = 0, T
    for _ in range(cfg.layers):
        total += dirs * (gates * cfg.hidden * (fan_in + cfg.hidden) + 2 * gates * cfg.hidden)
        fan_in = cfg.hidden * dirs
    return total + fan_in * C + C


def _transformer_params(cfg: TransformerConfig) -> int:
    d, f = cfg.d_model, cfg.ff_width
    layer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * f + f) + (f * d + d)
    positions = T * d  # fixed sinusoidal table, stored as a constant
    return (T * d + d) + positions + cfg.layers * layer + 2 * d + (d * C + C)


CLASSIFIERS = [
    ("cnn", CNNConfig(channels=8, stages=1, blocks_per_stage=1), _cnn_params),
    ("cnn", CNNConfig(channels=16, stages=2, blocks_per_stage=1), _cnn_params),
    ("cnn", CNNConfig(channels=8, stages=3, blocks_per_stage=2), _cnn_params),
    ("cnn", CNNConfig(channels=8, dropout=0.2), _cnn_params),
    ("mlp", MLPConfig(width=32, depth=3), _mlp_params),
    ("mlp", MLPConfig(width=16, depth=1, batch_norm=False, dropout=0.0), _mlp_params),
    ("rnn", RNNConfig(cell="lstm", hidden=16), _rnn_params),
    ("rnn", RNNConfig(cell="gru", hidden=8, layers=2, bidirectional=True), _rnn_params),
    (
        "transformer",
        TransformerConfig(d_model=16, heads=2, layers=2, ff_width=24),
        _transformer_params,
    ),
]


@pytest.mark.parametrize(("name", "cfg", "expected"), CLASSIFIERS, ids=lambda v: str(v)[:40])
def test_classifier_shapes_and_param_count(name, cfg, expected):
    net = build_model(name, cfg, (1, 8, 8), C)
    out = _ready(net, mx.nd.random.uniform(shape=(3, D)))
    assert out.shape == (3, C)
    assert count_params(net) == expected(cfg)


@pytest.mark.parametrize(("name", "cfg", "expected"), CLASSIFIERS, ids=lambda v: str(v)[:40])
def test_classifier_export_round_trip(name, cfg, expected, tmp_path):
    net = build_model(name, cfg, (1, 8, 8), C)
    x = mx.nd.random.uniform(shape=(4, D))
    reference = _ready(net, x).asnumpy()
    net.export(str(tmp_path / "m"), epoch=0)
    loaded = mx.gluon.SymbolBlock.imports(
        str(tmp_path / "m-symbol.json"), ["data"], str(tmp_path / "m-0000.params")
    )
    np.testing.assert_allclose(loaded(x).asnumpy(), reference, rtol=1e-5, atol=1e-6)


def test_attention_heads_must_divide_width():
    with pytest.raises(ValueError, match="heads: must divide d_model"):
        TransformerConfig(d_model=10, heads=4)


def test_sequence_models_read_multichannel_images_as_rows():
    net = build_model("rnn", RNNConfig(hidden=4), (3, 4, 5), C)  # 4 steps of 3*5 values
    assert _ready(net, mx.nd.zeros((2, 60))).shape == (2, C)
    with pytest.raises(ValueError, match="feature_shape"):
        build_model("rnn", RNNConfig(), (64,), C)


def test_gan_shapes_range_and_round_trip(tmp_path):
    cfg = GANConfig(latent_dim=8, channels=8, judge_channels=4)
    g, d, judge = build_gan(cfg, (1, 8, 8), C)
    z = mx.nd.random.normal(shape=(5, cfg.latent_dim))
    onehot = mx.nd.one_hot(mx.nd.array([0, 1, 2, 3, 9]), C)
    images = _ready(g, z, onehot)
    assert images.shape == (5, D)
    assert images.min().asscalar() >= 0.0 and images.max().asscalar() <= 1.0
    assert _ready(d, images, onehot).shape == (5, 1)
    assert _ready(judge, images).shape == (5, C)
    # generator: Dense(latent+C -> ch*2*2, no bias) + BN, conv3x3(ch -> ch/2, no bias) + BN,
    # conv3x3(ch/2 -> 1) + bias
    ch = cfg.channels
    expected = (cfg.latent_dim + C) * ch * 4 + 4 * ch * 4 + ch * (ch // 2) * 9 + 4 * (ch // 2)
    expected += (ch // 2) * 9 + 1
    assert count_params(g) == expected

    reference = images.asnumpy()
    g.export(str(tmp_path / "g"), epoch=0)
    loaded = mx.gluon.SymbolBlock.imports(
        str(tmp_path / "g-symbol.json"), ["data0", "data1"], str(tmp_path / "g-0000.params")
    )
    np.testing.assert_allclose(loaded(z, onehot).asnumpy(), reference, rtol=1e-5, atol=1e-6)


def test_gan_needs_images_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        build_gan(GANConfig(), (1, 6, 6), C)
