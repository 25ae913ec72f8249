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
