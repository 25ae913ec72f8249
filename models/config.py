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


@dataclass(frozen=True)
class MLPConfig:
    """A fully connected net: depth x (Dense, batch norm, ReLU, dropout), then a classifier."""

    width: int = _opt(256, "units per hidden layer")
    depth: int = _opt(2, "hidden layers")
    dropout: float = _opt(0.2, "dropout after each hidden layer, 0 to disable")
    batch_norm: bool = _opt(True, "batch norm after each hidden Dense")

    def __post_init__(self) -> None:
        _require(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        _require(self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class RNNConfig:
    """A recurrent net over the rows of an image (or any [T, C] feature shape)."""

    cell: str = _opt("lstm", "recurrent cell", choices=("lstm", "gru"))
    hidden: int = _opt(128, "units per recurrent layer")
    layers: int = _opt(1, "stacked recurrent layers")
    bidirectional: bool = _opt(False, "read the sequence in both directions")
    dropout: float = _opt(0.1, "dropout before the classifier (and between layers)")

    def __post_init__(self) -> None:
        _require(self.cell in ("lstm", "gru"), "cell", f"must be lstm or gru, got {self.cell!r}")
        _require(self.hidden >= 1, "hidden", f"must be >= 1, got {self.hidden}")
        _require(self.layers >= 1, "layers", f"must be >= 1, got {self.layers}")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TransformerConfig:
    """A Transformer encoder over the rows of an image (each row is a token)."""

    d_model: int = _opt(64, "token embedding width")
    heads: int = _opt(4, "attention heads; must divide d_model")
    layers: int = _opt(2, "encoder layers (self-attention + feed-forward, pre-norm)")
    ff_width: int = _opt(128, "hidden units of each feed-forward block")
    dropout: float = _opt(0.1, "dropout in attention and feed-forward blocks")

    def __post_init__(self) -> None:
        _require(self.d_model >= 1, "d_model", f"must be >= 1, got {self.d_model}")
        _require(
            self.heads >= 1 and self.d_model % self.heads == 0,
            "heads",
            f"must divide d_model={self.d_model}, got {self.heads}",
        )
        _require(self.layers >= 1, "layers", f"must be >= 1, got {self.layers}")
        _require(self.ff_width >= 1, "ff_width", f"must be >= 1, got {self.ff_width}")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class GANConfig:
    """A conditional DCGAN: generator (noise + label -> image), discriminator (image + label ->
    real/fake), and a small CNN judge trained on real data that scores generated digits."""

    latent_dim: int = _opt(32, "size of the generator's noise vector")
    channels: int = _opt(64, "feature maps of the widest generator/discriminator layer")
    judge_channels: int = _opt(16, "channels of the judge CNN (scores generated_accuracy)")

    def __post_init__(self) -> None:
        _require(self.latent_dim >= 1, "latent_dim", f"must be >= 1, got {self.latent_dim}")
        _require(self.channels >= 4, "channels", f"must be >= 4, got {self.channels}")
        _require(
            self.judge_channels >= 1, "judge_channels", f"must be >= 1, got {self.judge_channels}"
        )


#: model.name -> the dataclass holding that family's settings.
MODEL_CONFIGS: dict[str, type] = {
    "cnn": CNNConfig,
    "mlp": MLPConfig,
    "rnn": RNNConfig,
    "transformer": TransformerConfig,
    "gan": GANConfig,
}
