"""Global magnitude pruning of a model bundle's weights (numpy only; no MXNet, no MLflow).

Which weights: those of convolutions and dense layers, i.e. every weight with two or more
dimensions (conv kernels are 4-D, dense and recurrent matrices 2-D). Biases, batch-norm scales
and running statistics stay whole: they are few, and zeroing them changes what a layer computes
rather than thinning it.

Global, not per layer: one magnitude threshold over all prunable weights together, so layers
with many redundant weights give up more than small, dense ones (Han et al. 2015; the
threshold of ``torch.nn.utils.prune.global_unstructured``). The first and last layers are
usually the smallest and end up pruned least.
"""

from __future__ import annotations

import numpy as np


def is_prunable(name: str, ndim: int) -> bool:
    """A conv or dense weight (MXNet names them ``..._weight``; gammas are 1-D)."""
    return name.endswith("weight") and ndim >= 2


def global_magnitude_masks(
    weights: dict[str, np.ndarray], sparsity: float
) -> dict[str, np.ndarray]:
    """For each prunable weight, a boolean mask of the entries kept: the ``sparsity`` share
    of all prunable entries with the smallest magnitudes is dropped (exactly that many, ties
    broken by position). Weights that are not prunable get no mask."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    names = [n for n, w in weights.items() if is_prunable(n, w.ndim)]
    if not names:
        return {}
    flat = np.concatenate([np.abs(weights[n]).ravel() for n in names])
    drop = round(sparsity * flat.size)
    keep = np.ones(flat.size, dtype=bool)
    if drop:
        keep[np.argpartition(flat, drop - 1)[:drop]] = False
    masks, start = {}, 0
    for n in names:
        size = weights[n].size
        masks[n] = keep[start : start + size].reshape(weights[n].shape)
        start += size
    return masks


def apply_masks(weights: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict:
    """``weights`` with every masked entry set to zero (a new dict; arrays copied)."""
    return {
        n: np.where(masks[n], w, 0).astype(w.dtype) if n in masks else w.copy()
        for n, w in weights.items()
    }


def sparsity_by_layer(weights: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of zeros in each prunable weight, and ``"all"`` over all of them."""
    report: dict[str, float] = {}
    zeros = total = 0
    for n, w in weights.items():
        if is_prunable(n, w.ndim):
            z = int(np.count_nonzero(w == 0))
            report[n] = z / w.size
            zeros, total = zeros + z, total + w.size
    report["all"] = zeros / total if total else 0.0
    return report


def nonzero_params(weights: dict[str, np.ndarray]) -> int:
    """Entries that are not zero, over every array (the count a sparse format would store)."""
    return int(sum(np.count_nonzero(w) for w in weights.values()))
