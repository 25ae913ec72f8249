"""From Parquet files to per-worker batches: the datasets the driver builds, and the batches
each worker turns into arrays.

Sharding rules (the driver side, :func:`build_datasets`):

* Ray Train splits each dataset with ``streaming_split(world_size, equal=True)``: per epoch the
  shards are disjoint and every shard has the same number of rows, so every rank runs the same
  number of steps and no allreduce waits for a rank that ran out of data.
* ``equal=True`` drops up to ``world_size - 1`` rows when the total does not divide. To cover
  every row, the dataset is padded up to a multiple of the world size with copies of its first
  rows whose label is :data:`PAD_LABEL`; the loss and the metrics give them weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipeline.data.contract import FEATURES, ID, LABEL, DatasetInfo
from pipeline.config import S3Config
from pipeline.errors import DataError
from pipeline.storage import resolve

if TYPE_CHECKING:
    import ray.data

#: Label of padding rows: masked out of the loss and of every metric.
PAD_LABEL = -1


def padding_rows(total: int, world_size: int) -> int:
    """How many rows make ``total`` a multiple of ``world_size``."""
    return (-total) % world_size


def steps_per_epoch(total: int, world_size: int, batch_size: int) -> int:
    """Batches each rank iterates per epoch (the last one may be partial)."""
    per_rank = (total + padding_rows(total, world_size)) // world_size
    return -(-per_rank // batch_size)


def _mark_padding(batch: pa.Table) -> pa.Table:
    labels = pa.array(np.full(batch.num_rows, PAD_LABEL, dtype=np.int64))
    index = batch.schema.get_field_index(LABEL)
    return batch.set_column(index, batch.schema.field(index), labels)


def should_cache(info: DatasetInfo, policy: str, max_mb: int) -> bool:
    """Whether the splits are read once into Ray's object store (see ``data.cache``).

    Each pass of Ray Data's streaming executor over Parquet costs seconds of fixed overhead
    (measured: 4-7 s for 1,439 rows in 12 files on 2 cores, and one Ray worker process per
    concurrent read task), so small data sets are read once and split from memory every
    epoch; large ones stream instead of being held in memory (make bench's rss_growth
    measures how far a worker's memory still grows with the data set).
    """
    if policy == "auto":
        return sum(s.bytes for s in info.splits.values()) <= max_mb * 2**20
    return policy == "memory"


def _read_cached(
    files: tuple[str, ...],
    filesystem,
    world_size: int,
    sha256: tuple[str | None, ...] = (),
    uri_of=lambda path: path,
) -> list[pa.Table]:
    """The files as Arrow tables (one block each), padded to a multiple of world_size rows.

    Each file is read whole, so its SHA-256 is checked against the manifest's for free.
    """
    import hashlib

    import pyarrow.parquet as pq

    if filesystem is None:
        filesystem = pafs.LocalFileSystem()
    tables = []
    for f, expected in zip(files, sha256 or [None] * len(files), strict=True):
        try:
            with filesystem.open_input_file(f) as fh:
                data = fh.read_buffer()
            if expected and hashlib.sha256(data).hexdigest() != expected:
                raise DataError(
                    f"{uri_of(f)}: SHA-256 does not match _manifest.json; the file was changed "
                    "or corrupted: re-run jobs.prepare_data"
                )
            table = pq.read_table(pa.BufferReader(data), columns=[ID, FEATURES, LABEL])
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{uri_of(f)}: cannot read ({exc}); replace or remove the file") from None
        tables.append(table)
    pad = padding_rows(sum(t.num_rows for t in tables), world_size)
    if pad:
        tables.append(_mark_padding(tables[0].slice(0, pad)))
    return tables


def build_datasets(
    info: DatasetInfo, world_size: int, cache: bool = False, s3: S3Config | None = None
) -> dict[str, ray.data.Dataset]:
    """One Ray dataset per split, each padded to a multiple of ``world_size`` rows.

    ``cache``: read the files once, here, into the object store (``ray.data.from_arrow``);
    otherwise every epoch streams them from storage (``ray.data.read_parquet``).
    """
    import ray.data

    loc = resolve(info.uri, s3)
    datasets: dict[str, ray.data.Dataset] = {}
    for split, split_info in info.splits.items():
        if cache:
            tables = _read_cached(
                split_info.files, loc.filesystem, world_size, split_info.sha256, loc.uri_of
            )
            datasets[split] = ray.data.from_arrow(tables)
            continue
        ds = ray.data.read_parquet(
            list(split_info.files),
            filesystem=loc.filesystem,
            columns=[ID, FEATURES, LABEL],
        )
        pad = padding_rows(split_info.rows, world_size)
        if pad:
            extra = ds.limit(pad).map_batches(_mark_padding, batch_format="pyarrow")
            ds = ds.union(extra)
        datasets[split] = ds
    return datasets


@dataclass(frozen=True)
class Batch:
    """One batch as numpy arrays: features (N, D) float32, labels (N,) int64, ids (N,)."""

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """1.0 for real rows, 0.0 for padding."""
        return (self.labels != PAD_LABEL).astype(np.float32)

    @property
    def num_real(self) -> int:
        return int(np.count_nonzero(self.labels != PAD_LABEL))


def arrow_to_batch(table: pa.Table, num_features: int) -> Batch:
    """A pyarrow batch -> numpy, without per-row Python objects.

    The features column is a fixed-size list: its flat child array reshapes to (N, D) with
    no copy when the batch is a single chunk.
    """
    feats = table.column(FEATURES)
    feats = feats.combine_chunks() if feats.num_chunks != 1 else feats.chunk(0)
    if feats.null_count:
        raise ValueError("features column holds nulls")
    flat = feats.flatten()  # respects the slice offset, unlike .values
    x = flat.to_numpy(zero_copy_only=False).reshape(len(feats), num_features)
    y = pc.cast(table.column(LABEL), pa.int64()).to_numpy()
    ids = table.column(ID).to_numpy()
    return Batch(x, y, ids)
