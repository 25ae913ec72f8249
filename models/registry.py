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
    "mlp": "models.mlp:MLP",
    "rnn": "models.rnn:RNNClassifier",
    "transformer": "models.transformer:TransformerClassifier",
    "gan": "models.gan:Generator",
}

#: Families trained against an adversary rather than on labels (see pipeline/train/tasks.py).
ADVERSARIAL = {"gan"}


def build_model(name: str, cfg: Any, feature_shape: tuple[int, ...], num_classes: int):
    """A new, uninitialised HybridBlock of family ``name`` configured by ``cfg``."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(_BUILDERS)}")
    if not isinstance(cfg, MODEL_CONFIGS[name]):
        raise TypeError(f"{name} needs a {MODEL_CONFIGS[name].__name__}, got {type(cfg)}")
    module, cls = _BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, tuple(feature_shape), num_classes)


def build_gan(cfg: Any, feature_shape: tuple[int, ...], num_classes: int):
    """(generator, discriminator, judge) of a conditional GAN; the judge is a small CNN
    trained on real data that scores how recognisable the generated samples are."""
    from models.cnn import ResidualCNN
    from models.config import CNNConfig
    from models.gan import Discriminator, Generator

    judge = ResidualCNN(
        CNNConfig(channels=cfg.judge_channels, stages=2, blocks_per_stage=1),
        tuple(feature_shape),
        num_classes,
    )
    shape = tuple(feature_shape)
    return Generator(cfg, shape, num_classes), Discriminator(cfg, shape, num_classes), judge


def count_params(block) -> int:
    """Number of scalar parameters (initialised block; deferred shapes must be resolved)."""
    return int(sum(p.data().size for p in block.collect_params().values()))
