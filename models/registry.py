"""model.name -> Gluon block. The only door through which the pipeline builds a model.

Families are imported lazily so that importing the registry (for config validation) does not
import MXNet.
"""

from __future__ import annotations

import importlib
from typing import Any

from models.config import MODEL_CONFIGS

#: model.name -> "module:class"; the class takes (cfg, feature_shape, num_classes).
_BUILDERS: dict[str, str] = {
    "cnn": "models.cnn:ResidualCNN",
}


def build_model(name: str, cfg: Any, feature_shape: tuple[int, ...], num_classes: int):
    """A new, uninitialised HybridBlock of family ``name`` configured by ``cfg``."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(_BUILDERS)}")
    if not isinstance(cfg, MODEL_CONFIGS[name]):
        raise TypeError(f"{name} needs a {MODEL_CONFIGS[name].__name__}, got {type(cfg)}")
    module, cls = _BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, tuple(feature_shape), num_classes)


def count_params(block) -> int:
    """Number of scalar parameters (initialised block; deferred shapes must be resolved)."""
    return int(sum(p.data().size for p in block.collect_params().values()))
