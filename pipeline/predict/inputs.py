"""What a batch-scoring job reads: the Parquet under ``--data``, checked against the model
before any work starts, and cut into pieces that Ray Data's read tasks decode.

Two kinds of files are scored, the same two training reads:

* **the contract's** (``id``, ``features``, optionally ``label``; ``pipeline/data/contract.py``):
  a split folder of a prepared set (``data/digits/test``) or any folder of such files;
* **the user's own columns**, when the model was trained on them (its run's ``data.*`` keys
  name the feature, image, id and label columns; ``pipeline/data/own_parquet.py``).

Labels are optional (scoring data usually has none); when present, the predictions file keeps
them and the job reports accuracy. Ids come from the id column, or are derived from (file,
row) as training derives them. A generator model (the GAN) reads a ``label`` column: the
classes to generate.

Only footers and one schema are read here. A piece is a run of row groups of one file: the
unit a read task decodes, so a file of any size streams.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import DataConfig, S3Config
from pipeline.data.columns import (
    PIXEL_SCALE,
    ColumnMapping,
    derived_ids,
    dtype_name,
    is_list_of_numbers,
)
from pipeline.data.contract import (
    FEATURES,
    ID,
    LABEL,
    META_SCALE,
    SPLITS,
    check_finite,
    check_labels,
    read_failure,
    read_manifest,
)
from pipeline.data.own_parquet import check_columns, expand_feature_columns, list_parquet
from pipeline.data.table_encoding import NUMBER, Column, TableEncoding
from pipeline.errors import DataError, StorageError
from pipeline.model.bundle import BundleMeta
from pipeline.storage import Location, check_access, resolve

#: Rows a read task decodes at a time (row groups are joined up to this many).
PIECE_ROWS = 8192
#: Output column names (see :mod:`pipeline.predict.scorer`).
OUT_LABEL = "label"


@dataclass(frozen=True)
class Piece:
    """Consecutive row groups of one file."""

    path: str
    file_number: int
    groups: tuple[int, ...]
    #: The first row's position in its file (for derived ids).
    first_row: int
    rows: int


@dataclass(frozen=True)
class RowReader:
    """How a read task turns a piece into rows the scorer takes: ``id`` (int64), ``features``
    (fixed-size list, float32 or uint8 with :attr:`scale`) and, when the data has labels,
    ``label`` (int64 class index). For a generator: ``id`` and ``label`` only.

    Picklable: it travels to Ray Data's read tasks (credentials are not in it; each task's
    S3 client finds them in its own environment, as training's workers do)."""

    uri: str
    s3: S3Config
    kind: str
    #: The columns to read from each file.
    columns: tuple[str, ...]
    num_features: int
    #: The model's classes (labels outside them are refused).
    num_classes: int
    #: Value of one unit of uint8 features; None for float32.
    scale: float | None
    has_labels: bool
    #: The user's columns; None for the contract's.
    mapping: ColumnMapping | None

    def read(self, piece: Piece) -> pa.Table:
        loc = resolve(self.uri, self.s3)
        where = loc.uri_of(piece.path)
        try:
            with loc.filesystem.open_input_file(piece.path) as fh:
                table = pq.ParquetFile(fh).read_row_groups(
                    list(piece.groups), columns=list(self.columns)
                )
        except (pa.ArrowException, OSError) as exc:
            raise read_failure(exc, where) from None
        return self.to_rows(table, piece, where)

    def to_rows(self, table: pa.Table, piece: Piece, where: str) -> pa.Table:
        m = self.mapping
        if m is None:
            ids = table.column(ID).combine_chunks()
            label_name = LABEL
        else:
            ids = pa.array(
                m.ids(table, piece.path, piece.first_row, where)
                if m.id
                # no id column: (file, row), as training numbers such rows
                else derived_ids(piece.file_number, piece.first_row, table.num_rows)
            )
            label_name = m.label
        if ids.null_count:
            raise DataError(f"{where}: {ids.null_count} rows have a null id")
        out: dict[str, pa.Array] = {ID: pc.cast(ids, pa.int64())}
        if self.kind == "classifier":
            if m is None:
                features = table.column(FEATURES).combine_chunks()
                if features.null_count:
                    raise DataError(f"{where}: {features.null_count} rows have null features")
            else:
                features = m.feature_values(table, where)
            out[FEATURES] = features
        if self.has_labels:
            column = table.column(label_name)
            if m is not None and m.classes:
                labels = m.label_indices(column, where)
            else:
                labels = pc.cast(column, pa.int64()).combine_chunks()
            if self.kind == "generator" and labels.null_count:
                raise DataError(f"{where}: {labels.null_count} rows have no label to generate")
            out[OUT_LABEL] = labels
        # What training refuses, scoring refuses too: a NaN feature gives NaN probabilities
        # and "class 0"; a label outside the model's classes has no meaning (a generator
        # cannot make it at all).
        row_ids = out[ID].to_numpy(zero_copy_only=False)
        if FEATURES in out:
            check_finite(out[FEATURES], row_ids, where)
        if OUT_LABEL in out and not out[OUT_LABEL].null_count:
            check_labels(out[OUT_LABEL].to_numpy(), row_ids, self.num_classes, where)
        return pa.table(out)


