"""Scoring rows with a registered model's MLflow pyfunc: the Ray Data actor that loads it once
and the conversion from decoded rows to the predictions table.

Output columns, per row:

* classifier: ``id``; ``label`` (when the data had labels); ``prediction`` (class index);
  ``prediction_name`` (when the model's classes have names); ``probabilities``
  (fixed-size list of float32, one per class).
* generator: ``id``; ``label`` (the class asked for); ``features`` (the generated image,
  float32 in [0, 1], flattened as the training data's features).
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa

from pipeline.data.contract import FEATURES, ID
from pipeline.predict.inputs import OUT_LABEL

PREDICTION = "prediction"
PREDICTION_NAME = "prediction_name"
PROBABILITIES = "probabilities"


def model_files(directory: str | Path) -> dict[str, bytes]:
    """Every file of a bundle's folder, by relative path: what the actors load the model
    from (on a cluster they cannot see the driver's disk)."""
    root = Path(directory)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def unpack_model(files: dict[str, bytes], directory: str | Path) -> Path:
    """Write :func:`model_files`' output under ``directory``; a name that would land outside
    it is refused."""
    root = Path(directory).resolve()
    for name, data in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"model file name {name!r} escapes the model folder")
        target = root.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def load_model(files: dict[str, bytes]):
    """The model in :func:`model_files`' output, loaded by this installation's loader, never
    the registry's code (the rows are shaped and checked by the reader, so MLflow's signature
    check is not needed either). The files go to a temporary folder that is removed once
    they are loaded (the loaders read everything into memory): a Ray actor is killed
    without running finalizers, so a folder it kept for its life stayed behind in the
    temporary directory after every scoring job."""
    # MXNet is imported before the folder exists: an actor stopped during the import
    # (seconds; a scoring job that ends while Ray Data still starts actors) left the folder.
    import mxnet  # noqa: F401

    from pipeline.model import bundle, installed

    with tempfile.TemporaryDirectory(prefix="mxtrain-model-") as tmp:
        return installed.load(bundle.read(unpack_model(files, tmp)))


def feature_rows(table: pa.Table, num_features: int, scale: float | None) -> np.ndarray:
    """The ``features`` column as (N, D) float32, scaled as the model was trained."""
    column = table.column(FEATURES).combine_chunks()
    x = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), num_features)
    x = x.astype(np.float32, copy=scale is None and x.dtype != np.float32)
    return x * np.float32(scale) if scale is not None else x


def classifier_output(table: pa.Table, probs: np.ndarray, class_names: tuple[str, ...]) -> pa.Table:
    """The predictions table of a classifier's probabilities for ``table``'s rows."""
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    out: dict[str, pa.Array] = {ID: table.column(ID).combine_chunks()}
    if OUT_LABEL in table.column_names:
        out[OUT_LABEL] = table.column(OUT_LABEL).combine_chunks()
    index = probs.argmax(axis=1).astype(np.int64) if len(probs) else np.zeros(0, np.int64)
    out[PREDICTION] = pa.array(index)
    if class_names:
        out[PREDICTION_NAME] = pa.array(np.asarray(class_names, dtype=object)[index], pa.string())
    width = probs.shape[1] if probs.ndim == 2 else len(class_names)
    out[PROBABILITIES] = pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), width)
    return pa.table(out)


def generator_output(table: pa.Table, images: np.ndarray) -> pa.Table:
    images = np.ascontiguousarray(images, dtype=np.float32).reshape(table.num_rows, -1)
    return pa.table(
        {
            ID: table.column(ID).combine_chunks(),
            OUT_LABEL: table.column(OUT_LABEL).combine_chunks(),
            FEATURES: pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), images.shape[1]),
        }
    )


class Scorer:
    """A Ray Data actor: the bundle loaded once by the installed pyfunc loader, then
    ``__call__`` per batch of rows (a pyarrow table as
    :class:`~pipeline.predict.inputs.RowReader` makes them)."""

    def __init__(
        self,
        files: list,
        kind: str,
        num_features: int,
        scale: float | None,
        class_names: tuple[str, ...],
        seed: int = 0,
    ) -> None:
        import ray

        self._kind = kind
        self._num_features = num_features
        self._scale = scale
        self._class_names = tuple(class_names)
        self._seed = seed
        # [ObjectRef] of :func:`model_files`' dict: fetched from the object store once.
        self._model = load_model(ray.get(files[0]))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score(
            self._model,
            batch,
            self._kind,
            self._num_features,
            self._scale,
            self._class_names,
            self._seed,
        )


def score(
    model,
    batch: pa.Table,
    kind: str,
    num_features: int,
    scale: float | None,
    class_names: tuple[str, ...],
    seed: int = 0,
) -> pa.Table:
    """``model`` (an :class:`~pipeline.model.installed.InstalledModel` or a loaded
    pyfunc) applied to a batch of decoded rows."""
    import pandas as pd

    if kind == "generator":
        labels = batch.column(OUT_LABEL).to_numpy()
        first = int(batch.column(ID)[0].as_py()) if batch.num_rows else 0
        # Noise drawn from --seed and the batch's first id: a rerun over the same files
        # with the same batch size generates the same images.
        params = {"seed": (seed * 1_000_003 + first) % 2**62}
        images = model.predict(pd.DataFrame({"label": labels.astype(np.int64)}), params=params)
        return generator_output(batch, np.asarray(images))
    x = feature_rows(batch, num_features, scale)
    out = model.predict(x)
    if hasattr(out, "columns"):  # named classes: prediction + probability_<name> columns
        probs = out[[f"probability_{n}" for n in class_names]].to_numpy(np.float32)
    else:
        probs = np.asarray(out, dtype=np.float32)
    return classifier_output(batch, probs, class_names)
