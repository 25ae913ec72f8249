"""A conditional DCGAN (Radford et al., 2015; Mirza and Osindero, 2014) for small images.

The generator maps (noise, one-hot label) to an image in [0, 1]; the discriminator scores
(image, one-hot label) as real or fake. Both take and give flat feature rows, like every
model here, so they plug into the same data contract.
"""

from __future__ import annotations

from mxnet.gluon import HybridBlock, nn

from models.config import GANConfig


def _image_shape(feature_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(feature_shape) != 3 or feature_shape[1] % 4 or feature_shape[2] % 4:
        raise ValueError(
            "the GAN needs image-shaped features [C, H, W] with H and W divisible by 4, "
            f"got {list(feature_shape)}"
        )
    c, h, w = feature_shape
    return c, h, w


class Generator(HybridBlock):
    """(z (N, latent_dim), one-hot labels (N, classes)) -> images as rows (N, C*H*W)."""

    def __init__(self, cfg: GANConfig, feature_shape: tuple[int, ...], num_classes: int, **kw):
        super().__init__(**kw)
        c, h, w = _image_shape(feature_shape)
        self._start = (cfg.channels, h // 4, w // 4)
        self.project = nn.HybridSequential()
        self.project.add(
            nn.Dense(cfg.channels * (h // 4) * (w // 4), use_bias=False),
            nn.BatchNorm(),
            nn.Activation("relu"),
        )
        # Nearest-neighbour upsampling + 3x3 conv instead of transposed convolutions: no
        # checkerboard artefacts, and MXNet 1.9.1's MKL-DNN deconvolution fails in training
        # ("could not create a primitive descriptor for a reorder primitive").
        self.up1 = nn.HybridSequential()
        self.up1.add(
            nn.Conv2D(cfg.channels // 2, 3, padding=1, use_bias=False),
            nn.BatchNorm(),
            nn.Activation("relu"),
        )
        self.up2 = nn.HybridSequential()
        self.up2.add(nn.Conv2D(c, 3, padding=1), nn.Activation("sigmoid"))

    def hybrid_forward(self, F, z, onehot):
        x = self.project(F.concat(z, onehot, dim=1))
        x = F.reshape(x, shape=(-1, *self._start))
        x = self.up1(F.UpSampling(x, scale=2, sample_type="nearest"))
        x = self.up2(F.UpSampling(x, scale=2, sample_type="nearest"))
        return F.reshape(x, shape=(0, -1))


class Discriminator(HybridBlock):
    """(images as rows, one-hot labels) -> one real/fake logit per image."""

    def __init__(self, cfg: GANConfig, feature_shape: tuple[int, ...], num_classes: int, **kw):
        super().__init__(**kw)
        self._shape = _image_shape(feature_shape)
        self.body = nn.HybridSequential()
        self.body.add(
            nn.Conv2D(cfg.channels // 2, 4, strides=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2D(cfg.channels, 4, strides=2, padding=1, use_bias=False),
            nn.BatchNorm(),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Dense(1),
        )

    def hybrid_forward(self, F, x, onehot):
        image = F.reshape(x, shape=(-1, *self._shape))
        # The label enters as constant feature maps, one per class.
        maps = F.broadcast_like(
            F.reshape(onehot, shape=(0, 0, 1, 1)), image, lhs_axes=(2, 3), rhs_axes=(2, 3)
        )
        return self.body(F.concat(image, maps, dim=1))
