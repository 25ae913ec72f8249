"""Architecture settings of each model family, as frozen dataclasses.

Kept apart from the Gluon code so that reading and validating a job's configuration does not
import MXNet. Each field's ``help`` metadata is what ``python -m jobs.train --help`` prints.
The data-dependent sizes (input shape, number of classes) are not here: they come from the
data set's schema when the model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _opt(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        # Raised as ValueError: pipeline.config turns it into a ConfigError naming the section.
        raise ValueError(f"{key}: {problem}")


@dataclass(frozen=True)
class CNNConfig:
    """A residual CNN with batch norm: stem conv, stages of residual blocks, global pooling."""

    channels: int = _opt(32, "channels of the first stage; each later stage doubles them")
    stages: int = _opt(2, "number of stages; every stage after the first halves the resolution")
    blocks_per_stage: int = _opt(2, "residual blocks (two 3x3 convs + batch norm) per stage")
    dropout: float = _opt(0.0, "dropout before the classifier, 0 to disable")

    def __post_init__(self) -> None:
        _require(self.channels >= 1, "channels", f"must be >= 1, got {self.channels}")
        _require(self.stages >= 1, "stages", f"must be >= 1, got {self.stages}")
        _require(
            self.blocks_per_stage >= 1,
            "blocks_per_stage",
            f"must be >= 1, got {self.blocks_per_stage}",
        )
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


#: model.name -> the dataclass holding that family's settings.
MODEL_CONFIGS: dict[str, type] = {
    "cnn": CNNConfig,
}
