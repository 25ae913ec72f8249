"""Fingerprints of a data set: the same digest means the same bytes in the same splits.

A split's digest is a SHA-256 over its files' names, row counts and the SHA-256 the manifest
records for each (and, for a user's own Parquet, the rule that picks the split's rows). It is
read from the footers and the manifest only, so computing it costs nothing. MLflow shows it as
the run's dataset inputs (pipeline/tracking/lineage.py) and on the registered model version.
"""

from __future__ import annotations

import hashlib
import json

from pipeline.data.contract import DatasetInfo

SPLITS = ("train", "val", "test")


def split_digest(info: DatasetInfo, split: str) -> str:
    """The split's fingerprint (hex SHA-256); see the module's text."""
    part = info.splits[split]
    h = hashlib.sha256()
    shas = part.sha256 or (None,) * len(part.files)
    groups = part.row_groups or ((),) * len(part.files)
    for path, sha, rows in zip(part.files, shas, groups, strict=True):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        h.update(json.dumps([name, sum(rows), sha or ""]).encode() + b"\n")
    if info.mapping is not None and split in info.mapping.selects:
        h.update(repr(info.mapping.selects[split]).encode())
    return h.hexdigest()


def data_digest(info: DatasetInfo) -> str:
    """One fingerprint of all the splits a job read (the model version's data tag)."""
    h = hashlib.sha256()
    for split in SPLITS:
        if split in info.splits:
            h.update(f"{split}={split_digest(info, split)}\n".encode())
    return h.hexdigest()
