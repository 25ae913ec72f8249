"""A trained conditional generator as an MLflow pyfunc model.

Input: a DataFrame with an integer ``label`` column (or a 1-d array of labels); output:
float32 images as feature rows (N, C*H*W) in [0, 1]. ``params={"seed": S}`` fixes the noise,
so the same labels and seed give the same images.

Like gluon_pyfunc.py, this file is logged as the model's code and must import nothing from
this project, only mlflow, mxnet, numpy.
"""

from __future__ import annotations

import json
import warnings

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd


def device(mx):
    """The first GPU this process sees (a Ray actor given a GPU, a GPU server), else the
    CPU. A GPU build of MXNet is needed for the former; the CPU wheel sees none."""
    try:
        return mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
    except mx.base.MXNetError:  # a GPU build on a machine whose driver does not answer
        return mx.cpu()


class GluonGenerator(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    def load_context(self, context) -> None:
        import mxnet as mx

        with open(context.artifacts["meta"]) as f:
            meta = json.load(f)
        self._latent = int(meta["latent_dim"])
        self._classes = int(meta["num_classes"])
        self._ctx = device(mx)
        with warnings.catch_warnings():  # "Cannot decide type": the inputs are float32
            warnings.simplefilter("ignore", UserWarning)
            self._net = mx.gluon.SymbolBlock.imports(
                context.artifacts["symbol"],
                meta.get("inputs", ["data0", "data1"]),
                context.artifacts["params"],
                ctx=self._ctx,
            )

    # The hint is what the signature's label column hands us; MLflow infers no schema from
    # it (the logged signature is the schema) and asks for no other.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        import mxnet as mx

        if hasattr(model_input, "columns"):  # a pandas DataFrame
            model_input = model_input["label"].to_numpy()
        labels = np.asarray(model_input).astype(np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= self._classes):
            raise ValueError(f"labels must be in [0, {self._classes}), got {labels.tolist()}")
        seed = (params or {}).get("seed")
        rng = np.random.default_rng(None if seed is None else int(seed))
        z = rng.standard_normal((len(labels), self._latent)).astype(np.float32)
        onehot = mx.nd.one_hot(mx.nd.array(labels, ctx=self._ctx), self._classes)
        return self._net(mx.nd.array(z, ctx=self._ctx), onehot).asnumpy()


mlflow.models.set_model(GluonGenerator())
