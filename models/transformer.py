"""A Transformer encoder classifier (Vaswani et al., 2017) over the rows of an image.

Gluon 1.x has no multi-head attention layer, so it is written here with batched matrix
products; positional information comes from fixed sinusoidal encodings.
"""

from __future__ import annotations

import math

import numpy as np
from mxnet.gluon import HybridBlock, nn

from models.config import TransformerConfig
from models.rnn import sequence_shape


def sinusoidal_positions(steps: int, width: int) -> np.ndarray:
    pos = np.arange(steps)[:, None]
    i = np.arange(width)[None, :]
    angle = pos / np.power(10000.0, (2 * (i // 2)) / width)
    return np.where(i % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


class MultiHeadSelfAttention(HybridBlock):
    def __init__(self, d_model: int, heads: int, dropout: float, **kw):
        super().__init__(**kw)
        self._heads = heads
        self._d = d_model
        self.qkv = nn.Dense(3 * d_model, flatten=False)
        self.out = nn.Dense(d_model, flatten=False)
        self.drop = nn.Dropout(dropout)

    def hybrid_forward(self, F, x):  # x: (N, T, D)
        h, d = self._heads, self._d
        qkv = self.qkv(x)  # (N, T, 3D)
        qkv = F.reshape(qkv, shape=(0, 0, 3, h, d // h))  # (N, T, 3, H, Dh)
        qkv = F.transpose(qkv, axes=(2, 0, 3, 1, 4))  # (3, N, H, T, Dh)
        q, k, v = F.split(qkv, num_outputs=3, axis=0, squeeze_axis=True)
        q = F.reshape(q, shape=(-3, 0, 0))  # (N*H, T, Dh)
        k = F.reshape(k, shape=(-3, 0, 0))
        v = F.reshape(v, shape=(-3, 0, 0))
        scores = F.batch_dot(q, k, transpose_b=True) / math.sqrt(d // h)  # (N*H, T, T)
        weights = self.drop(F.softmax(scores, axis=-1))
        ctx = F.batch_dot(weights, v)  # (N*H, T, Dh)
        ctx = F.reshape(ctx, shape=(-4, -1, h, 0, 0))  # (N, H, T, Dh)
        ctx = F.reshape(F.transpose(ctx, axes=(0, 2, 1, 3)), shape=(0, 0, -3))  # (N, T, D)
        return self.out(ctx)


class EncoderLayer(HybridBlock):
    """Pre-norm: x + attn(norm(x)), then x + ff(norm(x))."""

    def __init__(self, cfg: TransformerConfig, **kw):
        super().__init__(**kw)
        self.norm1 = nn.LayerNorm()
        self.attn = MultiHeadSelfAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm()
        self.ff = nn.HybridSequential()
        self.ff.add(
            nn.Dense(cfg.ff_width, flatten=False, activation="relu"),
            nn.Dropout(cfg.dropout),
            nn.Dense(cfg.d_model, flatten=False),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def hybrid_forward(self, F, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.ff(self.norm2(x)))


class TransformerClassifier(HybridBlock):
    def __init__(
        self, cfg: TransformerConfig, feature_shape: tuple[int, ...], num_classes: int, **kw
    ):
        super().__init__(**kw)
        self._steps, self._width = sequence_shape(feature_shape)
        self.embed = nn.Dense(cfg.d_model, flatten=False)
        positions = sinusoidal_positions(self._steps, cfg.d_model)
        self.positions = self.params.get_constant("positions", positions[None])
        self.layers = nn.HybridSequential()
        for _ in range(cfg.layers):
            self.layers.add(EncoderLayer(cfg))
        self.norm = nn.LayerNorm()
        self.classifier = nn.Dense(num_classes)

    def hybrid_forward(self, F, x, positions):
        x = F.reshape(x, shape=(-1, self._steps, self._width))
        x = F.broadcast_add(self.embed(x), positions)
        x = self.norm(self.layers(x))
        return self.classifier(F.mean(x, axis=1))
