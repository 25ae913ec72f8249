"""``checkpoint.keep_best``: which epoch scored best so far, and its parameters.

Ray Train keeps the N checkpoints whose reported :data:`SCORE` is highest, plus always the
newest (what a restarted group resumes from). The model the job tests, logs and registers
must then be the best epoch's, and its test metrics that model's; so every rank keeps the best
epoch's parameters in host memory (one copy of the model), and at the end swaps them in
before the test pass and the export. Every checkpoint written after the best epoch carries
them (``best.nd``), so a group resumed from a later checkpoint still knows the best so far.

Each rank keeps its own copy: the weights are the same on every rank (the allreduce), the
batch-norm running statistics each rank's own, as they are for the last epoch's model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pipeline.errors import ConfigError
from pipeline.train import checkpoint

#: What Ray Train ranks checkpoints by: the epoch's metric, signed so that higher is better.
#: A checkpoint within an epoch has no such metric and scores lowest: it is kept only while
#: it is the newest.
SCORE = "checkpoint_score"


class BestEpoch:
    def __init__(self, metric: str, mode: str):
        self.metric = metric
        self.mode = mode
        #: The best epoch (0-based) and its metric; None before the first epoch ends.
        self.epoch: int | None = None
        self.value: float | None = None
        self._params: dict | None = None
        #: True once the networks hold the best epoch's parameters (the end of training).
        self._swapped = False

    @classmethod
    def from_config(cls, cfg) -> BestEpoch | None:
        """The tracker for ``cfg.checkpoint.keep_best``; None when it is off."""
        keep = cfg.checkpoint
        if not keep.keep_best:
            return None
        return cls(keep.best_metric_name(cfg.tracking.gate_metric), keep.best_mode)

    def score(self, value: float) -> float:
        """``value`` as Ray Train's score: higher is better whatever the mode; NaN lowest."""
        if math.isnan(value):
            return -math.inf
        return value if self.mode == "max" else -value

    def observe(self, epoch: int, metrics: Mapping[str, float], networks: dict) -> float:
        """Note the end of ``epoch`` (its metrics, the networks after it); its score."""
        if self.metric not in metrics:
            shown = ", ".join(sorted(k for k in metrics if "/" not in k and not k.startswith("_")))
            raise ConfigError(
                f"checkpoint.keep_best ranks epochs by {self.metric!r}, which this job does not"
                f" log per epoch (it logs {shown}); set checkpoint.best_metric to one of them"
            )
        value = float(metrics[self.metric])
        if self.value is None or self.score(value) > self.score(self.value):
            self.epoch, self.value = epoch, value
            self._params = checkpoint.snapshot(networks)
        return self.score(value)

    def use_best(self, epoch: int, networks: dict) -> bool:
        """At the end of training (``epoch``, the last): put the best epoch's parameters into
        the networks when an earlier epoch scored best; True if it did."""
        if self.epoch is None or self.epoch == epoch or self._params is None:
            return False
        checkpoint.load_snapshot(networks, self._params)
        self._swapped = True
        return True

    def for_checkpoint(self, ends_epoch: int | None) -> dict | None:
        """The parameters a checkpoint must carry beside the networks' own (best.nd): None
        when the checkpoint is of the best epoch's end (``ends_epoch``) or the networks hold
        the best already."""
        if self.epoch is None or self._swapped or self.epoch == ends_epoch:
            return None
        return self._params

    def state(self) -> dict[str, Any]:
        """What state.json keeps of it."""
        return {"metric": self.metric, "mode": self.mode, "epoch": self.epoch, "value": self.value}

    def resume(self, state: Mapping[str, Any], networks: dict) -> None:
        """Take up a restored checkpoint's record (its ``best`` and ``best_params``); the
        networks hold that checkpoint's parameters, which are the best when it carries none.
        A record of another metric or mode (the job's settings changed) is not taken up."""
        best = state.get("best") or {}
        if best.get("epoch") is None or (best.get("metric"), best.get("mode")) != (
            self.metric,
            self.mode,
        ):
            return
        self.epoch, self.value = int(best["epoch"]), float(best["value"])
        self._params = state.get("best_params") or checkpoint.snapshot(networks)
