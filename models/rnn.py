"""A recurrent classifier (LSTM or GRU) that reads an image row by row."""

from __future__ import annotations

import math

from mxnet.gluon import HybridBlock, nn, rnn

from models.config import RNNConfig


def sequence_shape(feature_shape: tuple[int, ...]) -> tuple[int, int]:
    """(time steps, features per step): an image [C, H, W] is read as H steps of C*W values;
    a [T, C] shape is taken as it is."""
    if len(feature_shape) == 3:
        c, h, w = feature_shape
        return h, c * w
    if len(feature_shape) == 2:
        return feature_shape[0], feature_shape[1]
    raise ValueError(
        f"sequence models need a [T, C] or [C, H, W] feature_shape, got {list(feature_shape)}"
    )


class RNNClassifier(HybridBlock):
    def __init__(self, cfg: RNNConfig, feature_shape: tuple[int, ...], num_classes: int, **kw):
        super().__init__(**kw)
        self._steps, self._width = sequence_shape(feature_shape)
        # [C, H, W] with C > 1: rows need the channel axis next to the width axis.
        self._chw: tuple[int, ...] | None = None
        if len(feature_shape) == 3 and feature_shape[0] != 1:
            self._chw = tuple(feature_shape)
        layer = rnn.LSTM if cfg.cell == "lstm" else rnn.GRU
        self.rnn = layer(
            cfg.hidden,
            num_layers=cfg.layers,
            layout="NTC",
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            input_size=self._width,
        )
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self.classifier = nn.Dense(num_classes)
        assert math.prod(feature_shape) == self._steps * self._width

    def hybrid_forward(self, F, x):
        if self._chw is not None:
            c, h, w = self._chw
            x = F.transpose(F.reshape(x, shape=(-1, c, h, w)), axes=(0, 2, 1, 3))
        x = F.reshape(x, shape=(-1, self._steps, self._width))
        out = self.rnn(x)  # (N, T, hidden * directions)
        # Mean over time: every step contributes a gradient path (no single last-step bottleneck).
        pooled = F.mean(out, axis=1)
        if self.dropout is not None:
            pooled = self.dropout(pooled)
        return self.classifier(pooled)
