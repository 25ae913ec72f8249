"""The data sets ``jobs.prepare_data`` can write: where their rows come from, how they are
split. Each loader returns a :class:`Dataset` in memory; :mod:`pipeline.data.prepare` writes it.

* ``digits``: scikit-learn's 1,797 8x8 images (shipped with the package).
* ``fashion-mnist``: Zalando's 70,000 28x28 grey images, from the four idx files of Debian's
  ``dataset-fashion-mnist`` package or a folder holding them. The official 10,000-image test
  set stays the test split, so the published results table applies to it.
* ``synthetic``: seeded classes of any size, for benchmarks.
* ``clinic``: not the contract but a user's own mixed table, as pandas writes it
  (:func:`clinic_table`): to try, test and measure tables with categories and gaps.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.contract import SPLITS
from pipeline.errors import DataError

#: Where Debian's dataset-fashion-mnist package puts the idx files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Zalando's names of Fashion-MNIST's classes, index = label (github.com/zalandoresearch).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class Split:
    """One split in memory: features (N, *feature_shape) float32 (or uint8, then scaled by the
    data set's ``feature_scale``), labels (N,), ids (N,)."""

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


@dataclass(frozen=True)
class Dataset:
    splits: dict[str, Split]
    feature_shape: tuple[int, ...]
    num_classes: int
    #: For integer features: what one unit is worth (1/255 for 8-bit pixels); None for floats.
    feature_scale: float | None = None
    source: str = ""
    #: The classes' names, index = class (written to the schema metadata); empty: numbers only.
    class_names: tuple[str, ...] = ()


def _stratified(y: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Indices of a ``fraction`` of each class, drawn with ``rng``."""
    picked = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        picked.append(idx[: round(len(idx) * fraction)])
    return np.concatenate(picked)


def load_digits_splits(seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1):
    """scikit-learn's digits (1,797 8x8 images shipped with the package, no download).

    Pixel values 0..16 are scaled to [0, 1]. The split is stratified by label and fixed by
    ``seed``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    ids = np.arange(len(y), dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    splits = {}
    for name, chunks in parts.items():
        idx = rng.permutation(np.concatenate(chunks))
        splits[name] = Split(x[idx], y[idx], ids[idx])
    return Dataset(splits, (1, 8, 8), 10, source=f"scikit-learn digits (seed {seed})")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as a uint8 array: 2 zero bytes, dtype 0x08 (uint8), the
    number of dimensions, that many big-endian int32 sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path}: not an idx file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: {body.size} values for shape {shape}; the file is truncated")
    return body.reshape(shape)


def load_fashion_mnist(source: Path | None = None, seed: int = 0, val_rows: int = 5000):
    """Fashion-MNIST from its four idx files in ``source``: the official 60,000 training
    images (``val_rows`` of them carved out as a stratified validation split) and the
    official 10,000 test images. Pixels stay uint8 (scale 1/255)."""
    source = FASHION_MNIST_DIR if source is None else source
    missing = [
        n for pair in FASHION_MNIST_FILES.values() for n in pair if not (source / n).is_file()
    ]
    if missing:
        how = (
            "install Debian's package (apt-get install dataset-fashion-mnist; `make data-fashion`"
            " does it when run as root)"
            if source == FASHION_MNIST_DIR
            else "point --source at the folder that holds the four idx files"
        )
        raise DataError(f"Fashion-MNIST: {source} has no {missing[0]}; {how}")
    arrays = {}
    for split, (images, labels) in FASHION_MNIST_FILES.items():
        x, y = read_idx(source / images), read_idx(source / labels)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
            raise DataError(f"{source}: {images} / {labels} hold {x.shape} and {y.shape}")
        arrays[split] = (x.reshape(-1, 1, 28, 28), y.astype(np.int64))
    x, y = arrays["train"]
    rng = np.random.default_rng(seed)
    val = _stratified(y, rng, val_rows / len(y))
    train = rng.permutation(np.setdiff1d(np.arange(len(y)), val))
    val = rng.permutation(val)
    tx, ty = arrays["test"]
    test_ids = np.arange(len(ty), dtype=np.int64) + len(y)  # after the 60,000 training ids
    splits = {
        "train": Split(x[train], y[train], train.astype(np.int64)),
        "val": Split(x[val], y[val], val.astype(np.int64)),
        "test": Split(tx, ty, test_ids),
    }
    return Dataset(
        splits,
        (1, 28, 28),
        10,
        1 / 255,
        f"Fashion-MNIST idx files in {source} (seed {seed})",
        FASHION_MNIST_CLASSES,
    )


@dataclass(frozen=True)
class StreamedDataset:
    """A data set too large to hold: per split, one function per Parquet file that makes
    that file's rows when it is written (in any order, on any thread)."""

    files: dict[str, list[Callable[[], Split]]]
    feature_shape: tuple[int, ...]
    num_classes: int
    feature_scale: float | None = None
    source: str = ""
    class_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, dataset: Dataset, rows_per_file: int) -> StreamedDataset:
        """An in-memory data set cut into files of ``rows_per_file`` rows."""

        def piece(split: Split, start: int) -> Callable[[], Split]:
            cut = slice(start, start + rows_per_file)
            return lambda: Split(split.features[cut], split.labels[cut], split.ids[cut])

        files = {
            name: [
                piece(split, start) for start in range(0, max(1, len(split.labels)), rows_per_file)
            ]
            for name, split in dataset.splits.items()
        }
        return cls(
            files,
            dataset.feature_shape,
            dataset.num_classes,
            dataset.feature_scale,
            dataset.source,
            dataset.class_names,
        )

    def materialize(self) -> Dataset:
        """Every file's rows in memory, as one :class:`Dataset` (small sets only)."""
        splits = {}
        for name, makers in self.files.items():
            parts = [make() for make in makers]
            splits[name] = Split(
                *(
                    np.concatenate([getattr(p, f) for p in parts])
                    for f in ("features", "labels", "ids")
                )
            )
        return Dataset(
            splits,
            self.feature_shape,
            self.num_classes,
            self.feature_scale,
            self.source,
            self.class_names,
        )


def synthetic_files(
    rows: int,
    feature_shape: tuple[int, ...] = (1, 8, 8),
    num_classes: int = 10,
    seed: int = 0,
    rows_per_file: int = 128,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> StreamedDataset:
    """A seeded synthetic classification set of any size, made file by file: each class is a
    fixed random prototype in [0, 1] plus noise, so models can learn it and sizes scale
    freely. Ids run 0..rows-1 (test first, then val, then train); a file's rows follow from
    (seed, its first id) alone, so files can be made in any order and memory holds only the
    files being written."""
    prototypes = np.random.default_rng(seed).random((num_classes, *feature_shape), np.float32)
    n_test = int(rows * test_fraction)
    n_val = int(rows * val_fraction)
    bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, rows)}

    def make(first: int, n: int) -> Callable[[], Split]:
        def rows_of_file() -> Split:
            rng = np.random.default_rng([seed, first])
            labels = rng.integers(0, num_classes, n, dtype=np.int64)
            noise = rng.standard_normal((n, *feature_shape), np.float32)
            features = prototypes[labels] + np.float32(0.3) * noise
            np.clip(features, 0.0, 1.0, out=features)
            return Split(features, labels, np.arange(first, first + n, dtype=np.int64))

        return rows_of_file

    files = {
        name: [
            make(first, min(rows_per_file, hi - first))
            for first in range(lo, max(hi, lo + 1), rows_per_file)
        ]
        for name, (lo, hi) in bounds.items()
    }
    return StreamedDataset(
        files, tuple(feature_shape), num_classes, source=f"synthetic (seed {seed})"
    )


