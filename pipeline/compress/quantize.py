"""Post-training INT8 quantization of a classifier (MXNet's oneDNN backend, on the CPU).

``mxnet.contrib.quantization.quantize_net_v2`` fuses convolution + batch norm + activation,
replaces the fused and dense operators by INT8 ones, and, with calibration, fixes each
layer's output range from the float32 model's outputs on real rows ("naive": their min and
max), so that no range is computed at inference time. Weights are stored as int8.

Layers to keep in float32 are given by name pattern (``exclude``): quantizing the first
layer (raw pixels) or the last (the logits) costs the most accuracy in small networks, and
the default keeps neither out: the accuracy check decides.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from pipeline.model import bundle
from pipeline.model.bundle import Bundle

#: Calibration rows used unless told otherwise (MXNet's examples use a few hundred to a few
#: thousand; the ranges of a small network settle well before that).
CALIBRATION_ROWS = 1024


def quantize_classifier(net, calibration: np.ndarray, exclude: tuple[str, ...] = ()):
    """An INT8 ``SymbolBlock`` of the float32 classifier ``net`` (input ``data``: feature
    rows), calibrated on ``calibration`` rows; layers whose names contain a string of
    ``exclude`` stay float32."""
    import mxnet as mx
    from mxnet.contrib.quantization import quantize_net_v2

    batch = min(64, len(calibration))
    calib = mx.io.NDArrayIter(
        data=mx.nd.array(calibration, dtype="float32"), batch_size=batch, data_name="data"
    )
    with warnings.catch_warnings(), _native_log_held():
        warnings.simplefilter("ignore")
        quiet = logging.getLogger("mxtrain.quantize")
        quiet.setLevel(logging.WARNING)
        return quantize_net_v2(
            net,
            quantized_dtype="auto",
            quantize_mode="full",
            exclude_layers_match=list(exclude) or None,
            calib_data=calib,
            calib_mode="naive",
            num_calib_examples=len(calibration),
            ctx=mx.cpu(),
            logger=quiet,
        )


@contextlib.contextmanager
def _native_log_held():
    """MXNet's C++ passes log a line per layer to file descriptor 2 ("Set calibration result
    to ..."); hold it back, and show it only if the quantization fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace")[-4000:])


def int8_storage(model: Bundle) -> tuple[dict[str, np.ndarray], list[str]]:
    """(weights, names) to store an INT8 model small, losing nothing.

    oneDNN's INT8 convolutions take their weights in float32 and, when first run, fold the
    fused batch norm into them (``w * gamma / sqrt(var + eps)`` per output channel) and
    quantize the result with one scale per tensor (127 / max |w|). Storing the raw weights
    as int8 would round them on a grid other than the one oneDNN uses. Instead the batch norm
    is folded here the same way, in float32, and left as an identity (gamma = sqrt(var +
    eps), the mean scaled alike; the graph computes the same function), so the stored int8
    values are the integers oneDNN quantizes the weights to. The outputs still move by a few
    parts per thousand (the per-tensor scales and the requantization of activations depend
    on the last bits of the weights): the accuracy of the stored model is what is measured
    and reported. ``names`` are the weights to store as int8 (:func:`bundle.pack_int8`);
    dense layers' weights are stored quantized by MXNet already.
    """
    import json

    nodes = json.loads(Path(model.path(bundle.SYMBOL_FILE)).read_text())["nodes"]
    arrays = model.arrays()

    def key(name: str) -> str | None:
        return next((k for k in (f"arg:{name}", f"aux:{name}") if k in arrays), None)

    names: list[str] = []
    for node in nodes:
        if str((node.get("attrs") or {}).get("quantized", "")).lower() != "true":
            continue
        inputs = [nodes[i]["name"] for i, *_ in node["inputs"] if nodes[i]["op"] == "null"]
        weights = [
            n for n in inputs
            if (k := key(n)) and arrays[k].dtype == np.float32 and arrays[k].ndim >= 2
        ]  # fmt: skip
        if len(weights) != 1 or weights[0] in names:
            continue
        weight = f"arg:{weights[0]}"
        norm = _fused_batch_norm(node)
        if norm is not None:
            if norm.get("fix_gamma", "False") == "True":
                continue  # gamma is taken as 1 at run time: nothing to fold it into
            named = [next((n for n in inputs if n.endswith(s)), "") for s in _BN_INPUTS]
            found = [key(n) for n in named]
            if None in found:
                continue
            gamma, mean, var = (str(k) for k in found)
            std = np.sqrt(arrays[var] + np.float32(norm.get("eps", 1e-3)))
            factor = arrays[gamma] / std
            shape = (-1,) + (1,) * (arrays[weight].ndim - 1)
            arrays[weight] = arrays[weight] * factor.reshape(shape)
            arrays[mean] = arrays[mean] * factor
            arrays[gamma] = std
        names.append(weights[0])
    return arrays, names


_BN_INPUTS = ("_gamma", "_running_mean", "_running_var")


def _fused_batch_norm(node: dict) -> dict | None:
    """The attributes of the batch norm fused into a oneDNN subgraph node, if any."""
    for graph in node.get("subgraphs") or []:
        for inner in graph.get("nodes", []):
            if inner.get("op") == "BatchNorm":
                return inner.get("attrs") or {}
    return None
