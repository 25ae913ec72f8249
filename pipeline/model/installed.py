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

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipeline.model.bundle import Bundle, BundleError

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
    import mxnet as mx
    import numpy as np

    signature, example = model_signature(plain, feature_example)
    target = Path(directory)
    mlflow.pyfunc.save_model(
        path=str(target),
        python_model=str(plain.pyfunc_code),
        artifacts=plain.artifacts(),
        signature=signature,
        input_example=example,
        pip_requirements=[f"mxnet=={mx.__version__}", f"numpy=={np.__version__}"],
    )
    return target


def model_signature(model: Bundle, feature_example):
    """(signature, input example) of the logged model, computed by running the export."""
    import mxnet as mx
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature, infer_signature
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
    example = np.asarray(feature_example, dtype=np.float32)
    probs = mx.nd.softmax(model.load()(mx.nd.array(example))).asnumpy()
    signature = infer_signature(example, probs)
    if meta.class_names:  # the pyfunc's DataFrame: the class's name, then each probability
        columns: list[ColSpec | TensorSpec] = [ColSpec("string", "prediction")]
        columns += [ColSpec("float", f"probability_{name}") for name in meta.class_names]
        signature = ModelSignature(inputs=signature.inputs, outputs=Schema(columns))
    return signature, example
