"""An exported Gluon network as an MLflow pyfunc model.

MLflow dropped its Gluon flavor in 2.20, so a trained network is logged as a pyfunc whose
artifacts are MXNet's own export files (``-symbol.json`` graph + ``.params`` weights, no pickle)
and ``model.json`` with the input names, the input width, the class count and, for data
whose labels were strings, the class names (the bundle format of
``pipeline/model/bundle.py``; a pruned model's weights come gzip-compressed, an INT8
model's convolution weights as int8 with their scale).

A model trained on the user's own table columns (``model.json``'s ``table``) takes the table
as pandas reads it: a DataFrame with those columns named (others are ignored), encoded here
as training encoded them (``table_encoding.py``, logged beside this file).

This file is logged as the model's code ("models from code"): MLflow stores the file itself,
not a pickle of an object, and runs it on load. It must import nothing from this project,
only mlflow, mxnet, numpy, pandas and the encoding logged with it.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import warnings

import mlflow.models
import mlflow.pyfunc
import numpy as np

try:  # logged beside this file (MLflow's code_paths): a model loaded by MLflow anywhere
    import mxtrain_table_encoding as table_encoding
except ImportError:  # this installation's own loader (pipeline.model.installed)
    from pipeline.data import table_encoding


def device(mx):
    """The first GPU this process sees (a Ray actor given a GPU, a GPU server), else the
    CPU. A GPU build of MXNet is needed for the former; the CPU wheel sees none."""
    try:
        return mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
    except mx.base.MXNetError:  # a GPU build on a machine whose driver does not answer
        return mx.cpu()


class GluonClassifier(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """Feature rows (N, D) float32 in; class probabilities (N, C) float32 out, or, when the
    classes have names, a DataFrame: ``prediction`` (the most likely class's name) and one
    ``probability_<name>`` column per class."""

    def load_context(self, context) -> None:
        import mxnet as mx

        with open(context.artifacts["meta"]) as f:
            meta = json.load(f)
        self._num_features = int(meta["num_features"])
        self._class_names = [str(n) for n in meta.get("class_names", ())]
        raw_table = meta.get("table")
        self._table = table_encoding.TableEncoding.from_dict(raw_table) if raw_table else None
        self._ctx = device(mx)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # "Cannot decide type for the following arguments": the input is float32.
            warnings.simplefilter("ignore", UserWarning)
            params = context.artifacts["params"]
            if params.endswith(".gz"):  # a pruned model's weights; MXNet reads a plain file
                plain = os.path.join(tmp, "model-0000.params")
                with gzip.open(params, "rb") as src, open(plain, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                params = plain
            packed = meta.get("int8_weights", [])
            if packed:  # an INT8 model's convolution weights, stored as int8 + a scale
                arrays = mx.nd.load(params)
                for name in packed:
                    q = arrays[f"arg:{name}"].astype("float32")
                    scale = arrays.pop(f"arg:{name}__int8_scale")
                    shape = (-1,) + (1,) * (q.ndim - 1)
                    arrays[f"arg:{name}"] = mx.nd.broadcast_mul(q, scale.reshape(shape))
                params = os.path.join(tmp, "model-float32.params")
                mx.nd.save(params, arrays)
            self._net = mx.gluon.SymbolBlock.imports(
                context.artifacts["symbol"], meta.get("inputs", ["data"]), params, ctx=self._ctx
            )

    # The hint is what the signature's tensor spec hands us; MLflow infers no schema from it
    # (the logged signature is the schema) and asks for no other.
    def predict(self, context, model_input: np.ndarray, params=None):
        import mxnet as mx

        if isinstance(model_input, dict):
            import pandas as pd

            model_input = pd.DataFrame(model_input)
        if self._table is not None and hasattr(model_input, "columns"):
            x = self._table.encode(frame_columns(model_input, self._table), "model input")
        else:
            if hasattr(model_input, "to_numpy"):  # a pandas DataFrame of feature values
                model_input = model_input.to_numpy()
            x = np.asarray(model_input, dtype=np.float32).reshape(-1, self._num_features)
        out = []
        for start in range(0, len(x), 1024):
            logits = self._net(mx.nd.array(x[start : start + 1024], ctx=self._ctx))
            out.append(mx.nd.softmax(logits).asnumpy())
        probs = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
        if not self._class_names:
            return probs
        import pandas as pd

        names = np.asarray(self._class_names, dtype=object)
        frame = pd.DataFrame(
            probs.reshape(len(x), len(names)),
            columns=[f"probability_{n}" for n in self._class_names],
        )
        frame.insert(0, "prediction", names[probs.argmax(axis=1)] if len(x) else names[:0])
        return frame


def frame_columns(frame, encoding) -> dict:
    """A DataFrame's feature columns as the encoding takes them: name -> (values, missing);
    a column of the wrong kind (text where numbers were trained) is one clear error."""
    out = {}
    for column in encoding.columns:
        if column.name not in frame.columns:
            continue  # the encoding names every missing column at once
        series = frame[column.name]
        missing = series.isna().to_numpy()
        if column.kind == table_encoding.NUMBER:
            try:
                values = series.to_numpy(dtype="float64", na_value=np.nan)
            except (TypeError, ValueError):
                raise table_encoding.EncodingError(
                    f"model input: column {column.name!r} holds {series.dtype} values; the"
                    f" model was trained on numbers ({column.dtype}) there"
                ) from None
        else:
            values = series.astype(object).to_numpy()
        out[column.name] = (values, missing)
    return out


mlflow.models.set_model(GluonClassifier())
