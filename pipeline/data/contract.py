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
D (``[1, 8, 8]`` for an 8x8 grey image, ``[64]`` for flat features),
``mxtrain.num_classes`` = decimal integer and, optionally, ``mxtrain.class_names`` = JSON list
of the classes' names (index = class; Fashion-MNIST's "T-shirt/top" ... "Ankle boot").
``_manifest.json`` is written last by ``jobs.prepare_data`` (or ``jobs.write_manifest`` for
Parquet written elsewhere); it is required unless ``data.require_manifest=false``, and its file
list, row counts and sizes must match what is stored.

Row values: every id present and unique across all splits, every label present and in
``[0, num_classes)``, every feature value present and finite.

:func:`inspect_dataset` checks the layout, schema and manifest by reading only the Parquet
footers; :func:`check_unique_ids` reads the id column of every file; :func:`check_rows` checks
the values of rows as whoever reads them first (the driver for a small local set, else each
worker) decodes them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.data import unique_ids
from pipeline.data.parallel import imap_ordered, map_ordered
from pipeline.errors import DataError, PipelineError, StorageError, StorageUnavailableError
from pipeline.storage import Location, check_access, resolve

if TYPE_CHECKING:
    from pipeline.data.columns import ColumnMapping

ID = "id"
FEATURES = "features"
LABEL = "label"
SPLITS = ("train", "val", "test")
MANIFEST = "_manifest.json"
#: The manifest's record that every id of every split was checked unique when it was
#: written: :func:`ids_proof` of its file entries, so an entry changed since (a file
#: rewritten, its checksum updated by hand) voids it.
IDS_UNIQUE = "ids_unique"
META_SHAPE = b"mxtrain.feature_shape"
META_CLASSES = b"mxtrain.num_classes"
#: For uint8 features: the float one unit stands for (1/255 for 8-bit pixels).
META_SCALE = b"mxtrain.feature_scale"
#: Optional: the classes' names, a JSON list (index = class).
META_NAMES = b"mxtrain.class_names"
#: The longest class name kept (a name is shown in plots and returned by the model).
MAX_NAME = 200
CONTRACT_VERSION = 1


def make_schema(
    feature_shape: tuple[int, ...],
    num_classes: int,
    feature_scale: float | None = None,
    class_names: tuple[str, ...] = (),
) -> pa.Schema:
    """The contract's schema; with ``feature_scale``, features are uint8 (value x scale);
    with ``class_names``, the classes have names."""
    size = math.prod(feature_shape)
    value_type = pa.float32() if feature_scale is None else pa.uint8()
    metadata = {
        META_SHAPE: json.dumps(list(feature_shape)).encode(),
        META_CLASSES: str(num_classes).encode(),
    }
    if feature_scale is not None:
        metadata[META_SCALE] = repr(float(feature_scale)).encode()
    if class_names:
        metadata[META_NAMES] = json.dumps(list(class_names)).encode()
    return pa.schema(
        [
            pa.field(ID, pa.int64(), nullable=False),
            pa.field(FEATURES, pa.list_(pa.field("element", value_type), size), nullable=False),
            pa.field(LABEL, pa.int64(), nullable=False),
        ],
        metadata=metadata,
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
    #: Stored bytes of each file, from the listing: a streaming reader that knows a file's
    #: size opens it on S3 without a HEAD request (empty: it asks).
    sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set holds, read from its Parquet footers (no row data)."""

    uri: str
    feature_shape: tuple[int, ...]
    num_classes: int
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    #: uint8 features: the value of one unit (the reader converts on the device); None: float32.
    feature_scale: float | None = None
    #: The user's own Parquet: how its columns map onto the contract's; None for a set in
    #: the contract's layout.
    mapping: ColumnMapping | None = None
    #: The manifest, which matched the files, records that every id was checked unique when
    #: it was written (``prepare_data``, ``write_manifest``): nobody needs to read them again.
    ids_unique: bool = False
    #: A prepared set's class names (schema metadata ``mxtrain.class_names``), index = class.
    names: tuple[str, ...] = ()

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes' names, index = class: string labels' (the user's own Parquet) or the
        schema's; empty when the classes are only numbers."""
        return self.mapping.classes if self.mapping is not None else self.names

    @property
    def num_features(self) -> int:
        return math.prod(self.feature_shape)


def single_chunk(column: pa.ChunkedArray) -> pa.Array:
    """A column as one array (copied only when pyarrow holds it in several chunks)."""
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def read_failure(exc: Exception, where: str) -> PipelineError:
    """A failed read of a data file as the user's problem: an unreadable file (replace it)
    or storage that did not answer after the client's own retries (nothing wrong with the
    file; try again). Both arrive as OSError from pyarrow; the S3 client's error names say
    which."""
    text = str(exc)
    unavailable = ("AWS Error NETWORK_CONNECTION", "curlCode", "SLOW_DOWN", "SERVICE_UNAVAILABLE")
    if isinstance(exc, OSError) and any(mark in text for mark in unavailable):
        return StorageUnavailableError(
            f"{where}: storage did not answer after retries ({exc}); the file itself may be "
            "fine: check the endpoint or network (s3.max_attempts, s3.connect_timeout_s) and "
            "run again (--resume <run id> continues from the last checkpoint)"
        )
    return DataError(f"{where}: not a readable Parquet file ({exc}); replace or remove it")


def check_rows(table: pa.Table, num_classes: int, where: str) -> None:
    """Refuse rows whose values break the contract: a null id, label or feature value, a
    label outside ``[0, num_classes)``, a NaN or infinite feature. One vectorised pass.

    Why each matters: MXNet's ``pick`` clips a label >= num_classes to the last class and a
    negative one drops out of the loss (it is the padding rows' mark) while still counting in
    ``train_loss``; one NaN feature turns every gradient NaN after the first allreduce."""
    fix = "fix the rows or the file (see the data contract in docs/data.md)"
    for name in (ID, LABEL, FEATURES):
        nulls = table.column(name).null_count
        if nulls:
            raise DataError(f"{where}: {nulls} rows have a null {name!r}; {fix}")
    ids = table.column(ID).to_numpy()
    check_labels(table.column(LABEL).to_numpy(), ids, num_classes, where)
    feats = single_chunk(table.column(FEATURES))
    if feats.flatten().null_count:
        raise DataError(
            f"{where}: {feats.flatten().null_count} null values inside 'features'; {fix}"
        )
    check_finite(feats, ids, where)


def check_labels(labels: np.ndarray, ids: np.ndarray, num_classes: int, where: str) -> None:
    """Refuse a label outside ``[0, num_classes)``, naming the first row's id."""
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{where}: row id {ids[row]} has label {labels[row]}, outside [0, {num_classes}) "
            f"({int(outside.sum())} such rows); fix the labels or the schema's "
            f"{META_CLASSES.decode()}"
        )


