"""The user's own Parquet, mapped row group by row group onto the contract's columns.

A :class:`ColumnMapping` is worked out once by the driver (:mod:`pipeline.data.own_parquet`)
and travels to the workers inside :class:`~pipeline.data.contract.DatasetInfo`. A worker's
reader applies :meth:`ColumnMapping.to_contract` to every row group it reads, so everything
after that point (value checks, sharding, batches, augmentation) sees ``id``, ``features`` and
``label`` exactly as in a prepared set:

* ``id``: the user's id column, or derived as ``file number << 32 | row in file``;
* ``features``: number and category columns encoded as the fitted
  :class:`~pipeline.data.table_encoding.TableEncoding` says (float32: numbers cast, filled,
  standardized; categories one-hot), one list column flattened (float32), or an image column
  decoded to uint8 pixels (channels first, scale 1/255);
* ``label``: integers as they are; strings as their index in the sorted training classes.

Splits that are not folders are row selections (:class:`RowSelect`): by a split column's
value, or by a draw from ``(seed, row id)`` that puts a fixed share of the rows in each split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data import images
from pipeline.data.contract import FEATURES, ID, LABEL, single_chunk
from pipeline.data.table_encoding import CATEGORY, NUMBER, EncodingError, TableEncoding
from pipeline.errors import DataError

#: Values of a split column, as written by common tools, -> our split names.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
#: Scale of uint8 pixels: 0..255 -> 0..1.
PIXEL_SCALE = 1 / 255


def derived_ids(file_number: int, first_row: int, rows: int) -> np.ndarray:
    """Row ids for a file without an id column: unique across files, stable while they are."""
    return (np.int64(file_number) << np.int64(32)) + np.arange(
        first_row, first_row + rows, dtype=np.int64
    )


def unit_draws(ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform draw in [0, 1) per row id, from (seed, id) alone (SplitMix64's finaliser):
    the same row lands in the same split on every machine and in every run with this seed."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class RowSelect:
    """Which rows of a split's files belong to it: all of them (the default), those whose
    split column names the split, or those whose draw lies in ``[low, high)``."""

    column: str = ""
    values: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 1.0
    seed: int = 0

    @property
    def everything(self) -> bool:
        return not self.column and self.low == 0.0 and self.high == 1.0

    def mask(self, table: pa.Table, ids: np.ndarray) -> np.ndarray | None:
        """Rows of ``table`` in the split (None: all of them)."""
        if self.column:
            values = string_values(table.column(self.column))
            return np.isin(values, list(self.values))
        if self.everything:
            return None
        draws = unit_draws(ids, self.seed)
        return (draws >= self.low) & (draws < self.high)


def string_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A string (or dictionary-encoded string) column as a numpy object array."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)


def is_numeric(tp: pa.DataType) -> bool:
    return pa.types.is_integer(tp) or pa.types.is_floating(tp)


def feature_kind(tp: pa.DataType) -> str | None:
    """How a stored column becomes features: a number (ints, floats, bools), a category
    (strings, dictionary-encoded strings), or None (neither)."""
    if is_numeric(tp) or pa.types.is_boolean(tp):
        return NUMBER
    return CATEGORY if is_string(tp) else None


def dtype_name(tp: pa.DataType) -> str:
    """A stored column's type by the name pandas gives it when it reads the column: numpy's
    for numbers (``float64``, ``int32``, ``bool``), ``string`` for text, ``category`` for
    dictionary-encoded text (a pandas Categorical, as written)."""
    if feature_kind(tp) == CATEGORY:
        return "category" if pa.types.is_dictionary(tp) else "string"
    return np.dtype(tp.to_pandas_dtype()).name


def arrow_columns(table: pa.Table, names) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``names``' columns of ``table`` as :meth:`TableEncoding.encode` takes them: name ->
    (values, missing); numbers as float64 (a null as NaN), strings as objects."""
    out = {}
    for name in names:
        column = table.column(name)
        missing = column.is_null().to_numpy(zero_copy_only=False)
        if is_string(column.type):
            values = string_values(column)
        else:
            values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        out[name] = (values, np.asarray(missing, dtype=bool))
    return out


