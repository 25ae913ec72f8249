"""A user's table columns as the feature row a network takes: the one implementation that
training's reader, batch scoring, serving and the logged model all run.

Each feature column is a number or a category:

* **number** (float, int, bool as stored): cast to float32; a missing value (null, NaN) is
  refused, or filled with the training split's mean or with 0 (``data.missing``); then, with
  ``data.normalize``, standardized with the training split's mean and standard deviation.
* **category** (string or dictionary column): one-hot over the training split's vocabulary
  (sorted), plus one last slot for a value first seen later (and, when missing values are
  filled, for a missing one). A one-hot row keeps every value's distance to every other
  the same, which is what an MLP with batch norm expects; an embedding would learn more per
  value but needs its own layer in every recipe and does not help at the vocabulary sizes
  ``data.max_categories`` allows.

Every statistic (the vocabularies, means, deviations) is fitted on the training split only
(:class:`Fitter`, by streaming its files) and stored with the model (``model.json``).

This file is logged with the model as code (MLflow's ``code_paths``), so that a model loaded
anywhere with ``mlflow.pyfunc.load_model`` encodes its input exactly as training did: it must
import nothing from this project, only numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

NUMBER = "number"
CATEGORY = "category"
#: What a missing feature value becomes (``data.missing``).
MISSING_POLICIES = ("refuse", "mean", "zero")


class EncodingError(ValueError):
    """A column that cannot be encoded as the model was trained: missing, or holding a
    value the encoding refuses. The message names the column and how to fix it."""


@dataclass(frozen=True)
class Column:
    """One feature column.

    Attributes:
        name: the column's name in the user's table.
        kind: :data:`NUMBER` or :data:`CATEGORY`.
        dtype: how the training data stored it (``float64``, ``int32``, ``string``...): the
            logged model's signature asks for it.
        fill: the value a missing number becomes (a missing category takes the last slot
            when fill is set); None: missing values are refused.
        shift, scale: a number becomes ``(value - shift) * scale`` (0 and 1 unless
            ``data.normalize``).
        categories: a category's vocabulary, sorted; one slot each and one more for values
            not in it.
    """

    name: str
    kind: str
    dtype: str
    fill: float | None = None
    shift: float = 0.0
    scale: float = 1.0
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return 1 if self.kind == NUMBER else len(self.categories) + 1


@dataclass(frozen=True)
class TableEncoding:
    """The feature columns, in the order their slots take in the feature row."""

    columns: tuple[Column, ...]
    #: ``data.missing`` as fitted (recorded with the run and the model).
    missing: str = "refuse"
    normalize: bool = False

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def slot_names(self) -> list[str]:
        """A name per slot of the feature row (``colour=red``, ``colour=<other>``)."""
        names: list[str] = []
        for c in self.columns:
            if c.kind == NUMBER:
                names.append(c.name)
            else:
                names += [f"{c.name}={v}" for v in c.categories] + [f"{c.name}=<other>"]
        return names

    def encode(
        self, columns: Mapping[str, tuple[np.ndarray, np.ndarray]], where: str
    ) -> np.ndarray:
        """The feature rows (N, width) float32 of ``columns``: name -> (values, missing),
        ``values`` a numpy array (float for numbers, object or str for categories) and
        ``missing`` a bool array, True where the value is absent. Raises EncodingError
        naming ``where`` for a missing column or a value the encoding refuses."""
        absent = [c.name for c in self.columns if c.name not in columns]
        if absent:
            raise EncodingError(
                f"{where}: no column {', '.join(map(repr, absent[:5]))}"
                f"{' ...' if len(absent) > 5 else ''}; the model takes the columns"
                f" {', '.join(self.names[:12])}{' ...' if len(self.names) > 12 else ''}"
            )
        rows = len(columns[self.columns[0].name][0]) if self.columns else 0
        out = np.zeros((rows, self.width), np.float32)
        at = 0
        for c in self.columns:
            values, missing = columns[c.name]
            if c.kind == NUMBER:
                out[:, at] = self._number(c, values, missing, where)
            else:
                out[np.arange(rows), at + self._category(c, values, missing, where)] = 1.0
            at += c.width
        return out

    def _number(self, c: Column, values: np.ndarray, missing: np.ndarray, where: str):
        x = np.asarray(values, dtype=np.float64)
        gaps = missing | np.isnan(x)
        if gaps.any():
            if c.fill is None:
                raise EncodingError(
                    f"{where}: column {c.name!r} has {int(gaps.sum())} missing values; fill"
                    " or drop those rows, or train with data.missing=mean or zero"
                )
            x = np.where(gaps, c.fill, x)
        if not np.isfinite(x).all():
            raise EncodingError(
                f"{where}: column {c.name!r} holds {x[~np.isfinite(x)][0]}; every value must"
                " be finite"
            )
        return (x - c.shift) * c.scale

    def _category(self, c: Column, values: np.ndarray, missing: np.ndarray, where: str):
        """Each row's slot within the column: its index in the vocabulary, or the last."""
        other = len(c.categories)
        if missing.any() and c.fill is None:
            raise EncodingError(
                f"{where}: column {c.name!r} has {int(missing.sum())} missing values; fill or"
                " drop those rows, or train with data.missing=mean or zero (a missing"
                " category then takes the <other> slot)"
            )
        text = np.where(missing, "", np.asarray(values, dtype=object)).astype(str)
        if not other:
            return np.full(len(text), other, np.int64)
        known = np.asarray(c.categories, dtype=str)
        index = np.minimum(np.searchsorted(known, text), other - 1)
        return np.where((known[index] == text) & ~missing, index, other)

    def example_columns(self, rows: int = 2) -> dict[str, np.ndarray]:
        """``rows`` rows every column of which the encoding takes, in the stored types: a
        number's fill (or 0), a category's first value (a serving example that needs no data)."""
        out: dict[str, np.ndarray] = {}
        for c in self.columns:
            if c.kind == CATEGORY:
                out[c.name] = np.array([c.categories[0] if c.categories else ""] * rows, object)
            else:
                value = c.fill if c.fill is not None else 0.0
                out[c.name] = np.full(rows, value).astype(np.dtype(c.dtype))
        return out

    # -- as stored in model.json -----------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping) -> TableEncoding:
        columns = []
        for c in raw["columns"]:
            fill = c.get("fill")
            columns.append(
                Column(
                    name=str(c["name"]),
                    kind=str(c["kind"]),
                    dtype=str(c["dtype"]),
                    fill=None if fill is None else float(fill),
                    shift=float(c.get("shift", 0.0)),
                    scale=float(c.get("scale", 1.0)),
                    categories=tuple(str(v) for v in c.get("categories", ())),
                )
            )
        if any(c.kind not in (NUMBER, CATEGORY) for c in columns):
            raise ValueError(f"unknown column kind in {[c.kind for c in columns]}")
        return cls(tuple(columns), str(raw.get("missing", "refuse")), bool(raw.get("normalize")))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass
