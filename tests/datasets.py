"""Data sets that break the contract in one place while their manifest stays consistent:
what a buggy writer upstream produces, not what a corrupt disk does."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.contract import FEATURES, ID, LABEL, MANIFEST


def rewrite_file(root: Path, split: str, index: int, change: Callable[[pa.Table], pa.Table]):
    """Apply ``change`` to the index-th file of ``split`` and update the manifest to match
    (rows, bytes, SHA-256). Returns the file's path."""
    victim = sorted((root / split).glob("*.parquet"))[index]
    table = change(pq.read_table(victim))
    pq.write_table(table, victim, row_group_size=64)
    data = victim.read_bytes()
    manifest = json.loads((root / MANIFEST).read_text())
    entry = manifest["splits"][split]
    for f in entry["files"]:
        if f["path"] == victim.name:
            entry["rows"] += table.num_rows - f["rows"]
            f.update(rows=table.num_rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (root / MANIFEST).write_text(json.dumps(manifest))
    return victim


def copy_set(source: str, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def with_label(table: pa.Table, row: int, label: int | None) -> pa.Table:
    labels = table.column(LABEL).to_pylist()
    labels[row] = label
    field = table.schema.field(LABEL).with_nullable(label is None)
    return table.set_column(2, field, pa.array(labels, pa.int64()))


def with_feature(table: pa.Table, row: int, value: float) -> pa.Table:
    feats = table.column(FEATURES).combine_chunks()
    flat = feats.flatten().to_numpy().copy()
    width = feats.type.list_size
    flat[row * width] = value
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)
    return table.set_column(1, table.schema.field(FEATURES), column)


def with_id(table: pa.Table, row: int, new_id: int) -> pa.Table:
    ids = table.column(ID).to_numpy().copy()
    ids[row] = new_id
    return table.set_column(0, table.schema.field(ID), pa.array(ids, pa.int64()))


def first_id(root: Path, split: str) -> int:
    return int(np.min(pq.read_table(sorted((root / split).glob("*.parquet"))[0]).column(ID)))


# -- Parquet as other tools write it (the user's own Parquet) -------------------------------------

DIGIT_NAMES = np.array(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
)


def digits_as_pandas(root: Path, split_column: bool = False, files: int = 3) -> Path:
    """The digits as a pandas user writes them through Spark-like part files: 64 float64 columns
    ``pixel_00``..``pixel_63``, the class as a word in ``digit``, no id, ``_SUCCESS`` beside;
    with ``split_column``, a ``subset`` column of train/validation/test (80/10/10)."""
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"pixel_{i:02d}" for i in range(64)])
    frame.insert(0, "digit", DIGIT_NAMES[digits.target])
    if split_column:
        subset = np.random.default_rng(1).choice(
            ["train", "validation", "test"], len(frame), p=[0.8, 0.1, 0.1]
        )
        frame["subset"] = subset
    root.mkdir(parents=True)
    bounds = np.linspace(0, len(frame), files + 1).astype(int)
    for i in range(files):
        part = frame.iloc[bounds[i] : bounds[i + 1]]
        # pandas' index travels as a column: one more column the mapping must ignore.
        part.to_parquet(root / f"part-{i:05d}-c000.snappy.parquet", row_group_size=200)
    (root / "_SUCCESS").touch()
    return root


def clinic_as_pandas(root: Path, seed: int = 0) -> Path:
    """The clinic's table (``pipeline.data.datasets.clinic_table``) written by
    ``DataFrame.to_parquet`` into train/, val/, test/."""
    from pipeline.data.datasets import clinic_table

    frame = clinic_table(seed)
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        part = frame[frame["split"] == split].drop(columns="split")
        part.to_parquet(root / split / "part-0.parquet", row_group_size=128)
    return root


def png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The digits as 8x8 uint8 images (0..16 scaled to 0..255) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * 255 / 16).astype(np.uint8), digits.target


HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def digits_as_hf_images(root: Path, test_rows: int = 300) -> Path:
    """The digits as Hugging Face ``datasets`` writes an image set per split: ``image`` a
    ``{bytes, path}`` struct of PNG bytes, ``label`` an integer (ClassLabel); train/ and test/
    folders, no val/ and no id."""
    images, labels = digit_images()
    column = pa.array(
        [{"bytes": png(img), "path": f"{i}.png"} for i, img in enumerate(images)], HF_IMAGE
    )
    table = pa.table({"image": column, "label": pa.array(labels, pa.int64())})
    cut = len(labels) - test_rows
    for split, part in (("train", table.slice(0, cut)), ("test", table.slice(cut))):
        (root / split).mkdir(parents=True)
        pq.write_table(part, root / split / f"{split}-00000-of-00001.parquet", row_group_size=256)
    return root
