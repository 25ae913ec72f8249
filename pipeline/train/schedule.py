"""Learning-rate schedule: linear warm-up, then constant or cosine decay, per step."""

from __future__ import annotations

import math

from pipeline.config import OptimConfig


def scaled_lr(optim: OptimConfig, world_size: int) -> float:
    """The peak learning rate: linear scaling keeps the per-sample step size as the global
    batch grows with the number of workers (Goyal et al., 2017)."""
    factor = world_size if optim.lr_scaling == "linear" else 1
    return optim.learning_rate * factor


def lr_at(optim: OptimConfig, world_size: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate for global ``step`` (0-based) of a run of ``optim.epochs`` epochs."""
    peak = scaled_lr(optim, world_size)
    warmup = optim.warmup_epochs * steps_per_epoch
    total = optim.epochs * steps_per_epoch
    if step < warmup:
        return peak * (step + 1) / warmup
    if optim.lr_schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