def check_finite(features: pa.FixedSizeListArray, ids: np.ndarray, where: str) -> None:
    """Refuse a NaN or infinite value among the feature rows, naming the first row's id."""
    flat = features.flatten()
    if not pa.types.is_floating(flat.type):
        return  # integers are always finite
    values = flat.to_numpy(zero_copy_only=False).reshape(len(features), -1)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = values[row][~np.isfinite(values[row])][0]
        raise DataError(
            f"{where}: row id {ids[row]} has a feature value of {value} ({int(bad.sum())} rows "
            "with NaN or infinite features); fix the rows or the file (see the data contract "
            "in docs/data.md)"
        )


def ids_proof(splits: dict) -> str:
    """What a manifest records once its ids were checked unique: a SHA-256 of every file
    entry (split, name, rows, checksum) it lists."""
    import hashlib
    import json

    entries = sorted(
        (split, f["path"], int(f["rows"]), str(f.get("sha256")))
        for split, entry in splits.items()
        for f in entry["files"]
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def check_unique_ids(
    info: DatasetInfo,
    s3: S3Config | None = None,
    trust_manifest: bool = True,
    memory_mb: float = unique_ids.DEFAULT_MEMORY_MB,
) -> None:
    """Every id once across all splits, reading only the id column (8 bytes a row, in
    memory up to ``memory_mb``, then spilled to local disk). An id in two splits is a row
    the model is trained and then tested on. A set whose manifest records the check
    (:attr:`DatasetInfo.ids_unique`) is trusted unless ``trust_manifest`` is false
    (``write_manifest`` makes that proof, so it reads)."""
    if trust_manifest and info.ids_unique:
        return
    loc = resolve(info.uri, s3)

    def read_ids(path: str) -> np.ndarray:
        where = loc.uri_of(path)
        try:
            column = pq.read_table(path, columns=[ID], filesystem=loc.filesystem).column(ID)
        except (pa.ArrowException, OSError) as exc:
            raise read_failure(exc, where) from None
        if column.null_count:
            raise DataError(f"{where}: {column.null_count} rows have a null 'id'")
        return column.to_numpy()

    files = [(split, path) for split, s in info.splits.items() for path in s.files]
    names = [f"{split}/{path.rsplit('/', 1)[-1]}" for split, path in files]
    with unique_ids.UniqueIds(memory_mb) as seen:
        for owner, ids in enumerate(imap_ordered(lambda item: read_ids(item[1]), files)):
            seen.add(ids, owner)
        repeat = seen.first_repeat()
    if repeat is not None:
        value, first, second, total = repeat
        raise DataError(
            f"{info.uri}: id {value} appears in {names[first]} and again in "
            f"{names[second]} ({total} repeated ids); ids must be unique across "
            "train/val/test (a row in two splits is tested on what it was trained on)"
        )


def check_schema(schema: pa.Schema, where: str) -> tuple[tuple[int, ...], int, float | None]:
    """Validate one file's schema; return (feature_shape, num_classes, feature_scale)."""
    fix = "see the data contract in docs/data.md"
    for name in (ID, FEATURES, LABEL):
        if schema.get_field_index(name) < 0:
            raise DataError(f"{where}: missing column {name!r} ({fix})")
    feat = schema.field(FEATURES).type
    if not (
        pa.types.is_fixed_size_list(feat)
        and (pa.types.is_float32(feat.value_type) or pa.types.is_uint8(feat.value_type))
    ):
        raise DataError(
            f"{where}: column 'features' is {feat}, expected fixed_size_list<float32> or "
            f"fixed_size_list<uint8> ({fix})"
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
    scale = None
    if pa.types.is_uint8(feat.value_type):
        try:
            scale = float(meta[META_SCALE])
        except (KeyError, ValueError):
            scale = math.nan
        if not (math.isfinite(scale) and scale > 0):
            raise DataError(
                f"{where}: uint8 features need {META_SCALE.decode()} in the schema metadata, a "
                f"positive number such as 0.00392156862745098 (1/255) ({fix})"
            )
    return shape, num_classes, scale


def schema_class_names(schema: pa.Schema, num_classes: int, where: str) -> tuple[str, ...]:
    """The classes' names in a file's schema metadata (empty without them); DataError for
    names that are not one distinct string per class."""
    raw = (schema.metadata or {}).get(META_NAMES)
    if raw is None:
        return ()
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    ok = (
        isinstance(names, list)
        and len(names) == num_classes
        and all(isinstance(n, str) and 0 < len(n) <= MAX_NAME for n in names)
        and len(set(names)) == len(names)
    )
    if not ok:
        raise DataError(
            f"{where}: schema metadata {META_NAMES.decode()} must be a JSON list of"
            f" {num_classes} distinct names (1-{MAX_NAME} characters), one per class"
        )
    return tuple(names)


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
    uri: str,
    splits: tuple[str, ...] = SPLITS,
    s3: S3Config | None = None,
    require_manifest: bool = True,
    trust_manifest: bool = True,
) -> DatasetInfo:
    """Check a data set against the contract without reading row data; raise DataError if not.

    With a manifest that records every file's row groups (what ``prepare_data`` and
    ``write_manifest`` write), one footer is read, for the schema: the rest comes from the
    manifest, matched against the listing (names, sizes), so the driver's work does not grow
    with the files' count beyond listing them. Otherwise every footer is read, concurrently.
    For S3, the bucket is checked first (reachable, credentials valid, exists): StorageError.
    ``require_manifest=False`` accepts a set without ``_manifest.json`` (no checksums then);
    ``trust_manifest=False`` reads every footer even so (``write_manifest`` re-checks).
    """
    check_access(uri, s3)
    loc = resolve(uri, s3)
    manifest = read_manifest(loc)
    listings = map_ordered(lambda split: _list_parquet(loc, split), splits)
    listed = dict(zip(splits, listings, strict=True))
    for split, files in listed.items():
        if not files:
            raise DataError(
                f"{uri}: no Parquet files under {split}/; prepare the data with "
                f"`python -m jobs.prepare_data --out {uri}` or point data.uri at a prepared set"
            )
    if manifest is None and require_manifest:  # before any footer: a partial set's last file
        raise _no_manifest(loc)  # may be an empty one
    planned = _manifest_row_groups(manifest, splits) if trust_manifest else None
    shapes: set[tuple[tuple[int, ...], int, float | None, tuple[str, ...]]] = set()
    found: dict[str, SplitInfo] = {}
    sizes: dict[str, int] = {}
    for split, files in listed.items():
        sizes.update(files)
        if planned is not None:
            # Files missing from the manifest get no row groups; _check_manifest refuses them.
            groups = [planned[split].get(path.rsplit("/", 1)[-1], ()) for path, _ in files]
        else:
            groups = []
            for shape, file_groups in map_ordered(lambda f: _footer_facts(loc, f[0]), files):
                shapes.add(shape)
                groups.append(file_groups)
        rows = sum(sum(g) for g in groups)
        found[split] = SplitInfo(
            tuple(p for p, _ in files),
            rows,
            sum(n for _, n in files),
            row_groups=tuple(groups),
            sizes=tuple(n for _, n in files),
        )
    if planned is not None:  # the manifest's writer checked every file's schema; one is read
        shapes.add(_footer_facts(loc, listed[splits[0]][0][0])[0])
    if len(shapes) != 1:
        seen = sorted(shapes, key=str)
        raise DataError(
            f"{uri}: files disagree on feature_shape/num_classes/scale/class names: {seen}"
        )
    (shape, num_classes, scale, names) = shapes.pop()
    found, ids_unique = _check_manifest(loc, manifest, found, sizes, require_manifest)
    for split, split_info in found.items():
        if split_info.rows == 0:
            raise DataError(f"{uri}: split {split}/ has no rows")
    return DatasetInfo(
        uri, shape, num_classes, found, feature_scale=scale, ids_unique=ids_unique, names=names
    )


def _manifest_row_groups(
    manifest: dict | None, splits: tuple[str, ...]
) -> dict[str, dict[str, tuple[int, ...]]] | None:
    """Rows per row group of every file the manifest lists, by split and file name; None when
    the manifest does not record them for every split asked for (older manifests: the
    footers are read then)."""
    try:
        planned = {}
        for split in splits:
            entry = manifest["splits"][split]  # type: ignore[index]
            groups = {f["path"]: tuple(f["row_groups"]) for f in entry["files"]}
            for name, counts in groups.items():
                if not isinstance(name, str) or not all(
                    isinstance(n, int) and n >= 0 for n in counts
                ):
                    return None
            planned[split] = groups
        return planned
    except (KeyError, TypeError, AttributeError):
        return None


def _footer_facts(loc: Location, path: str) -> tuple[tuple, tuple[int, ...]]:
    """A file's (feature shape, classes, scale, class names) and rows per row group, from its
    footer."""
    where = loc.uri_of(path)
    try:
        meta = pq.read_metadata(path, filesystem=loc.filesystem)
    except (pa.ArrowException, OSError) as exc:
        raise read_failure(exc, where) from None
    schema = meta.schema.to_arrow_schema()
    shape, classes, scale = check_schema(schema, where)
    facts = (shape, classes, scale, schema_class_names(schema, classes, where))
    return facts, tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))