def is_string(tp: pa.DataType) -> bool:
    if pa.types.is_dictionary(tp):
        tp = tp.value_type
    return pa.types.is_string(tp) or pa.types.is_large_string(tp) or pa.types.is_string_view(tp)


def is_list_of_numbers(tp: pa.DataType) -> bool:
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    return any(check(tp) for check in lists) and is_numeric(tp.value_type)


@dataclass(frozen=True)
class ColumnMapping:
    """How the user's columns become ``id``, ``features`` and ``label`` (see the module doc).

    Attributes:
        label: the label column.
        features: numeric columns to stack, or one list column.
        image: the encoded-image column (instead of ``features``).
        image_shape: (channels, height, width) images are brought to.
        image_fit: ``resize`` or ``crop`` (see :func:`pipeline.data.images.decode`).
        id: the id column; empty = derived from (file number, row).
        classes: string labels' class names, index = class; empty for integer labels.
        encoding: how the feature columns become the feature row, fitted on the training
            split (None for a list or image column).
        file_numbers: each file's number in the derived ids (path -> number).
        selects: each split's row selection.
        num_features: the width of a feature row.
        layout: how the splits were found, in words (for the start-up line and the params).
    """

    label: str
    features: tuple[str, ...] = ()
    image: str = ""
    image_shape: tuple[int, int, int] = (1, 1, 1)
    image_fit: str = "resize"
    id: str = ""
    classes: tuple[str, ...] = ()
    encoding: TableEncoding | None = None
    file_numbers: dict[str, int] = field(default_factory=dict)
    selects: dict[str, RowSelect] = field(default_factory=dict)
    num_features: int = 0
    layout: str = ""

    def facts(self) -> dict[str, str]:
        """What was derived from the data, in words: shown at start-up and logged as params."""
        if self.image:
            c, h, w = self.image_shape
            features = f"{self.image!r} decoded to {c}x{h}x{w} uint8 ({self.image_fit})"
        elif self.encoding is None:
            features = f"list column {self.features[0]!r} of {self.num_features} values"
        else:
            features = encoding_facts(self.encoding)
        if self.classes:
            shown = ", ".join(self.classes[:20]) + (", ..." if len(self.classes) > 20 else "")
            labels = f"{self.label!r}: {len(self.classes)} classes by name ({shown})"
        else:
            labels = f"{self.label!r}: integers are the class indices"
        return {
            "layout": self.layout,
            "features": features,
            "labels": labels,
            "ids": f"column {self.id!r}" if self.id else "derived from (file, row)",
        }

    def columns(self, split: str) -> list[str]:
        """The columns a reader of ``split`` needs."""
        wanted = [self.image] if self.image else list(self.features)
        wanted.append(self.label)
        select = self.selects.get(split, RowSelect())
        for extra in (self.id, select.column):
            if extra and extra not in wanted:
                wanted.append(extra)
        return wanted

    def ids(self, table: pa.Table, path: str, first_row: int, where: str) -> np.ndarray:
        if not self.id:
            return derived_ids(self.file_numbers[path], first_row, table.num_rows)
        column = table.column(self.id)
        if column.null_count:
            raise DataError(f"{where}: {column.null_count} rows have a null id ({self.id!r})")
        return pc.cast(column, pa.int64()).to_numpy()

    def to_contract(
        self, table: pa.Table, path: str, first_row: int, split: str, where: str
    ) -> pa.Table:
        """Rows of ``split`` in ``table`` (rows ``first_row``... of file ``path``) in the
        contract's columns. Raises DataError naming ``where`` for a value that cannot map."""
        table, ids = self.split_rows(table, path, first_row, split, where)
        labels = self.label_indices(table.column(self.label), where)
        features = self.feature_values(table, where)
        return pa.table({ID: ids, FEATURES: features, LABEL: labels})

    def split_rows(
        self, table: pa.Table, path: str, first_row: int, split: str, where: str
    ) -> tuple[pa.Table, np.ndarray]:
        """The rows of ``table`` (rows ``first_row``... of file ``path``) that belong to
        ``split``, in the user's columns, and their ids."""
        ids = self.ids(table, path, first_row, where)
        mask = self.selects.get(split, RowSelect()).mask(table, ids)
        if mask is None:
            return table, ids
        return table.filter(pa.array(mask)), ids[mask]

    def label_indices(self, column: pa.ChunkedArray, where: str) -> pa.Array:
        """Labels as int64 class indices (nulls stay null: the contract's check names them)."""
        if not self.classes:
            return pc.cast(column, pa.int64()).combine_chunks()
        values = string_values(column)
        known = np.asarray(self.classes, dtype=str)
        index = np.searchsorted(known, values.astype(str))
        index = np.minimum(index, len(known) - 1)
        unknown = (known[index] != values) & (values != None)  # noqa: E711 - elementwise
        if unknown.any():
            first = values[np.flatnonzero(unknown)[0]]
            raise DataError(
                f"{where}: label {first!r} is not one of the training split's"
                f" {len(known)} classes ({int(unknown.sum())} such rows); a class must have"
                " training rows"
            )
        return pa.array(index.astype(np.int64), mask=values == None)  # noqa: E711

    def feature_values(self, table: pa.Table, where: str) -> pa.Array:
        """The feature rows as a fixed-size list: float32 for numbers, uint8 for pixels."""
        if self.image:
            data = images.image_bytes(
                single_chunk(table.column(self.image)),
                self.image,
                f"{where}, column {self.image!r}",
            )
            pixels = images.decode(data, self.image_shape, self.image_fit, where)
            return pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), self.num_features)
        if len(self.features) == 1 and is_list_of_numbers(
            table.schema.field(self.features[0]).type
        ):
            return self._list_values(single_chunk(table.column(self.features[0])), where)
        assert self.encoding is not None, "number and category columns need their encoding"
        try:
            stacked = self.encoding.encode(arrow_columns(table, self.features), where)
        except EncodingError as exc:
            raise DataError(str(exc)) from None
        return pa.FixedSizeListArray.from_arrays(pa.array(stacked.ravel()), stacked.shape[1])

    def _list_values(self, column: pa.Array, where: str) -> pa.Array:
        name = self.features[0]
        if column.null_count:
            raise DataError(f"{where}: column {name!r} has {column.null_count} null lists")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        wrong = lengths != self.num_features
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            raise DataError(
                f"{where}: row {row} of list column {name!r} holds {lengths[row]} values, the"
                f" first training row {self.num_features}; every row needs the same length"
            )
        flat = pc.cast(pc.list_flatten(column), pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, self.num_features)


def encoding_facts(encoding: TableEncoding) -> str:
    """The feature columns' encoding in words (the start-up line, the run's params)."""
    numbers = sum(c.kind == NUMBER for c in encoding.columns)
    categories = [c for c in encoding.columns if c.kind == CATEGORY]
    parts = [f"{numbers} number columns"] if numbers else []
    if categories:
        parts.append(
            f"{len(categories)} category columns one-hot ("
            + ", ".join(f"{c.name!r}: {len(c.categories)}+1" for c in categories[:4])
            + (", ..." if len(categories) > 4 else "")
            + ")"
        )
    how = {
        "refuse": "missing values refused",
        "mean": "missing values filled with the training mean",
        "zero": "missing values filled with 0",
    }[encoding.missing]
    scaled = ", standardized" if encoding.normalize else ""
    return f"{' and '.join(parts)} -> {encoding.width} float32 ({how}{scaled})"
