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

import numpy as np

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