@dataclass(frozen=True)
class ScoringInput:
    uri: str
    #: (path, bytes, rows) of every file, in order.
    files: tuple[tuple[str, int, int], ...]
    pieces: tuple[Piece, ...]
    rows: int
    #: SHA-256 over the files' names, sizes and (from a manifest) checksums.
    digest: str
    #: What the digest covers, in words.
    digest_basis: str
    reader: RowReader

    @property
    def bytes(self) -> int:
        return sum(size for _, size, _ in self.files)

    def describe(self) -> str:
        labels = "with labels" if self.reader.has_labels else "no labels"
        kind = "the contract's columns" if self.reader.mapping is None else "your columns"
        return (
            f"{self.uri}: {self.rows:,} rows in {len(self.files)} files "
            f"({_size(self.bytes)}; {kind}, {labels}); digest {self.digest[:12]} "
            f"({self.digest_basis})"
        )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def inspect_scoring_input(
    uri: str,
    meta: BundleMeta,
    trained_on: DataConfig,
    s3: S3Config | None = None,
    id_column: str = "",
) -> ScoringInput:
    """The Parquet under ``uri`` checked against a model's bundle ``meta`` and the data
    settings it was trained with; DataError (one line) if it cannot be scored."""
    s3 = s3 or S3Config()
    check_access(uri, s3)
    loc = resolve(uri, s3)
    found = list_parquet(loc)
    _refuse_split_root(loc, found)
    footers = [_footer(loc, path) for path, _ in found]
    schema = footers[0].schema.to_arrow_schema()
    where = loc.uri_of(found[0][0])
    own = bool(trained_on.label_column)
    if own:
        reader = _own_reader(uri, s3, schema, meta, trained_on, id_column, where)
    else:
        reader = _contract_reader(uri, s3, schema, meta, where)
    for (path, _), footer in zip(found[1:], footers[1:], strict=True):
        missing = [c for c in reader.columns if c not in footer.schema.to_arrow_schema().names]
        if missing:
            raise DataError(
                f"{loc.uri_of(path)}: no column {missing[0]!r}, which {where} has; every file "
                "needs the same columns"
            )
    files, pieces = [], []
    for number, ((path, size), footer) in enumerate(zip(found, footers, strict=True)):
        groups = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
        files.append((path, size, sum(groups)))
        pieces += _pieces(path, number, groups)
    rows = sum(r for _, _, r in files)
    if rows == 0:
        raise DataError(f"{uri}: its {len(files)} Parquet files hold no rows")
    digest, basis = _digest(loc, files)
    return ScoringInput(uri, tuple(files), tuple(pieces), rows, digest, basis, reader)


def _refuse_split_root(loc: Location, found: list[tuple[str, int]]) -> None:
    """A prepared set's root holds every split: scoring it whole would mix training rows in."""
    tops = {path[len(loc.path) :].lstrip("/").split("/", 1)[0] for path, _ in found}
    splits = [s for s in SPLITS if s in tops]
    if splits and tops <= {*SPLITS, "validation"}:
        raise DataError(
            f"{loc.uri} holds the splits {', '.join(splits)}; score one of them, e.g. "
            f"--data {loc.uri.rstrip('/')}/{'test' if 'test' in splits else splits[0]}"
        )