class _Tally:
    """What the training rows of one column add up to (streamed, bounded memory)."""

    count: int = 0
    mean: float = 0.0
    #: Sum of squared distances from the mean (Chan et al.'s pairwise update: no
    #: cancellation for values far from 0, as a sum of squares would suffer).
    m2: float = 0.0
    values: set = field(default_factory=set)

    def add_numbers(self, x: np.ndarray) -> None:
        if not len(x):
            return
        n, mean = len(x), float(x.mean())
        m2 = float(np.square(x - mean).sum())
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total


class Fitter:
    """The statistics of the training split's feature columns, fed a batch of rows at a time
    (:meth:`add`), then :meth:`encoding`. Memory: a few numbers per number column and at
    most ``max_categories`` values per category column, whatever the rows."""

    def __init__(
        self,
        dtypes: Sequence[tuple[str, str, str]],
        missing: str,
        normalize: bool,
        max_categories: int,
    ) -> None:
        """``dtypes``: (name, kind, dtype) per feature column, in order."""
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        self._dtypes = list(dtypes)
        self._missing = missing
        self._normalize = normalize
        self._max = max_categories
        self._tallies = {name: _Tally() for name, _, _ in self._dtypes}

    def needs(self) -> list[str]:
        """The columns whose values the fit must see (a number needs none unless its mean
        or deviation is used)."""
        numbers = self._missing == "mean" or self._normalize
        return [n for n, kind, _ in self._dtypes if kind == CATEGORY or numbers]

    def add(self, columns: Mapping[str, tuple[np.ndarray, np.ndarray]], where: str) -> None:
        """Tally training rows: name -> (values, missing) as :meth:`TableEncoding.encode`
        takes them, for the columns of :meth:`needs`."""
        for name, kind, _ in self._dtypes:
            if name not in columns:
                continue
            values, missing = columns[name]
            tally = self._tallies[name]
            if kind == CATEGORY:
                seen = np.asarray(values, dtype=object)[~missing]
                tally.values.update(np.unique(seen.astype(str)).tolist())
                if len(tally.values) > self._max:
                    raise EncodingError(
                        f"{where}: column {name!r} holds more than {self._max:,} distinct"
                        " values up to this file (a one-hot slot each); leave it out of"
                        " data.feature_columns (an id or free text is no category) or raise"
                        " data.max_categories"
                    )
                continue
            x = np.asarray(values, dtype=np.float64)[~missing]
            tally.add_numbers(x[np.isfinite(x)])

    def encoding(self) -> TableEncoding:
        fill_missing = self._missing != "refuse"
        columns = []
        for name, kind, dtype in self._dtypes:
            tally = self._tallies[name]
            if kind == CATEGORY:
                columns.append(
                    Column(
                        name,
                        kind,
                        dtype,
                        0.0 if fill_missing else None,
                        categories=tuple(sorted(tally.values)),
                    )
                )
                continue
            fill = {"refuse": None, "zero": 0.0, "mean": tally.mean}[self._missing]
            shift, scale = 0.0, 1.0
            if self._normalize and tally.count:
                std = math.sqrt(tally.m2 / tally.count)
                shift, scale = tally.mean, (1.0 / std if std > 1e-12 else 1.0)
            columns.append(Column(name, kind, dtype, fill, shift, scale))
        return TableEncoding(tuple(columns), self._missing, self._normalize)
