"""Writing data sets in the contract's layout (see :mod:`pipeline.data.contract`).

Files are written split by split, and ``_manifest.json`` (files, rows, bytes, schema, SHA-256
checksums) last, so a reader that finds the manifest knows the data set is complete.
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.data import manifest as manifests
from pipeline.data import unique_ids
from pipeline.data.contract import (
    FEATURES,
    ID,
    IDS_UNIQUE,
    LABEL,
    MANIFEST,
    SPLITS,
    ids_proof,
    make_schema,
)
from pipeline.data.datasets import Dataset, Split, StreamedDataset
from pipeline.data.parallel import imap_ordered
from pipeline.data.unique_ids import UniqueIds
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
        # one, which training refuses (data.require_manifest). The rest in one call, which
        # S3 serves with batched deletes (1,000 keys a request), not a request a file.
        for item in existing:
            if item.base_name == MANIFEST:
                loc.filesystem.delete_file(item.path)
        loc.filesystem.delete_dir_contents(loc.path)
    except OSError as exc:
        raise StorageError(f"{loc.uri}: cannot prepare the output location ({exc})") from None


def write_dataset(
    uri: str,
    dataset: Dataset | StreamedDataset,
    rows_per_file: int = 500,
    row_group_size: int = 128,
    overwrite: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
    s3: S3Config | None = None,
    threads: int | None = None,
    ids_mb: float = unique_ids.DEFAULT_MEMORY_MB,
) -> dict:
    """Write every split as Parquet parts under ``uri``, then the manifest; return the manifest.

    Files are made and written ``threads`` at a time (:data:`~pipeline.data.parallel.IO_THREADS`
    by default; a write to S3 is mostly waiting), so memory holds about that many files' rows,
    whatever the size of a :class:`StreamedDataset`. Every id is checked unique as it is
    written (in ``ids_mb`` of memory, then spilled to disk) and, when it is, the manifest
    records the proof, so that no reader has to read the ids again. Repeated ids are written
    as given, without the proof: every reader then checks, and refuses them. Features are
    stored as uint8 when the data set has a ``feature_scale``, else float32."""
    if rows_per_file < 1 or row_group_size < 1:
        raise DataError("rows_per_file and row_group_size must be >= 1")
    if isinstance(dataset, Dataset):
        dataset = StreamedDataset.of(dataset, rows_per_file)
    check_access(uri, s3)
    loc = resolve(uri, s3)
    _ensure_empty(loc, overwrite)
    schema = make_schema(
        dataset.feature_shape, dataset.num_classes, dataset.feature_scale, dataset.class_names
    )
    manifest = manifests.new_manifest(
        dataset.feature_shape, dataset.num_classes, schema, dataset.source
    )
    owners = itertools.count()
    with UniqueIds(ids_mb) as seen:

        def write_one(name: str, part: int, make: Callable[[], Split]) -> dict:
            rows = make()
            seen.add(np.asarray(rows.ids, np.int64), next(owners))
            buf = io.BytesIO()
            pq.write_table(
                _table(rows, schema), buf, row_group_size=row_group_size, compression="zstd"
            )
            data = buf.getbuffer()
            fname = f"part-{part:05d}.parquet"
            try:
                with loc.filesystem.open_output_stream(loc.join(name, fname)) as out:
                    out.write(data)
            except OSError as exc:
                raise StorageError(f"{loc.uri}/{name}/{fname}: write failed ({exc})") from None
            return manifests.file_entry(fname, data)

        for name, makers in dataset.files.items():
            try:
                loc.filesystem.create_dir(loc.join(name), recursive=True)
            except OSError as exc:
                raise StorageError(f"{loc.uri}/{name}: cannot create ({exc})") from None
            report = _Progress(name, len(makers), progress)
            files = []
            jobs = ((name, part, make) for part, make in enumerate(makers))
            for entry in imap_ordered(lambda job: write_one(*job), jobs, threads):
                files.append(entry)
                report.file_done(entry["rows"], entry["bytes"])
            manifest["splits"][name] = {"rows": sum(f["rows"] for f in files), "files": files}
            report.done()
        repeat = seen.first_repeat()
    if repeat is None:
        manifest[IDS_UNIQUE] = ids_proof(manifest["splits"])
    manifests.save(loc, manifest)
    return manifest


class _Progress:
    """A split's line when it is written, and one every ``every_s`` seconds while a large one
    is being written (files, rows, MB/s)."""

    def __init__(self, split: str, files: int, emit: Callable[[str], None], every_s: float = 10):
        self.split, self.files, self.emit, self.every_s = split, files, emit, every_s
        self.done_files = self.rows = self.bytes = 0
        self.start = self.last = time.monotonic()

    def file_done(self, rows: int, size: int) -> None:
        self.done_files += 1
        self.rows += rows
        self.bytes += size
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done_files < self.files:
            self.last = now
            rate = self.bytes / 2**20 / (now - self.start)
            self.emit(
                f"  {self.split:<5} {self.done_files:,}/{self.files:,} files, {self.rows:,} rows,"
                f" {rate:.0f} MB/s"
            )

    def done(self) -> None:
        self.emit(f"  {self.split:<5} {self.rows:>7} rows in {self.done_files} files")


__all__ = ["FEATURES", "ID", "LABEL", "Dataset", "Split", "StreamedDataset", "write_dataset"]


def write_table_splits(uri: str, frame, overwrite: bool = False) -> dict[str, int]:
    """A pandas DataFrame with a ``split`` column written as a user would: ``train/``,
    ``val/``, ``test/`` folders of one Parquet file each, by ``Table.from_pandas`` (pandas'
    own metadata, index and all), no manifest. Rows per split."""
    loc = resolve(uri)
    _ensure_empty(loc, overwrite)
    rows = {}
    for split in SPLITS:
        part = frame[frame["split"] == split].drop(columns="split")
        table = pa.Table.from_pandas(part)
        try:
            loc.filesystem.create_dir(loc.join(split), recursive=True)
            path = loc.join(f"{split}/part-0.parquet")
            pq.write_table(table, path, filesystem=loc.filesystem, row_group_size=128)
        except OSError as exc:
            raise StorageError(f"{loc.uri}: cannot write the {split} split ({exc})") from None
        rows[split] = len(part)
    return rows
