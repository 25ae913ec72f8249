"""The user's own Parquet, as Spark, pandas or Hugging Face ``datasets`` wrote it: the driver
works out its splits, columns, feature shape and classes (:func:`inspect_own_parquet`).

Switched on by ``data.label_column``. No conversion step and no file of ours is needed:

* **Splits**: ``train/`` (and ``val/`` or ``validation/``, ``test/``) folders, where a missing
  ``val/`` or ``test/`` is drawn from the training rows; or one folder (any depth, Spark's
  ``part-*`` files included) split by ``data.split_column``, or by a draw from
  ``(seed, row id)`` with ``data.val_fraction`` / ``data.test_fraction``.
* **Checks**, each one line naming the file: a missing column (with "did you mean"), a column
  of the wrong type, null labels, unknown split names, a label of val/test that no training
  row has, a repeated id, an empty split. Feature values are checked by whoever decodes them
  (:func:`~pipeline.data.contract.check_rows`), as for prepared sets.

The driver reads the footers and the label, id and split columns of every file, and one
feature row to learn the shape; of the features, only the training rows of the columns whose
encoding needs statistics (a category's vocabulary; a number's mean and deviation with
``data.missing=mean`` or ``data.normalize``), in the same concurrent pass, tallied in memory
bounded by the column count (:class:`~pipeline.data.table_encoding.Fitter`). A
``_manifest.json`` is not required here (the files are the user's, not ours); no SHA-256 is
checked then, and the start-up line says so.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import DataConfig, S3Config
from pipeline.data import images
from pipeline.data.columns import (
    PIXEL_SCALE,
    SPLIT_NAMES,
    ColumnMapping,
    RowSelect,
    arrow_columns,
    dtype_name,
    feature_kind,
    is_list_of_numbers,
    is_string,
    string_values,
)
from pipeline.data.contract import SPLITS, DatasetInfo, SplitInfo, read_failure
from pipeline.data.parallel import imap_ordered, map_ordered
from pipeline.data.table_encoding import EncodingError, Fitter
from pipeline.data.unique_ids import UniqueIds
from pipeline.errors import DataError, StorageError
from pipeline.storage import Location, check_access, resolve


@dataclass(frozen=True)
class _File:
    path: str
    size: int
    #: Rows per row group, from the footer.
    groups: tuple[int, ...]
    schema: pa.Schema


def inspect_own_parquet(data: DataConfig, seed: int, s3: S3Config | None = None) -> DatasetInfo:
    """The data set at ``data.uri`` read through the column keys; DataError if it cannot be."""
    check_access(data.uri, s3)
    loc = resolve(data.uri, s3)
    found = list_parquet(loc)
    layout, plan = _plan_splits(data, seed, loc, found)
    used = [(path, size) for path, size in found if _used(path, plan)]
    footers = map_ordered(lambda f: _footer(loc, f[0], f[1]), used)
    files = {path: footer for (path, _), footer in zip(used, footers, strict=True)}
    first_train = files[plan["train"][0][0]]
    data = dataclasses.replace(
        data,
        feature_columns=expand_feature_columns(
            first_train.schema, data, loc.uri_of(first_train.path)
        ),
    )
    for f in [first_train] + [f for f in files.values() if f is not first_train]:
        check_columns(f.schema, data, loc.uri_of(f.path))
    numbers = {path: i for i, path in enumerate(sorted(files))}
    draft = ColumnMapping(
        label=data.label_column,
        features=data.feature_columns,
        image=data.image_column,
        id=data.id_column,
        file_numbers=numbers if not data.id_column else {},
        selects={split: select for split, (_, select) in plan.items()},
        layout=layout,
    )
    fitter = _fitter(data, first_train.schema)
    with UniqueIds(data.ids_check_mb) as seen_ids:
        splits, labels = _scan(loc, files, plan, draft, data.max_classes, seen_ids, fitter)
    first = _first_row(loc, first_train, draft)
    mapping = _finish(data, draft, first, labels, loc.uri_of(first_train.path))
    if fitter is not None:
        encoding = fitter.encoding()
        mapping = dataclasses.replace(mapping, encoding=encoding, num_features=encoding.width)
    # An image's (C, H, W) lets the CNN and the augmentations see it as one.
    shape = mapping.image_shape if mapping.image else (mapping.num_features,)
    num_classes = len(mapping.classes) if mapping.classes else _integer_classes(labels, data)
    return DatasetInfo(
        data.uri,
        tuple(shape),
        num_classes,
        splits,
        feature_scale=PIXEL_SCALE if mapping.image else None,
        mapping=mapping,
    )


# -- which files and rows make each split -------------------------------------------------------


def list_parquet(loc: Location) -> list[tuple[str, int]]:
    """Every ``.parquet`` file under the URI, at any depth; names starting with ``_`` or ``.``
    (Spark's ``_SUCCESS``, ``_temporary/``, hidden files) are not data."""
    selector = pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
    try:
        infos = loc.filesystem.get_file_info(selector)
    except OSError as exc:
        raise StorageError(f"{loc.uri}: cannot list the files ({exc})") from None
    found = []
    for info in infos:
        relative = info.path[len(loc.path) :].lstrip("/")
        hidden = any(part.startswith(("_", ".")) for part in relative.split("/"))
        if info.is_file and info.path.endswith(".parquet") and not hidden:
            found.append((info.path, info.size))
    if not found:
        raise DataError(f"{loc.uri}: no .parquet files here or in its folders; check data.uri")
    return sorted(found)


def _split_folder(loc: Location, path: str) -> str | None:
    relative = path[len(loc.path) :].lstrip("/")
    top = relative.split("/", 1)[0] if "/" in relative else ""
    return SPLIT_NAMES.get(top.lower())


Plan = dict[str, tuple[list[str], RowSelect]]


def _plan_splits(
    data: DataConfig, seed: int, loc: Location, found: list[tuple[str, int]]
) -> tuple[str, Plan]:
    """(a description of the layout, split -> (files, row selection))."""
    folders: dict[str, list[str]] = {}
    for path, _ in found:
        folder = _split_folder(loc, path)
        if folder is not None:
            folders.setdefault(folder, []).append(path)
    if not folders:
        every = [path for path, _ in found]
        if data.split_column:
            names = {s: tuple(v for v, n in SPLIT_NAMES.items() if n == s) for s in SPLITS}
            plan = {
                s: (every, RowSelect(column=data.split_column, values=names[s])) for s in SPLITS
            }
            return f"one folder split by column {data.split_column!r}", plan
        plan = _drawn(every, seed, data, carve=("test", "val"))
        return (
            f"one folder, {data.test_fraction:.0%} test and {data.val_fraction:.0%} val drawn "
            f"from (seed {seed}, row id)",
            plan,
        )
    outside = [p for p, _ in found if _split_folder(loc, p) is None]
    if data.split_column:
        raise DataError(
            f"{loc.uri}: has split folders ({', '.join(sorted(folders))}), so"
            f" data.split_column={data.split_column!r} has nothing to split; leave it empty"
        )
    if outside or "train" not in folders:
        stray = loc.uri_of(outside[0]) if outside else "no train/ folder"
        raise DataError(
            f"{loc.uri}: a set split in folders needs train/ (val/ and test/ optional) and no"
            f" Parquet beside them ({stray}); move the files or point data.uri at one folder"
        )
    carve = tuple(s for s in ("test", "val") if s not in folders)
    plan = _drawn(folders["train"], seed, data, carve)
    for split in ("val", "test"):
        if split in folders:
            plan[split] = (folders[split], RowSelect())
    drawn = " and ".join(f"{s} drawn from train/" for s in reversed(carve))
    return "folders " + ", ".join(f"{s}/" for s in SPLITS if s in folders) + (
        f"; {drawn}" if drawn else ""
    ), plan


def _drawn(files: list[str], seed: int, data: DataConfig, carve: tuple[str, ...]) -> Plan:
    """``carve``'s splits as consecutive shares of the draw over ``files``; train the rest."""
    share = {"test": data.test_fraction, "val": data.val_fraction}
    plan: Plan = {}
    low = 0.0
    for split in carve:
        plan[split] = (files, RowSelect(low=low, high=low + share[split], seed=seed))
        low += share[split]
    plan["train"] = (files, RowSelect(low=low, high=1.0, seed=seed) if carve else RowSelect())
    return plan


def _used(path: str, plan: Plan) -> bool:
    return any(path in files for files, _ in plan.values())


def _footer(loc: Location, path: str, size: int) -> _File:
    try:
        meta = pq.read_metadata(path, filesystem=loc.filesystem)
    except (pa.ArrowException, OSError) as exc:
        raise read_failure(exc, loc.uri_of(path)) from None
    groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return _File(path, size, groups, meta.schema.to_arrow_schema())


# -- columns ------------------------------------------------------------------------------------


def _shown(names: list[str]) -> str:
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def expand_feature_columns(schema: pa.Schema, data: DataConfig, where: str) -> tuple[str, ...]:
    """``data.feature_columns`` with each pattern (``px_*``, ``*``) replaced by the columns it
    matches, in the file's order; the label, id and split columns never match a pattern, nor
    does the index pandas stores beside a DataFrame's columns (``__index_level_0__``)."""
    taken = {data.label_column, data.id_column, data.split_column, *pandas_index(schema)}
    names: list[str] = []
    for item in data.feature_columns:
        if not any(ch in item for ch in "*?["):
            names.append(item)
            continue
        matched = [n for n in schema.names if fnmatch.fnmatchcase(n, item) and n not in taken]
        if not matched:
            raise DataError(
                f"{where}: data.feature_columns pattern {item!r} matches no column; its"
                f" columns: {_shown(schema.names)}"
            )
        names += [n for n in matched if n not in names]
    return tuple(names)


def pandas_index(schema: pa.Schema) -> list[str]:
    """The columns in which ``DataFrame.to_parquet`` stored the frame's index (a filtered
    frame's row numbers): not data."""
    try:
        metadata = schema.pandas_metadata or {}
    except ValueError:  # metadata that is not JSON: no pandas index to skip
        return []
    return [name for name in metadata.get("index_columns", []) if isinstance(name, str)]


def check_columns(schema: pa.Schema, data: DataConfig, where: str, label: bool = True) -> None:
    """Every named column exists with a type it can be read as (the label column too, unless
    ``label`` is false: data to score may have none)."""
    wanted = [(data.label_column, "data.label_column")] if label else []
    wanted += [(name, "data.feature_columns") for name in data.feature_columns]
    for name, key in (
        (data.image_column, "data.image_column"),
        (data.id_column, "data.id_column"),
        (data.split_column, "data.split_column"),
    ):
        if name:
            wanted.append((name, key))
    names = schema.names
    for name, key in wanted:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DataError(
                f"{where}: no column {name!r} ({key}); {hint}its columns: {_shown(names)}"
            )

    def refuse(name: str, key: str, expected: str) -> None:
        raise DataError(
            f"{where}: column {name!r} ({key}) is {schema.field(name).type}, expected {expected}"
        )

    label_type = schema.field(data.label_column).type if label else pa.int64()
    if not (pa.types.is_integer(label_type) or is_string(label_type)):
        refuse(data.label_column, "data.label_column", "integers or strings")
    if data.image_column and not images.is_image_type(schema.field(data.image_column).type):
        refuse(
            data.image_column,
            "data.image_column",
            "binary PNG/JPEG bytes or a {bytes, path} struct",
        )
    single_list = len(data.feature_columns) == 1 and is_list_of_numbers(
        schema.field(data.feature_columns[0]).type
    )
    for name in data.feature_columns:
        if not single_list and feature_kind(schema.field(name).type) is None:
            refuse(
                name,
                "data.feature_columns",
                "numbers, strings (categories) or one column holding lists of numbers",
            )
    if data.id_column and not pa.types.is_integer(schema.field(data.id_column).type):
        refuse(data.id_column, "data.id_column", "integers")
    if data.split_column and not is_string(schema.field(data.split_column).type):
        refuse(data.split_column, "data.split_column", "strings (train, val, test)")


def _fitter(data: DataConfig, schema: pa.Schema) -> Fitter | None:
    """What fits the feature columns' encoding on the training rows; None for a list or an
    image column."""
    if data.image_column or (
        len(data.feature_columns) == 1
        and is_list_of_numbers(schema.field(data.feature_columns[0]).type)
    ):
        return None
    kinds = []
    for name in data.feature_columns:
        tp = schema.field(name).type
        kinds.append((name, feature_kind(tp) or "", dtype_name(tp)))
    return Fitter(kinds, data.missing, data.normalize, data.max_categories)


# -- the one pass over labels, ids and splits ---------------------------------------------------


@dataclass
class _Labels:
    """What the scan learnt of one split's labels: the strings, or the lowest (and where it
    is: file, row) and highest integer."""

    strings: set[str]
    low: int | None = None
    high: int | None = None
    low_at: str = ""


def _scan(
    loc: Location,
    files: dict[str, _File],
    plan: Plan,
    mapping: ColumnMapping,
    max_classes: int,
    seen_ids: UniqueIds,
    fitter: Fitter | None = None,
) -> tuple[dict[str, SplitInfo], dict[str, _Labels]]:
    """Read the label/id/split columns of every file once: rows of each split per row group,
    each split's labels; refuse nulls, unknown split names, repeated ids (collected in
    ``seen_ids``, bounded memory) and more classes than ``max_classes``. The feature columns
    ``fitter`` needs are read in the same pass and their training rows tallied."""
    counts: dict[str, dict[str, tuple[int, ...]]] = {s: {} for s in plan}
    labels = {s: _Labels(set()) for s in plan}
    fitted = fitter.needs() if fitter is not None else []
    columns = list(dict.fromkeys(c for c in (mapping.label, mapping.id, *fitted) if c))
    split_column = next((sel.column for _, sel in plan.values() if sel.column), "")
    if split_column and split_column not in columns:
        columns.append(split_column)

    def read(path: str) -> pa.Table:
        try:
            return pq.read_table(path, columns=columns, filesystem=loc.filesystem)
        except (pa.ArrowException, OSError) as exc:
            raise read_failure(exc, loc.uri_of(path)) from None

    # Read ahead concurrently (a bounded window of files), processed in the files' order.
    for owner, ((path, f), table) in enumerate(
        zip(files.items(), imap_ordered(read, list(files)), strict=True)
    ):
        where = loc.uri_of(path)
        ids = mapping.ids(table, path, 0, where)
        if mapping.id:
            seen_ids.add(ids, owner)
        if split_column:
            _check_split_names(table.column(split_column), split_column, where)
        label = table.column(mapping.label)
        if label.null_count:
            raise DataError(
                f"{where}: {label.null_count} rows have a null label ({mapping.label!r}); fill"
                " or drop them"
            )
        bounds = np.cumsum((0, *f.groups))
        for split, (paths, select) in plan.items():
            if path not in paths:
                continue
            mask = select.mask(table, ids)
            chosen = np.ones(table.num_rows, bool) if mask is None else mask
            running = np.concatenate([[0], np.cumsum(chosen)])
            counts[split][path] = tuple(int(n) for n in running[bounds[1:]] - running[bounds[:-1]])
            _note_labels(labels[split], label, chosen, where, mapping.label, max_classes)
            if fitter is not None and fitted and split == "train":
                rows = table.select(fitted).filter(pa.array(chosen))
                try:
                    fitter.add(arrow_columns(rows, fitted), where)
                except EncodingError as exc:
                    raise DataError(str(exc)) from None
    if mapping.id:
        repeat = seen_ids.first_repeat()
        if repeat is not None:
            value, a, b, total = repeat
            names = list(files)
            raise DataError(
                f"{loc.uri}: id {value} ({mapping.id!r}) appears in {loc.uri_of(names[a])} and "
                f"again in {loc.uri_of(names[b])} ({total} repeated ids); ids must be unique"
            )
    splits = {}
    for split in SPLITS:
        paths = plan[split][0]
        groups = tuple(counts[split][p] for p in paths)
        rows = sum(sum(g) for g in groups)
        if rows == 0:
            raise DataError(f"{loc.uri}: the {split} split has no rows ({_why_empty(split, plan)})")
        size = sum(
            files[p].size * sum(g) // max(1, sum(files[p].groups))
            for p, g in zip(paths, groups, strict=True)
        )
        sizes = tuple(files[p].size for p in paths)
        splits[split] = SplitInfo(tuple(paths), rows, size, row_groups=groups, sizes=sizes)
    return splits, labels


def _why_empty(split: str, plan: Plan) -> str:
    select = plan[split][1]
    if select.column:
        return f"no row's {select.column!r} is one of {', '.join(select.values)}"
    if split != "train" and not select.everything:
        return f"raise data.{split}_fraction"
    return "its files hold no rows"


def _check_split_names(column: pa.ChunkedArray, name: str, where: str) -> None:
    values = string_values(column)
    unknown = sorted({str(v) for v in set(values.tolist()) if v not in SPLIT_NAMES})
    if unknown:
        raise DataError(
            f"{where}: split column {name!r} holds {', '.join(map(repr, unknown[:3]))}; each row"
            " needs train, val (validation, valid, dev) or test"
        )


def _note_labels(
    seen: _Labels, label: pa.ChunkedArray, chosen: np.ndarray, where: str, name: str, most: int
) -> None:
    """Add a file's chosen rows' labels to ``seen``; refuse a label that would make more
    than ``most`` classes as soon as it is met, naming its row."""
    fix = f"fix the label or raise data.max_classes (now {most:,})"
    if is_string(label.type):
        seen.strings.update(np.unique(string_values(label)[chosen].astype(str)).tolist())
        if len(seen.strings) > most:
            raise DataError(
                f"{where}: label column {name!r} holds more than {most:,} distinct strings (a"
                f" class each) up to this file; {fix}"
            )
        return
    rows = np.flatnonzero(chosen)
    values = label.to_numpy()[rows]
    if not len(values):
        return
    low, high = int(values.min()), int(values.max())
    if high >= most:
        row = int(rows[int(values.argmax())])
        raise DataError(
            f"{where}: row {row} has label {high} ({name!r}), which would make {high + 1:,}"
            f" classes; {fix}"
        )
    if seen.low is None or low < seen.low:
        seen.low, seen.low_at = low, f"{where}, row {int(rows[int(values.argmin())])}"
    seen.high = high if seen.high is None else max(seen.high, high)


def _integer_classes(labels: dict[str, _Labels], data: DataConfig) -> int:
    lowest = min((s for s in labels.values() if s.low is not None), key=lambda s: s.low or 0)
    highs = [s.high for s in labels.values() if s.high is not None]
    if lowest.low is not None and lowest.low < 0:
        raise DataError(
            f"{lowest.low_at}: label column {data.label_column!r} holds {lowest.low}; integer"
            " labels are class indices 0, 1, 2, ... (or use strings: they become sorted classes)"
        )
    classes = max(highs) + 1
    if classes < 2:
        raise DataError(f"{data.uri}: every label is 0; a classifier needs at least two classes")
    return classes


# -- the feature shape and classes ---------------------------------------------------------------


def _first_row(loc: Location, f: _File, mapping: ColumnMapping) -> pa.Table:
    """One feature row of the first training file (for its shape)."""
    columns = [mapping.image] if mapping.image else list(mapping.features)
    group = next((i for i, rows in enumerate(f.groups) if rows), None)
    if group is None:
        raise DataError(f"{loc.uri_of(f.path)}: holds no rows")
    try:
        with loc.filesystem.open_input_file(f.path) as fh:
            table = pq.ParquetFile(fh).read_row_group(group, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise read_failure(exc, loc.uri_of(f.path)) from None
    return table.slice(0, 1)


def _finish(
    data: DataConfig,
    draft: ColumnMapping,
    first: pa.Table,
    labels: dict[str, _Labels],
    where: str,
) -> ColumnMapping:
    """The mapping with its feature width, image shape and classes filled in."""
    fields = dict(draft.__dict__)
    if data.image_column:
        value = images.image_bytes(
            first.column(data.image_column).chunk(0), data.image_column, where
        )
        image = images.open_image(value[0].as_py(), f"{where}, row 0")
        height, width = data.image_size or (image.height, image.width)
        channels = data.image_channels or images.channels_of(image)
        fields.update(
            image_shape=(channels, height, width),
            image_fit=data.image_fit,
            num_features=channels * height * width,
        )
    elif len(data.feature_columns) == 1 and is_list_of_numbers(first.schema.field(0).type):
        column = first.column(0)
        if column.null_count:
            raise DataError(f"{where}: the first row of {data.feature_columns[0]!r} is null")
        fields["num_features"] = len(column[0].as_py())
    else:
        fields["num_features"] = len(data.feature_columns)
    train = labels["train"]
    if train.strings or any(s.strings for s in labels.values()):
        classes = tuple(sorted(train.strings))
        for split in ("val", "test"):
            unseen = sorted(labels[split].strings - train.strings)
            if unseen:
                raise DataError(
                    f"{data.uri}: label {unseen[0]!r} of the {split} split has no training rows"
                    f" ({len(unseen)} such classes); a class the model never saw cannot be"
                    " predicted: move some of its rows to train"
                )
        if len(classes) < 2:
            raise DataError(f"{data.uri}: the training split has one class ({classes[0]!r})")
        fields["classes"] = classes
    return ColumnMapping(**fields)
