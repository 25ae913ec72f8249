"""An exported Gluon network as an MLflow pyfunc model.

MLflow dropped its Gluon flavor in 2.20, so a trained network is logged as a pyfunc whose
artifacts are MXNet's own export files (``-symbol.json`` graph + ``.params`` weights, no pickle)
and ``model.json`` with the input names, the input width and the class count (the bundle
format of ``pipeline/tracking/bundle.py``).

This file is logged as the model's code ("models from code"): MLflow stores the file itself,
not a pickle of an object, and runs it on load. It must import nothing from this project,
only mlflow, mxnet and numpy.
"""

from __future__ import annotations

import json

import mlflow.models
import mlflow.pyfunc
import numpy as np


class GluonClassifier(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """Feature rows (N, D) float32 in, class probabilities (N, C) float32 out."""

    def load_context(self, context) -> None:
        import mxnet as mx

        with open(context.artifacts["meta"]) as f:
            meta = json.load(f)
        self._num_features = int(meta["num_features"])
        self._ctx = mx.cpu()
        self._net = mx.gluon.SymbolBlock.imports(
            context.artifacts["symbol"],
            meta.get("inputs", ["data"]),
            context.artifacts["params"],
            ctx=self._ctx,
        )

    def predict(self, context, model_input, params=None):
        import mxnet as mx

        if hasattr(model_input, "to_numpy"):  # a pandas DataFrame
            model_input = model_input.to_numpy()
        x = np.asarray(model_input, dtype=np.float32).reshape(-1, self._num_features)
        out = []
        for start in range(0, len(x), 1024):
            logits = self._net(mx.nd.array(x[start : start + 1024], ctx=self._ctx))
            out.append(mx.nd.softmax(logits).asnumpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


mlflow.models.set_model(GluonClassifier())
