"""A fully connected network (multi-layer perceptron) with batch norm and dropout."""

from __future__ import annotations

from mxnet.gluon import HybridBlock, nn

from models.config import MLPConfig


class MLP(HybridBlock):
    """Flat feature rows in, class logits out."""

    def __init__(self, cfg: MLPConfig, feature_shape: tuple[int, ...], num_classes: int, **kw):
        super().__init__(**kw)
        self.body = nn.HybridSequential()
        for _ in range(cfg.depth):
            self.body.add(nn.Dense(cfg.width, use_bias=not cfg.batch_norm))
            if cfg.batch_norm:
                self.body.add(nn.BatchNorm())
            self.body.add(nn.Activation("relu"))
            if cfg.dropout > 0:
                self.body.add(nn.Dropout(cfg.dropout))
        self.classifier = nn.Dense(num_classes)

    def hybrid_forward(self, F, x):
        return self.classifier(self.body(x))
