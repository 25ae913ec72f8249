"""Augmentation: what each transform does, and that a sample's draw depends only on
(seed, epoch, id), so resuming (or another world size) sees the very same samples."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import AugmentConfig
from pipeline.data.augment import Augmenter, uniforms
from pipeline.data.ingest import Batch

SHAPE = (1, 8, 8)


def _batch(n: int = 400, dtype=np.uint8, first_id: int = 0) -> Batch:
    rng = np.random.default_rng(0)
    features = rng.integers(1, 256, (n, 64)).astype(dtype)  # no zeros: erasing shows
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    return Batch(features, np.zeros(n, dtype=np.int64), ids, scale=1 / 255)


def test_draws_depend_only_on_seed_epoch_and_id():
    ids = np.arange(1000, dtype=np.int64)
    a = uniforms(0, 3, ids, 1, 2)
    assert a.shape == (1000, 2) and (a >= 0).all() and (a < 1).all()
    np.testing.assert_array_equal(uniforms(0, 3, ids[500:], 1, 2), a[500:])  # any subset
    assert not np.array_equal(uniforms(0, 4, ids, 1, 2), a)  # another epoch
    assert not np.array_equal(uniforms(1, 3, ids, 1, 2), a)  # another seed
    assert abs(a.mean() - 0.5) < 0.03


def test_the_same_sample_is_augmented_alike_in_any_batch():
    aug = Augmenter(AugmentConfig(crop_padding=2, flip=True, erase_prob=0.5), SHAPE, seed=0)
    whole = aug(_batch(), epoch=1)
    part = _batch()[np.arange(100, 200)]
    np.testing.assert_array_equal(aug(part, epoch=1).features, whole.features[100:200])
    assert not np.array_equal(aug(_batch(), epoch=2).features, whole.features)
    assert whole.features.dtype == np.uint8 and whole.scale == 1 / 255


def test_flip_mirrors_about_half_the_images():
    batch = _batch()
    out = Augmenter(AugmentConfig(flip=True), SHAPE, 0)(batch, 0).features.reshape(-1, 8, 8)
    images = batch.features.reshape(-1, 8, 8)
    mirrored = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images, strict=True)])
    same = np.array([np.array_equal(o, i) for o, i in zip(out, images, strict=True)])
    assert (mirrored | same).all() and 0.4 < mirrored.mean() < 0.6


def test_crop_shifts_the_image_within_the_padding():
    batch = _batch()
    out = Augmenter(AugmentConfig(crop_padding=2), SHAPE, 0)(batch, 0).features.reshape(-1, 8, 8)
    images = batch.features.reshape(-1, 8, 8)
    for o, i in zip(out[:50], images[:50], strict=True):
        padded = np.pad(i, 2)
        offsets = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[dy : dy + 8, dx : dx + 8], o)
        ]
        assert offsets, "every output is a window of the padded image"
    assert not np.array_equal(out, images)


def test_erasing_blanks_one_rectangle_with_the_given_probability():
    batch = _batch()
    out = Augmenter(AugmentConfig(erase_prob=0.5), SHAPE, 0)(batch, 0).features.reshape(-1, 8, 8)
    erased = (out == 0).any(axis=(1, 2))
    assert 0.4 < erased.mean() < 0.6
    for image in out[erased][:20]:
        ys, xs = np.nonzero(image == 0)
        box = image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert (box == 0).all()  # one solid rectangle


def test_noise_on_float_features_has_the_asked_spread():
    batch = _batch(dtype=np.float32)
    batch = Batch(batch.features / 255, batch.labels, batch.ids)
    out = Augmenter(AugmentConfig(noise_std=0.1), (64,), 0)(batch, 0).features
    assert out.dtype == np.float32
    assert (out - batch.features).std() == pytest.approx(0.1, rel=0.05)


def test_a_resumed_epoch_trains_on_the_same_augmented_samples(tmp_path):
    """Through the reader: skipping steps (a resume) gives the tail of the full epoch."""
    from pipeline.data.contract import inspect_dataset
    from pipeline.data.datasets import Dataset, Split
    from pipeline.data.ingest import ShardReader, open_source
    from pipeline.data.prepare import write_dataset

    b = _batch(300)
    split = Split(b.features.reshape(-1, *SHAPE), np.arange(300) % 10, b.ids)
    splits = {"train": split, "val": split, "test": split}
    write_dataset(str(tmp_path / "d"), Dataset(splits, SHAPE, 10, 1 / 255), 100, 50)
    info = inspect_dataset(str(tmp_path / "d"), splits=("train",))
    aug = Augmenter(AugmentConfig(crop_padding=2, flip=True, erase_prob=0.3), SHAPE, 7)

    def epoch(skip: int) -> list[np.ndarray]:
        source = open_source(info, "train", memory=True)
        reader = ShardReader(source, info.splits["train"], 64, 0, 1, 7, 1 / 255, aug)
        return [b.features for b in reader.batches(2, 16, shuffle_rows=64, skip_steps=skip)]

    full, resumed = epoch(0), epoch(5)
    assert len(resumed) == len(full) - 5
    for a, r in zip(full[5:], resumed, strict=True):
        np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize(
    ("overrides", "shape", "scale", "message"),
    [
        (["augment.flip=true"], (64,), None, "need image features"),
        (["augment.noise_std=0.1"], (1, 8, 8), 1 / 255, "noise_std needs float features"),
    ],
)
def test_augmentations_that_do_not_fit_the_data_are_one_line(overrides, shape, scale, message):
    from pipeline.config import load_job_config
    from pipeline.data.contract import DatasetInfo
    from pipeline.errors import ConfigError
    from pipeline.preflight import _check_augment

    cfg = load_job_config("digits-fcn", overrides)
    with pytest.raises(ConfigError, match=message):
        _check_augment(cfg, DatasetInfo("data/x", shape, 10, feature_scale=scale))
