"""The Parquet data contract: what a data set must look like for the pipeline to train on it.

Layout under the data URI::

    <uri>/train/*.parquet   <uri>/val/*.parquet   <uri>/test/*.parquet   <uri>/_manifest.json

Columns of every file:

========== ====================================== ==========================================
column     Arrow type                             meaning
========== ====================================== ==========================================
id         int64                                  unique row id across all splits
features   fixed_size_list<float32>[D]            one sample, flattened in row-major order
label      int64                                  class index in [0, num_classes)
========== ====================================== ==========================================

Schema metadata (the same in every file): ``mxtrain.feature_shape`` = JSON list whose product is
D (``[1, 8, 8]`` for an 8x8 grey image, ``[64]`` for flat features) and
``mxtrain.num_classes`` = decimal integer. ``_manifest.json`` is written last by
``jobs.prepare_data``: when present, its file list and row counts must match what is stored.

:func:`inspect_dataset` checks all of this by reading only the Parquet footers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.errors import DataError, StorageError
from pipeline.storage import Location, check_access, resolve

ID = "id"
FEATURES = "features"
LABEL = "label"
SPLITS = ("train", "val", "test")
MANIFEST = "_manifest.json"
META_SHAPE = b"mxtrain.feature_shape"
META_CLASSES = b"mxtrain.num_classes"
CONTRACT_VERSION = 1


def make_schema(feature_shape: tuple[int, ...], num_classes: int) -> pa.Schema:
    size = math.prod(feature_shape)
    return pa.schema(
        [
            pa.field(ID, pa.int64(), nullable=False),
            pa.field(FEATURES, pa.list_(pa.field("element", pa.float32()), size), nullable=False),
            pa.field(LABEL, pa.int64(), nullable=False),
        ],
        metadata={
            META_SHAPE: json.dumps(list(feature_shape)).encode(),
            META_CLASSES: str(num_classes).encode(),
        },
    )


@dataclass(frozen=True)
class SplitInfo:
    files: tuple[str, ...]
    rows: int
    bytes: int = 0
    #: SHA-256 per file from the manifest (None where there is no manifest).
    sha256: tuple[str | None, ...] = ()
    #: Rows of each row group, per file (from the footers): the units of the sharding plan.
    row_groups: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set holds, read from its Parquet footers (no row data)."""

    uri: str
    feature_shape: tuple[int, ...]
    num_classes: int
    splits: dict[str, SplitInfo] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return math.prod(self.feature_shape)


def check_schema(schema: pa.Schema, where: str) -> tuple[tuple[int, ...], int]:
    """Validate one file's schema; return (feature_shape, num_classes)."""
    fix = "see the data contract in README.md"
    for name in (ID, FEATURES, LABEL):
        if schema.get_field_index(name) < 0:
            raise DataError(f"{where}: missing column {name!r} ({fix})")
    feat = schema.field(FEATURES).type
    if not (pa.types.is_fixed_size_list(feat) and pa.types.is_float32(feat.value_type)):
        raise DataError(
            f"{where}: column 'features' is {feat}, expected fixed_size_list<float32> ({fix})"
        )
    for name in (ID, LABEL):
        if not pa.types.is_int64(schema.field(name).type):
            raise DataError(
                f"{where}: column {name!r} is {schema.field(name).type}, expected int64 ({fix})"
            )
    meta = schema.metadata or {}
    try:
        shape = tuple(int(d) for d in json.loads(meta[META_SHAPE]))
        num_classes = int(meta[META_CLASSES])
    except (KeyError, ValueError, TypeError):
        raise DataError(
            f"{where}: schema metadata needs {META_SHAPE.decode()} (JSON list) and "
            f"{META_CLASSES.decode()} (integer) ({fix})"
        ) from None
    if math.prod(shape) != feat.list_size or num_classes < 2:
        raise DataError(
            f"{where}: feature_shape {list(shape)} does not hold {feat.list_size} values or "
            f"num_classes {num_classes} < 2 ({fix})"
        )
    return shape, num_classes