def _footer(loc: Location, path: str) -> pq.FileMetaData:
    try:
        with loc.filesystem.open_input_file(path) as fh:
            return pq.ParquetFile(fh).metadata
    except (pa.ArrowException, OSError) as exc:
        raise read_failure(exc, loc.uri_of(path)) from None


def _pieces(path: str, number: int, groups: list[int]) -> list[Piece]:
    pieces: list[Piece] = []
    start, first_row, rows = 0, 0, 0
    for i, n in enumerate(groups):
        if rows and rows + n > PIECE_ROWS:
            pieces.append(Piece(path, number, tuple(range(start, i)), first_row, rows))
            start, first_row, rows = i, first_row + rows, 0
        rows += n
    if rows:
        pieces.append(Piece(path, number, tuple(range(start, len(groups))), first_row, rows))
    return pieces


def _contract_reader(
    uri: str, s3: S3Config, schema: pa.Schema, meta: BundleMeta, where: str
) -> RowReader:
    has_labels = LABEL in schema.names
    if meta.kind == "generator":
        return _generator_reader(uri, s3, schema, meta, where, ID if ID in schema.names else "")
    for name in (ID, FEATURES):
        if name not in schema.names:
            raise DataError(
                f"{where}: no column {name!r}; the model was trained on the contract's columns "
                f"(id, features, label), and this file has {', '.join(schema.names[:12])}"
            )
    tp = schema.field(FEATURES).type
    if not pa.types.is_fixed_size_list(tp) or tp.list_size != meta.num_features:
        width = tp.list_size if pa.types.is_fixed_size_list(tp) else "a variable number of"
        raise DataError(
            f"{where}: features hold {width} values per row, the model takes "
            f"{meta.num_features} ({'x'.join(map(str, meta.feature_shape))}); score data of "
            "the kind the model was trained on"
        )
    raw_scale = (schema.metadata or {}).get(META_SCALE)
    scale = float(raw_scale) if raw_scale else None
    columns = (ID, FEATURES, LABEL) if has_labels else (ID, FEATURES)
    return RowReader(
        uri, s3, meta.kind, columns, meta.num_features, meta.num_classes, scale, has_labels, None
    )


def _own_reader(
    uri: str,
    s3: S3Config,
    schema: pa.Schema,
    meta: BundleMeta,
    trained: DataConfig,
    id_column: str,
    where: str,
) -> RowReader:
    id_name = id_column or trained.id_column
    if id_name and id_name not in schema.names:
        raise DataError(
            f"{where}: no id column {id_name!r}; give the scoring data's with --id-column, or "
            "--id-column '' to number the rows by (file, row)"
            if not id_column
            else f"{where}: no column {id_name!r} (--id-column); its columns: "
            f"{', '.join(schema.names[:12])}"
        )
    has_labels = trained.label_column in schema.names
    if meta.kind == "generator":
        return _generator_reader(uri, s3, schema, meta, where, id_name)
    data = dataclasses.replace(
        trained,
        id_column=id_name,
        split_column="",
        # The model's own columns when it records them: a pattern (``*``) would also match
        # the scoring table's other columns.
        feature_columns=meta.table.names
        if meta.table is not None
        else expand_feature_columns(schema, trained, where),
    )
    check_columns(schema, data, where, label=has_labels)
    if data.image_column:
        c, h, w = meta.feature_shape
        mapping = ColumnMapping(
            label=data.label_column if has_labels else "",
            image=data.image_column,
            image_shape=(c, h, w),
            image_fit=data.image_fit,
            id=id_name,
            classes=meta.class_names,
            num_features=meta.num_features,
        )
    else:
        single_list = len(data.feature_columns) == 1 and is_list_of_numbers(
            schema.field(data.feature_columns[0]).type
        )
        encoding = None if single_list else _table_encoding(meta, data, schema, where)
        mapping = ColumnMapping(
            label=data.label_column if has_labels else "",
            features=encoding.names if encoding is not None else data.feature_columns,
            id=id_name,
            classes=meta.class_names,
            encoding=encoding,
            num_features=meta.num_features,
        )
    columns = tuple(mapping.columns("test"))
    scale = PIXEL_SCALE if mapping.image else None
    return RowReader(
        uri, s3, meta.kind, columns, meta.num_features, meta.num_classes, scale, has_labels, mapping
    )


