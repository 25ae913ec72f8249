"""Training-sample augmentation on the worker's CPU, between decoding and the device copy.

Every random choice for a sample is a function of ``(seed, epoch, sample id)`` alone, computed
with a counter-based hash (SplitMix64) over whole arrays: no per-sample Python, no generator
state to carry through a checkpoint, and a resumed run (or another world size) augments each
sample exactly as the uninterrupted run did, so the exact-data-position promise holds.

Images (``feature_shape`` = (C, H, W)), stored as uint8 or float32, are transformed in their
stored dtype: random crop with zero padding, horizontal flip, random erasing (a rectangle of
2-33% of the image set to 0, aspect 0.3-3.3, as in Zhong et al. 2017). Float features can get
Gaussian noise.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.config import AugmentConfig
from pipeline.data.ingest import Batch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MASK = 0xFFFFFFFFFFFFFFFF


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, ids: np.ndarray, stream: int, count: int = 1) -> np.ndarray:
    """(len(ids), count) floats in [0, 1), a pure function of (seed, epoch, id, stream, k)."""
    key = (seed * 0x100000001B3 + epoch * 0x1F123BB5 + stream * 0x5851F42D) & _MASK
    with np.errstate(over="ignore"):
        base = _splitmix64(ids.astype(np.uint64) ^ np.uint64(key))
        k = np.arange(count, dtype=np.uint64) * _GOLDEN
        bits = _splitmix64(base[:, None] + k[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Augmenter:
    """``augment(batch, epoch)`` -> the batch with its training samples changed (build one
    only for an active config: ``AugmentConfig.active``)."""

    def __init__(self, cfg: AugmentConfig, feature_shape: tuple[int, ...], seed: int):
        self.cfg = cfg
        self.shape = feature_shape
        self.seed = seed

    def __call__(self, batch: Batch, epoch: int) -> Batch:
        if len(batch) == 0:
            return batch
        ids = batch.ids
        x = batch.features
        if self.cfg.on_images:
            c, h, w = self.shape
            images = x.reshape(len(x), c, h, w)
            if self.cfg.crop_padding:
                images = self._crop(images, uniforms(self.seed, epoch, ids, 1, 2))
            if self.cfg.flip:
                flip = uniforms(self.seed, epoch, ids, 2)[:, 0] < 0.5
                images = np.where(flip[:, None, None, None], images[..., ::-1], images)
            if self.cfg.erase_prob:
                images = self._erase(images, uniforms(self.seed, epoch, ids, 3, 5))
            x = images.reshape(len(x), -1)
        if self.cfg.noise_std:
            u = uniforms(self.seed, epoch, ids, 4, 2 * x.shape[1])
            normal = np.sqrt(-2 * np.log1p(-u[:, 0::2])) * np.cos(2 * math.pi * u[:, 1::2])
            x = x + (self.cfg.noise_std * normal).astype(x.dtype)
        return Batch(x, batch.labels, ids, scale=batch.scale)

    def _crop(self, images: np.ndarray, u: np.ndarray) -> np.ndarray:
        n, c, h, w = images.shape
        p = self.cfg.crop_padding
        padded = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=images.dtype)
        padded[:, :, p : p + h, p : p + w] = images
        oy = np.minimum((u[:, 0] * (2 * p + 1)).astype(np.int64), 2 * p)
        ox = np.minimum((u[:, 1] * (2 * p + 1)).astype(np.int64), 2 * p)
        rows = (oy[:, None] + np.arange(h))[:, None, :, None]
        cols = (ox[:, None] + np.arange(w))[:, None, None, :]
        samples = np.arange(n)[:, None, None, None]
        return padded[samples, np.arange(c)[None, :, None, None], rows, cols]

    def _erase(self, images: np.ndarray, u: np.ndarray) -> np.ndarray:
        h, w = images.shape[2:]
        chosen = u[:, 0] < self.cfg.erase_prob
        area = (0.02 + u[:, 1] * (0.33 - 0.02)) * h * w
        aspect = np.exp(np.log(0.3) + u[:, 2] * (np.log(1 / 0.3) - np.log(0.3)))
        eh = np.clip(np.sqrt(area * aspect), 1, h).astype(np.int64)
        ew = np.clip(np.sqrt(area / aspect), 1, w).astype(np.int64)
        y0 = (u[:, 3] * (h - eh + 1)).astype(np.int64)
        x0 = (u[:, 4] * (w - ew + 1)).astype(np.int64)
        yy = np.arange(h)[None, :, None]
        xx = np.arange(w)[None, None, :]
        inside = (
            (yy >= y0[:, None, None])
            & (yy < (y0 + eh)[:, None, None])
            & (xx >= x0[:, None, None])
            & (xx < (x0 + ew)[:, None, None])
            & chosen[:, None, None]
        )
        return np.where(inside[:, None, :, :], np.zeros((), images.dtype), images)
