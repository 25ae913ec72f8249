"""Writing data sets in the contract's layout (see :mod:`pipeline.data.contract`).

Files are written split by split, and ``_manifest.json`` (files, rows, bytes, schema, SHA-256
checksums) last, so a reader that finds the manifest knows the data set is complete.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.data import manifest as manifests
from pipeline.data.contract import (
    FEATURES,
    ID,
    LABEL,
    MANIFEST,
    SPLITS,
    make_schema,
)
from pipeline.errors import DataError, StorageError
from pipeline.storage import Location, check_access, resolve


@dataclass(frozen=True)
class Split:
    """One split in memory: features (N, *feature_shape) float32, labels (N,), ids (N,)."""

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


def load_digits_splits(seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1):
    """scikit-learn's digits (1,797 8x8 images shipped with the package, no download).

    Pixel values 0..16 are scaled to [0, 1]. The split is stratified by label and fixed by
    ``seed``. Returns ({split: Split}, feature_shape, num_classes).
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
    return splits, (1, 8, 8), 10


def synthetic_splits(
    rows: int,
    feature_shape: tuple[int, ...] = (1, 8, 8),
    num_classes: int = 10,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
):
    """A seeded synthetic classification set of any size: each class is a fixed random
    prototype in [0, 1] plus noise, so models can learn it and sizes scale freely.

    Returns ({split: Split}, feature_shape, num_classes) like :func:`load_digits_splits`.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.random((num_classes, *feature_shape), dtype=np.float32)
    labels = rng.integers(0, num_classes, rows, dtype=np.int64)
    features = prototypes[labels] + rng.normal(0, 0.3, (rows, *feature_shape)).astype(np.float32)
    np.clip(features, 0.0, 1.0, out=features)
    ids = np.arange(rows, dtype=np.int64)
    n_test = int(rows * test_fraction)
    n_val = int(rows * val_fraction)
    cuts = {
        "test": slice(0, n_test),
        "val": slice(n_test, n_test + n_val),
        "train": slice(n_test + n_val, rows),
    }
    splits = {k: Split(features[c], labels[c], ids[c]) for k, c in cuts.items()}
    return splits, tuple(feature_shape), num_classes


def _table(split: Split, schema: pa.Schema) -> pa.Table:
    flat = np.ascontiguousarray(split.features.reshape(len(split.labels), -1), dtype=np.float32)
    features = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
    return pa.Table.from_arrays(
        [pa.array(split.ids, pa.int64()), features, pa.array(split.labels, pa.int64())],
        schema=schema,
    )


def _ensure_empty(loc: Location, overwrite: bool) -> None:
    try:
        info = loc.filesystem.get_file_info(loc.path)
        if info.type == pafs.FileType.NotFound:
            loc.filesystem.create_dir(loc.path, recursive=True)
            return
        existing = loc.filesystem.get_file_info(pafs.FileSelector(loc.path, recursive=False))
        if existing and not overwrite:
            raise DataError(f"{loc.uri} is not empty; pass --overwrite to replace its contents")
        # The manifest goes first: a write that crashes from here on leaves a set without
        # one, which training refuses (data.require_manifest).
        existing.sort(key=lambda item: item.base_name != MANIFEST)
        for item in existing:
            if item.type == pafs.FileType.Directory:
                loc.filesystem.delete_dir(item.path)
            else:
                loc.filesystem.delete_file(item.path)
    except OSError as exc:
        raise StorageError(f"{loc.uri}: cannot prepare the output location ({exc})") from None


def write_dataset(
    uri: str,
    splits: dict[str, Split],
    feature_shape: tuple[int, ...],
    num_classes: int,
    rows_per_file: int = 500,
    row_group_size: int = 128,
    overwrite: bool = False,
    source: str = "",
    progress: Callable[[str], None] = lambda _msg: None,
    s3: S3Config | None = None,
) -> dict:
    """Write every split as Parquet parts under ``uri``, then the manifest; return the manifest."""
    if rows_per_file < 1 or row_group_size < 1:
        raise DataError("rows_per_file and row_group_size must be >= 1")
    check_access(uri, s3)
    loc = resolve(uri, s3)
    _ensure_empty(loc, overwrite)
    schema = make_schema(feature_shape, num_classes)
    manifest = manifests.new_manifest(feature_shape, num_classes, schema, source)
    for name, split in splits.items():
        table = _table(split, schema)
        files = []
        try:
            loc.filesystem.create_dir(loc.join(name), recursive=True)
        except OSError as exc:
            raise StorageError(f"{loc.uri}/{name}: cannot create ({exc})") from None
        n_files = max(1, math.ceil(table.num_rows / rows_per_file))
        for part in range(n_files):
            chunk = table.slice(part * rows_per_file, rows_per_file)
            buf = io.BytesIO()
            pq.write_table(chunk, buf, row_group_size=row_group_size, compression="zstd")
            data = buf.getvalue()
            fname = f"part-{part:05d}.parquet"
            try:
                with loc.filesystem.open_output_stream(loc.join(name, fname)) as out:
                    out.write(data)
            except OSError as exc:
                raise StorageError(f"{loc.uri}/{name}/{fname}: write failed ({exc})") from None
            files.append(manifests.file_entry(fname, chunk.num_rows, data))
        manifest["splits"][name] = {"rows": table.num_rows, "files": files}
        progress(f"  {name:<5} {table.num_rows:>7} rows in {len(files)} files")
    manifests.save(loc, manifest)
    return manifest


__all__ = [
    "FEATURES",
    "ID",
    "LABEL",
    "Split",
    "load_digits_splits",
    "synthetic_splits",
    "write_dataset",
]
