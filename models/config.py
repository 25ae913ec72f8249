"""Architecture settings of each model family, as frozen dataclasses.

Kept apart from the Gluon code so that reading and validating a job's configuration does not
import MXNet. Each field's metadata holds its ``help`` (what ``python -m jobs.train --help``
prints) and its bounds (``ge``/``gt``/``lt``, checked by ``pipeline.config`` when a job's
configuration is built, and printed by ``--help``). ``__post_init__`` keeps only the rules that
relate two fields. The data-dependent sizes (input shape, number of classes) are not here: they
come from the data set's schema when the model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _opt(default, help: str, **meta):
    """A field with its help text; ``meta`` adds choices and bounds (ge, gt, le, lt)."""
    return field(default=default, metadata={"help": help, **meta})


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        # Raised as ValueError: pipeline.config turns it into a ConfigError naming the section.
        raise ValueError(f"{key}: {problem}")


@dataclass(frozen=True)
class CNNConfig:
    """A residual CNN with batch norm: stem conv, stages of residual blocks, global pooling."""

    channels: int = _opt(32, "channels of the first stage; each later stage doubles them", ge=1)
    stages: int = _opt(
        2, "number of stages; every stage after the first halves the resolution", ge=1
    )
    blocks_per_stage: int = _opt(2, "residual blocks (two 3x3 convs + batch norm) per stage", ge=1)
    dropout: float = _opt(0.0, "dropout before the classifier, 0 to disable", ge=0, lt=1)
    stem_stride: int = _opt(
        1,
        "stride of the first conv: 2 quarters every later layer's cost (28x28 images become"
        " 14x14 maps at once)",
        ge=1,
        le=4,
    )


@dataclass(frozen=True)
class MLPConfig:
    """A fully connected net: depth x (Dense, batch norm, ReLU, dropout), then a classifier."""

    width: int = _opt(256, "units per hidden layer", ge=1)
    depth: int = _opt(2, "hidden layers", ge=1)
    dropout: float = _opt(0.2, "dropout after each hidden layer, 0 to disable", ge=0, lt=1)
    batch_norm: bool = _opt(True, "batch norm after each hidden Dense")


@dataclass(frozen=True)
class RNNConfig:
    """A recurrent net over the rows of an image (or any [T, C] feature shape)."""

    cell: str = _opt("lstm", "recurrent cell", choices=("lstm", "gru"))
    hidden: int = _opt(128, "units per recurrent layer", ge=1)
    layers: int = _opt(1, "stacked recurrent layers", ge=1)
    bidirectional: bool = _opt(False, "read the sequence in both directions")
    dropout: float = _opt(0.1, "dropout before the classifier (and between layers)", ge=0, lt=1)


@dataclass(frozen=True)
class TransformerConfig:
    """A Transformer encoder over the rows of an image (each row is a token)."""

    d_model: int = _opt(64, "token embedding width", ge=1)
    heads: int = _opt(4, "attention heads; must divide d_model", ge=1)
    layers: int = _opt(2, "encoder layers (self-attention + feed-forward, pre-norm)", ge=1)
    ff_width: int = _opt(128, "hidden units of each feed-forward block", ge=1)
    dropout: float = _opt(0.1, "dropout in attention and feed-forward blocks", ge=0, lt=1)

    def __post_init__(self) -> None:
        _require(
            self.heads < 1 or self.d_model % self.heads == 0,
            "heads",
            f"must divide d_model={self.d_model}, got {self.heads}",
        )


@dataclass(frozen=True)
class GANConfig:
    """A conditional DCGAN: generator (noise + label -> image), discriminator (image + label ->
    real/fake), and a small CNN judge trained on real data that scores generated digits."""

    latent_dim: int = _opt(32, "size of the generator's noise vector", ge=1)
    channels: int = _opt(64, "feature maps of the widest generator/discriminator layer", ge=4)
    judge_channels: int = _opt(16, "channels of the judge CNN (scores generated_accuracy)", ge=1)


#: model.name -> the dataclass holding that family's settings.
MODEL_CONFIGS: dict[str, type] = {
    "cnn": CNNConfig,
    "mlp": MLPConfig,
    "rnn": RNNConfig,
    "transformer": TransformerConfig,
    "gan": GANConfig,
}