def _list_parquet(loc: Location, split: str) -> list[tuple[str, int]]:
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(loc.join(split), allow_not_found=True)
    try:
        infos = loc.filesystem.get_file_info(selector)
    except OSError as exc:
        raise StorageError(f"{loc.uri}: cannot list {split}/ ({exc})") from None
    return sorted((i.path, i.size) for i in infos if i.is_file and i.path.endswith(".parquet"))


def read_manifest(loc: Location) -> dict | None:
    import pyarrow.fs as pafs

    path = loc.join(MANIFEST)
    if loc.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with loc.filesystem.open_input_stream(path) as f:
        try:
            return json.loads(f.read())
        except ValueError:
            raise DataError(
                f"{loc.uri}/{MANIFEST}: not valid JSON; re-run jobs.prepare_data"
            ) from None


def inspect_dataset(
    uri: str, splits: tuple[str, ...] = SPLITS, s3: S3Config | None = None
) -> DatasetInfo:
    """Check a data set against the contract by reading footers only; raise DataError if not.

    For S3, the bucket is checked first (reachable, credentials valid, exists): StorageError.
    """
    check_access(uri, s3)
    loc = resolve(uri, s3)
    shapes: set[tuple[tuple[int, ...], int]] = set()
    found: dict[str, SplitInfo] = {}
    sizes: dict[str, int] = {}
    for split in splits:
        files = _list_parquet(loc, split)
        sizes.update(files)
        if not files:
            raise DataError(
                f"{uri}: no Parquet files under {split}/; prepare the data with "
                f"`python -m jobs.prepare_data --out {uri}` or point data.uri at a prepared set"
            )
        rows = 0
        groups = []
        for path, _size in files:
            where = loc.uri_of(path)
            try:
                meta = pq.read_metadata(path, filesystem=loc.filesystem)
            except (pa.ArrowException, OSError) as exc:
                raise DataError(
                    f"{where}: not a readable Parquet file ({exc}); replace or remove it"
                ) from None
            shapes.add(check_schema(meta.schema.to_arrow_schema(), where))
            rows += meta.num_rows
            groups.append(tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)))
        if rows == 0:
            raise DataError(f"{uri}: split {split}/ has no rows")
        found[split] = SplitInfo(
            tuple(p for p, _ in files), rows, sum(n for _, n in files), row_groups=tuple(groups)
        )
    if len(shapes) != 1:
        raise DataError(f"{uri}: files disagree on feature_shape/num_classes: {sorted(shapes)}")
    (shape, num_classes) = shapes.pop()
    found = _check_manifest(loc, found, sizes)
    return DatasetInfo(uri, shape, num_classes, found)


def _check_manifest(
    loc: Location, found: dict[str, SplitInfo], sizes: dict[str, int]
) -> dict[str, SplitInfo]:
    """Compare what is stored with the manifest (files, rows, bytes); attach its checksums."""
    manifest = read_manifest(loc)
    if manifest is None:
        return found
    checked = {}
    for split, info in found.items():
        entry = manifest.get("splits", {}).get(split)
        if entry is None:
            checked[split] = info
            continue
        listed = {f["path"]: f for f in entry["files"]}
        stored = {p.rsplit("/", 1)[-1]: p for p in info.files}
        if set(listed) != set(stored) or entry["rows"] != info.rows:
            raise DataError(
                f"{loc.uri}: {split}/ does not match {MANIFEST} (manifest: {len(listed)} files, "
                f"{entry['rows']} rows; stored: {len(stored)} files, {info.rows} rows); "
                "the data set is incomplete or was changed: re-run jobs.prepare_data"
            )
        for name, path in stored.items():
            if listed[name].get("bytes") not in (None, sizes.get(path)):
                raise DataError(
                    f"{loc.uri_of(path)}: {sizes.get(path)} bytes, the manifest says "
                    f"{listed[name]['bytes']}; the file was changed or truncated: re-run "
                    "jobs.prepare_data"
                )
        sha = tuple(listed[p.rsplit("/", 1)[-1]].get("sha256") for p in info.files)
        checked[split] = dataclasses.replace(info, sha256=sha)
    return checked