def synthetic_splits(
    rows: int,
    feature_shape: tuple[int, ...] = (1, 8, 8),
    num_classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """:func:`synthetic_files`' rows in memory (for small sets: tests, benchmarks)."""
    return synthetic_files(
        rows, feature_shape, num_classes, seed, rows_per_file=1 << 16
    ).materialize()


#: Ids of a replicated Fashion-MNIST's copy c are the original ids + c * COPY_ID_STRIDE.
COPY_ID_STRIDE = 70_000


def fashion_copies(
    source: Path | None,
    seed: int,
    copies: int,
    rows_per_file: int,
    shift: int = 2,
    val_rows: int = 5000,
) -> StreamedDataset:
    """Fashion-MNIST with its training split repeated ``copies`` times, each copy after the
    first varied per image (a shift of up to ``shift`` pixels each way, a mirror image half of
    the time, drawn from (seed, copy)): a set of real images of any size, for measuring scale.
    Validation and test stay the official ones, so accuracy means what it always did."""
    base = load_fashion_mnist(source, seed=seed, val_rows=val_rows)
    streamed = StreamedDataset.of(base, rows_per_file)
    train = base.splits["train"]

    def make(copy: int, start: int) -> Callable[[], Split]:
        def rows_of_file() -> Split:
            cut = slice(start, start + rows_per_file)
            features = train.features[cut]
            if copy:
                rng = np.random.default_rng([seed, copy, start])
                features = _vary(features, rng, shift)
            return Split(features, train.labels[cut], train.ids[cut] + copy * COPY_ID_STRIDE)

        return rows_of_file

    streamed.files["train"] = [
        make(copy, start)
        for copy in range(copies)
        for start in range(0, len(train.labels), rows_per_file)
    ]
    return dataclasses.replace(
        streamed, source=f"{base.source}, training split x{copies} (shifted, mirrored copies)"
    )


def _vary(images: np.ndarray, rng: np.random.Generator, shift: int) -> np.ndarray:
    """(N, C, H, W) images each moved by up to ``shift`` pixels (zeros come in) and mirrored
    left-right half of the time."""
    n, _, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (shift, shift), (shift, shift)))
    dy, dx = rng.integers(0, 2 * shift + 1, (2, n))
    rows = (dy[:, None] + np.arange(h))[:, None, :, None]
    cols = (dx[:, None] + np.arange(w))[:, None, None, :]
    moved = padded[
        np.arange(n)[:, None, None, None],
        np.arange(images.shape[1])[None, :, None, None],
        rows,
        cols,
    ]
    mirror = rng.random(n) < 0.5
    moved[mirror] = moved[mirror][..., ::-1]
    return moved