def _table_encoding(
    meta: BundleMeta, data: DataConfig, schema: pa.Schema, where: str
) -> TableEncoding:
    """The model's encoding of its feature columns; a model trained before encodings were
    stored took its number columns as they were (cast, nulls refused)."""
    if meta.table is not None:
        absent = [name for name in meta.table.names if name not in schema.names]
        if absent:
            raise DataError(
                f"{where}: no column {', '.join(map(repr, absent[:5]))}; the model takes the"
                f" columns {', '.join(meta.table.names[:12])}"
            )
        return meta.table
    if len(data.feature_columns) != meta.num_features:
        raise DataError(
            f"{where}: data.feature_columns {', '.join(data.feature_columns)} match "
            f"{len(data.feature_columns)} columns here, the model takes "
            f"{meta.num_features} features"
        )
    return TableEncoding(
        tuple(
            Column(name, NUMBER, dtype_name(schema.field(name).type))
            for name in data.feature_columns
        )
    )


def _generator_reader(
    uri: str, s3: S3Config, schema: pa.Schema, meta: BundleMeta, where: str, id_name: str
) -> RowReader:
    """A generator scores a ``label`` column: the classes to generate images of."""
    if LABEL not in schema.names or not pa.types.is_integer(schema.field(LABEL).type):
        raise DataError(
            f"{where}: a generator model needs an integer column 'label' (the classes to "
            f"generate, 0..{meta.num_classes - 1}); this file has "
            f"{', '.join(schema.names[:12])}"
        )
    columns = (id_name, LABEL) if id_name else (LABEL,)
    mapping = None if id_name == ID else ColumnMapping(label=LABEL, id=id_name)
    return RowReader(
        uri, s3, meta.kind, columns, meta.num_features, meta.num_classes, None, True, mapping
    )


def _digest(loc: Location, files: list[tuple[str, int, int]]) -> tuple[str, str]:
    """A fingerprint of the files scored: names, sizes and, where a manifest lists them,
    their SHA-256 (the folder's own manifest, or its parent's for a split folder)."""
    checksums = _manifest_checksums(loc)
    h = hashlib.sha256()
    known = 0
    for path, size, rows in files:
        name = path[len(loc.path) :].lstrip("/")
        sha = checksums.get(name, "")
        known += bool(sha)
        h.update(json.dumps([name, size, rows, sha]).encode() + b"\n")
    if known == len(files):
        return h.hexdigest(), "names, sizes and SHA-256 from the manifest"
    return h.hexdigest(), "names, sizes and row counts; no manifest lists these files"


def _manifest_checksums(loc: Location) -> dict[str, str]:
    """File name (relative to ``loc``) -> SHA-256, from a manifest that covers ``loc``."""
    try:
        own = read_manifest(loc)
        if own is None and "/" in loc.path.strip("/"):
            parent_path, split = loc.path.rstrip("/").rsplit("/", 1)
            parent = Location(loc.uri.rstrip("/").rsplit("/", 1)[0], loc.filesystem, parent_path)
            manifest = read_manifest(parent)
            entries = ((manifest or {}).get("splits") or {}).get(split, {}).get("files", [])
        else:
            entries = [
                {**entry, "path": f"{split}/{entry['path']}"}
                for split, body in ((own or {}).get("splits") or {}).items()
                for entry in body.get("files", [])
            ]
        return {str(e["path"]): str(e.get("sha256", "")) for e in entries}
    except (DataError, StorageError, KeyError, TypeError, AttributeError, ValueError):
        return {}  # no usable manifest: the digest covers names and sizes only
