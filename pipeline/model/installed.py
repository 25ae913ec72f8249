"""A registered model run by this installed package's code only.

A version in the registry is a folder that whoever may register versions or write the
artifact store can shape: its ``MLmodel`` names a loader module and code files, and may name
a cloudpickled ``python_model.pkl`` or ``code/`` folders that MLflow puts on ``sys.path``.
``mlflow.pyfunc.load_model`` runs all of that. Scoring, serving and compression never do:
they take only the version's bundle (graph, weights, ``model.json``: data, read by
:mod:`pipeline.model.bundle` with its size caps), rewrite its weights as a plain file
(:meth:`~pipeline.model.bundle.Bundle.plain_copy`) and hand it to the pyfunc classes of
*this* installation (``gluon_pyfunc.py``, ``gluon_generator_pyfunc.py``), in process
(:func:`load`) or behind a fresh MLmodel that names them (:func:`save_for_serving`).
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipeline.data import table_encoding
from pipeline.model.bundle import Bundle, BundleError

#: The module name ``gluon_pyfunc.py`` imports the logged copy of ``table_encoding.py`` by
#: (a name no other package takes).
LOGGED_ENCODING = "mxtrain_table_encoding"

#: A bundle's kind -> (module, class) of the installed loader (the same files the training
#: job logs as the model's code: bundle.PYFUNC_CODE).
LOADERS = {
    "classifier": ("pipeline.model.gluon_pyfunc", "GluonClassifier"),
    "generator": ("pipeline.model.gluon_generator_pyfunc", "GluonGenerator"),
}


class InstalledModel:
    """The installed pyfunc class with a bundle loaded: ``predict(data, params=None)`` as
    MLflow's ``PyFuncModel`` offers it (without MLflow's schema check: the callers shape
    the rows themselves)."""

    def __init__(self, python_model: Any) -> None:
        self._model = python_model

    def predict(self, data, params: dict | None = None):
        return self._model.predict(None, data, params=params)


def load(plain: Bundle) -> InstalledModel:
    """``plain`` (a :meth:`~Bundle.plain_copy`) behind the installed loader of its kind;
    BundleError when MXNet cannot load it."""
    import mxnet as mx

    module, name = LOADERS[plain.meta.kind]
    python_model = getattr(importlib.import_module(module), name)()
    try:
        python_model.load_context(SimpleNamespace(artifacts=plain.artifacts()))
    except (mx.base.MXNetError, ValueError, KeyError) as exc:
        raise BundleError(f"MXNet cannot load the network ({str(exc).splitlines()[0]})") from None
    return InstalledModel(python_model)


def save_for_serving(plain: Bundle, directory: str | Path, feature_example) -> Path:
    """An MLflow model folder in ``directory`` whose code is this installation's loader and
    whose artifacts are ``plain``'s files: what MLflow's scoring server may load."""
    import mlflow

    target = Path(directory)
    with pyfunc_arguments(plain, feature_example) as arguments:
        mlflow.pyfunc.save_model(path=str(target), **arguments)
    return target


@contextlib.contextmanager
def pyfunc_arguments(model: Bundle, example) -> Iterator[dict[str, Any]]:
    """What ``mlflow.pyfunc.save_model`` and ``log_model`` take to store ``model`` as this
    installation's pyfunc: the loader file, the bundle's files, the encoding of table columns
    beside the loader (under the name the loader imports), the signature and input example,
    and the requirements."""
    import mxnet as mx
    import numpy as np

    signature, example = model_signature(model, example)
    with tempfile.TemporaryDirectory() as code:
        helper = Path(code, f"{LOGGED_ENCODING}.py")
        shutil.copyfile(Path(table_encoding.__file__), helper)
        yield {
            "python_model": str(model.pyfunc_code),
            "artifacts": model.artifacts(),
            "code_paths": [str(helper)] if model.meta.table is not None else None,
            "signature": signature,
            "input_example": example,
            "pip_requirements": [f"mxnet=={mx.__version__}", f"numpy=={np.__version__}"],
        }


#: MLflow's type of a number column the model takes, by the numpy name of its stored type.
#: Each is the widest type MLflow converts to without loss: a float32 column takes float64
#: values too (the table as pandas computed it; the network casts to float32 either way).
COLUMN_TYPES = {
    "float64": "double",
    "float32": "double",
    "float16": "double",
    "int64": "long",
    "int32": "long",
    "int16": "long",
    "int8": "long",
    "uint32": "long",
    "uint16": "long",
    "uint8": "long",
    "bool": "boolean",
    "string": "string",
}


def _column_spec(column):
    """A table column's MLflow spec. Two kinds of column take any values, which the model's
    encoding then checks, because MLflow has no type for what pandas reads: an integer or
    bool column whose gaps the model fills (float64 with NaN where a file has gaps, integers
    where it has none), and a Categorical (which MLflow will not take as a string)."""
    from mlflow.types import ColSpec
    from mlflow.types.schema import AnyType

    declared = COLUMN_TYPES.get(column.dtype, "double")
    if column.dtype == "category" or (column.fill is not None and declared in ("long", "boolean")):
        return ColSpec(AnyType(), column.name)
    return ColSpec(declared, column.name)


def model_signature(model: Bundle, example):
    """(signature, input example) of the logged model, from the bundle's description (the
    network is not run): feature rows (N, D) float32, or a table model's named columns with
    the types they were stored as; class probabilities out, or the class's name and each
    class's probability for classes with names."""
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    meta = model.meta
    if meta.kind == "generator":
        signature = ModelSignature(
            inputs=Schema([ColSpec("long", "label")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, meta.num_features))]),
            params=ParamSchema([ParamSpec("seed", "long", 0)]),
        )
        example = pd.DataFrame({"label": np.arange(meta.num_classes, dtype=np.int64)})
        return signature, example
    if meta.table is not None:
        inputs = Schema([_column_spec(c) for c in meta.table.columns])
    else:
        example = np.asarray(example, dtype=np.float32)
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, meta.num_features))])
    outputs: Schema
    if meta.class_names:  # the pyfunc's DataFrame: the class's name, then each probability
        columns: list[ColSpec | TensorSpec] = [ColSpec("string", "prediction")]
        columns += [ColSpec("float", f"probability_{name}") for name in meta.class_names]
        outputs = Schema(columns)
    else:
        outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, meta.num_classes))])
    return ModelSignature(inputs=inputs, outputs=outputs), example