def clinic_table(seed: int = 0):
    """A mixed table as a clinic's export gives it: scikit-learn's breast cancer measurements
    (569 rows, shipped with the package) as 10 float32 and 20 float64 columns, an int column
    (``visits``), a string column (``site``: 3 values, related to the diagnosis but not
    deciding it), about 5% gaps in ``mean_texture`` and in ``site``, string labels ``benign``
    / ``malignant``, and each row's split in ``split`` (train/val/test, 70/15/15, drawn from
    ``seed``). A pandas DataFrame."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(seed)
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    frame = pd.DataFrame(
        {
            name: data.data[:, i].astype(np.float32 if i < 10 else np.float64)
            for i, name in enumerate(names)
        }
    )
    frame["visits"] = rng.integers(1, 9, len(frame)).astype(np.int64)
    # The site that referred the patient: oncology for most malignant cases, not all.
    oncology = rng.random(len(frame)) < np.where(data.target == 0, 0.6, 0.15)
    site = np.where(oncology, "oncology", rng.choice(["gp", "screening"], len(frame)))
    frame["site"] = pd.Series(site, dtype=object)
    frame.loc[rng.random(len(frame)) < 0.05, "mean_texture"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.05, "site"] = None
    frame["diagnosis"] = np.where(data.target == 1, "benign", "malignant")
    frame["split"] = rng.choice(["train", "val", "test"], len(frame), p=[0.7, 0.15, 0.15])
    return frame
