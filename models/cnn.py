"""A residual CNN with batch norm (He et al., 2016), sized for small images.

Residual connections and batch norm are the standard answer to vanishing gradients in deep
convolutional stacks: each block learns a correction to an identity path.
"""

from __future__ import annotations

from mxnet.gluon import HybridBlock, nn

from models.config import CNNConfig


class ResidualBlock(HybridBlock):
    """Two 3x3 convs with batch norm; a 1x1 projection when the shape changes."""

    def __init__(self, channels: int, stride: int, project: bool, **kwargs):
        super().__init__(**kwargs)
        self.body = nn.HybridSequential()
        self.body.add(
            nn.Conv2D(channels, 3, strides=stride, padding=1, use_bias=False),
            nn.BatchNorm(),
            nn.Activation("relu"),
            nn.Conv2D(channels, 3, padding=1, use_bias=False),
            nn.BatchNorm(),
        )
        self.shortcut = None
        if project:
            self.shortcut = nn.HybridSequential()
            self.shortcut.add(
                nn.Conv2D(channels, 1, strides=stride, use_bias=False), nn.BatchNorm()
            )

    def hybrid_forward(self, F, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.body(x) + identity)


class ResidualCNN(HybridBlock):
    """Flat feature rows in, class logits out; reshapes rows to ``feature_shape`` first."""

    def __init__(self, cfg: CNNConfig, feature_shape: tuple[int, ...], num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if len(feature_shape) != 3:
            raise ValueError(
                f"the CNN needs image-shaped features (channels, height, width), "
                f"got feature_shape {list(feature_shape)}"
            )
        self._image_shape = tuple(feature_shape)
        self.features = nn.HybridSequential()
        self.features.add(
            nn.Conv2D(cfg.channels, 3, strides=cfg.stem_stride, padding=1, use_bias=False),
            nn.BatchNorm(),
            nn.Activation("relu"),
        )
        channels = cfg.channels
        for stage in range(cfg.stages):
            for block in range(cfg.blocks_per_stage):
                first = block == 0 and stage > 0
                self.features.add(ResidualBlock(channels, stride=2 if first else 1, project=first))
            channels *= 2
        self.features.add(nn.GlobalAvgPool2D(), nn.Flatten())
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self.classifier = nn.Dense(num_classes)

    def hybrid_forward(self, F, x):
        x = F.reshape(x, shape=(-1, *self._image_shape))
        x = self.features(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.classifier(x)
