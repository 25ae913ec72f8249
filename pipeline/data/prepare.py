"""Writing data sets in the contract's layout (see :mod:`pipeline.data.contract`).

Files are written split by split, and ``_manifest.json`` (files, rows, bytes, schema, SHA-256
checksums) last, so a reader that finds the manifest knows the data set is complete.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.data import manifest as manifests
from pipeline.data.contract import (
    FEATURES,
    ID,
    IDS_UNIQUE,
    LABEL,
    MANIFEST,
    first_repeat,
    ids_proof,
    make_schema,
)
from pipeline.data.datasets import Dataset, Split
from pipeline.errors import DataError, StorageError
from pipeline.storage import Location, check_access, resolve


def _table(split: Split, schema: pa.Schema) -> pa.Table:
    value_type = schema.field(FEATURES).type.value_type
    dtype = np.uint8 if pa.types.is_uint8(value_type) else np.float32
    flat = np.ascontiguousarray(split.features.reshape(len(split.labels), -1), dtype=dtype)
    features = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), value_type), flat.shape[1])
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
    dataset: Dataset,
    rows_per_file: int = 500,
    row_group_size: int = 128,
    overwrite: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
    s3: S3Config | None = None,
) -> dict:
    """Write every split as Parquet parts under ``uri``, then the manifest; return the manifest.
    Features are stored as uint8 when the data set has a ``feature_scale``, else float32."""
    if rows_per_file < 1 or row_group_size < 1:
        raise DataError("rows_per_file and row_group_size must be >= 1")
    check_access(uri, s3)
    loc = resolve(uri, s3)
    _ensure_empty(loc, overwrite)
    shape, classes = dataset.feature_shape, dataset.num_classes
    schema = make_schema(shape, classes, dataset.feature_scale)
    manifest = manifests.new_manifest(shape, classes, schema, dataset.source)
    # The ids are all in memory here: checked once, and when unique the manifest says so,
    # so that no reader has to read them again (contract.check_unique_ids). Repeated ids are
    # written as given, without the proof: every reader then checks, and refuses them.
    repeat = first_repeat([np.asarray(split.ids, np.int64) for split in dataset.splits.values()])
    for name, split in dataset.splits.items():
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
            files.append(manifests.file_entry(fname, data))
        manifest["splits"][name] = {"rows": table.num_rows, "files": files}
        progress(f"  {name:<5} {table.num_rows:>7} rows in {len(files)} files")
    if repeat is None:
        manifest[IDS_UNIQUE] = ids_proof(manifest["splits"])
    manifests.save(loc, manifest)
    return manifest


__all__ = ["FEATURES", "ID", "LABEL", "Dataset", "Split", "write_dataset"]