def _manifest_how(loc: Location) -> str:
    return (
        f"write one with `python -m jobs.write_manifest {loc.uri}` (it checks every row and "
        "records checksums), or set data.require_manifest=false to train without checksums"
    )


def _no_manifest(loc: Location) -> DataError:
    return DataError(
        f"{loc.uri}: no {MANIFEST}, so nothing proves the set is whole; {_manifest_how(loc)}"
    )


def _check_manifest(
    loc: Location,
    manifest: dict | None,
    found: dict[str, SplitInfo],
    sizes: dict[str, int],
    required: bool,
) -> tuple[dict[str, SplitInfo], bool]:
    """Compare what is stored with the manifest (files, rows, bytes); attach its checksums;
    and whether it records its ids as checked unique (every split listed and matched).

    Without a manifest nothing says the set is complete (a crashed write leaves a partial
    one) and no checksum can be checked: refused unless the user opted out."""
    how = _manifest_how(loc)
    if manifest is None:
        if required:
            raise _no_manifest(loc)
        return found, False
    try:
        checked = _match_manifest(loc, manifest, found, sizes, required, how)
        listed = all(split in manifest["splits"] for split in found)
        proven = listed and manifest.get(IDS_UNIQUE) == ids_proof(manifest["splits"])
        return checked, proven
    except (KeyError, TypeError, AttributeError):
        raise DataError(
            f"{loc.uri}/{MANIFEST}: not a manifest this pipeline wrote (missing or mistyped "
            f"fields); {how}"
        ) from None


def _match_manifest(
    loc: Location,
    manifest: dict,
    found: dict[str, SplitInfo],
    sizes: dict[str, int],
    required: bool,
    how: str,
) -> dict[str, SplitInfo]:
    checked = {}
    for split, info in found.items():
        entry = manifest.get("splits", {}).get(split)
        if entry is None:
            if required:
                raise DataError(f"{loc.uri}: {MANIFEST} does not list split {split}/; {how}")
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
