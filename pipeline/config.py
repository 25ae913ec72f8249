"""The job's configuration: one typed, validated, frozen object from the CLI to the workers.

A job is a recipe file (``jobs/recipes/NAME.toml``) plus ``--set section.key=value`` overrides.
Every field carries a ``help`` text (printed by ``python -m jobs.train --help``); every value is
checked for its type and its range when the object is built, and a bad one raises
:class:`~pipeline.errors.ConfigError` with a one-line message that names the key.

This module must stay cheap to import (no MXNet, Ray or MLflow): config errors are reported
before any heavy machinery starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.config import MODEL_CONFIGS
from pipeline.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO_ROOT / "jobs" / "recipes"


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    meta: dict[str, Any] = {"help": help}
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


@dataclass(frozen=True)
class DataConfig:
    """Where the training data lives and how it is fed to the workers."""

    uri: str = _opt(
        "data/digits",
        "prepared data set: a folder, file:// or s3://bucket/prefix holding train/, val/, test/",
    )
    batch_size: int = _opt(64, "samples per step on each worker; the global batch is x workers")
    eval_batch_size: int = _opt(512, "samples per batch when computing validation/test metrics")
    shuffle_buffer: int = _opt(
        2048,
        "rows each worker shuffles together (the row groups' order is shuffled too), drawn"
        " anew every epoch from (seed, epoch); 0 = no shuffle",
    )
    cache: str = _opt(
        "auto",
        "memory: each worker reads the Parquet files once (checking their SHA-256) and slices"
        " its shard from memory every epoch; stream: each worker reads its row groups from"
        " storage every epoch (for data sets larger than memory);"
        " auto: memory when the files total at most cache_max_mb",
        choices=("auto", "memory", "stream"),
    )
    cache_max_mb: int = _opt(1024, "largest data set (stored Parquet bytes) that auto caches")

    def __post_init__(self) -> None:
        _require(bool(self.uri.strip()), "data.uri", "must not be empty")
        _require(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(
            self.eval_batch_size >= 1,
            "data.eval_batch_size",
            f"must be >= 1, got {self.eval_batch_size}",
        )
        _require(
            self.cache_max_mb >= 0, "data.cache_max_mb", f"must be >= 0, got {self.cache_max_mb}"
        )
        _require(
            self.shuffle_buffer >= 0,
            "data.shuffle_buffer",
            f"must be >= 0, got {self.shuffle_buffer}",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The model family (``model.name``) and its architecture settings (the other keys)."""

    name: str = _opt("cnn", "model family", choices=tuple(MODEL_CONFIGS))
    arch: Any = None

    def __post_init__(self) -> None:
        _require(
            self.name in MODEL_CONFIGS,
            "model.name",
            f"unknown model family {self.name!r}; choose one of {', '.join(MODEL_CONFIGS)}",
        )
        if self.arch is None:
            object.__setattr__(self, "arch", MODEL_CONFIGS[self.name]())
        _require(
            isinstance(self.arch, MODEL_CONFIGS[self.name]),
            "model",
            f"settings of type {type(self.arch).__name__} do not belong to family {self.name!r}",
        )


#: optim.precision's modes (see pipeline/train/precision.py).
PRECISIONS = ("float32", "float16", "amp")


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer, its schedule and the length of training."""

    optimizer: str = _opt("sgd", "update rule", choices=("sgd", "nag", "adam"))
    learning_rate: float = _opt(0.05, "base learning rate for one worker (see lr_scaling)")
    lr_scaling: str = _opt(
        "linear",
        "linear: multiply the learning rate by the number of workers (the global batch grows"
        " with them); none: keep it",
        choices=("linear", "none"),
    )
    lr_schedule: str = _opt(
        "cosine", "learning rate over the epochs", choices=("cosine", "constant")
    )
    warmup_epochs: int = _opt(1, "epochs of linear warm-up from 0 to the (scaled) learning rate")
    momentum: float = _opt(0.9, "momentum (sgd, nag) or beta1 (adam)")
    weight_decay: float = _opt(1e-4, "L2 weight decay")
    epochs: int = _opt(15, "passes over the training split")
    grad_clip_norm: float = _opt(0.0, "clip the global gradient norm to this value; 0 = off")
    precision: str = _opt(
        "float32",
        "float32; float16: float16 parameters and compute, float32 master weights in the"
        " optimizer, static loss scale; amp: MXNet AMP (float16 per op where safe, dynamic loss"
        " scale). float16 and amp need scaling.use_gpu=true",
        choices=PRECISIONS,
    )
    loss_scale: float = _opt(
        1024.0, "static loss scale for precision=float16 (a power of two divides out exactly)"
    )

    def __post_init__(self) -> None:
        _require(
            self.learning_rate > 0,
            "optim.learning_rate",
            f"must be > 0, got {self.learning_rate}",
        )
        _require(
            0 <= self.momentum < 1, "optim.momentum", f"must be in [0, 1), got {self.momentum}"
        )
        _require(
            self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}"
        )
        _require(self.epochs >= 1, "optim.epochs", f"must be >= 1, got {self.epochs}")
        _require(
            0 <= self.warmup_epochs < self.epochs,
            "optim.warmup_epochs",
            f"must be in [0, optim.epochs), got {self.warmup_epochs}",
        )
        _require(
            self.grad_clip_norm >= 0,
            "optim.grad_clip_norm",
            f"must be >= 0, got {self.grad_clip_norm}",
        )
        _require(
            self.precision in PRECISIONS,
            "optim.precision",
            f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        _require(self.loss_scale > 0, "optim.loss_scale", f"must be > 0, got {self.loss_scale}")


@dataclass(frozen=True)
class ScalingConfig:
    """How many workers train and what each one gets."""

    num_workers: int = _opt(
        2, "Horovod workers (one Ray Train worker each); the most, when min_workers is set"
    )
    min_workers: int = _opt(
        0,
        "elastic: start with as many workers as the cluster has slots for, at least this"
        " many, at most num_workers (0 = always num_workers)",
    )
    cpus_per_worker: float = _opt(1.0, "Ray CPUs reserved per worker")
    threads_per_worker: int = _opt(
        1, "compute threads per worker (OMP and MXNet engine); 1 lets N workers share N cores"
    )
    use_gpu: bool = _opt(False, "one GPU per worker (mx.gpu(local_rank)); needs a GPU build")
    fp16_allreduce: bool = _opt(
        False,
        "send gradients as float16 in the allreduce (Horovod Compression.fp16): half the bytes,"
        " float16 rounding of the sums",
    )
    max_failures: int = _opt(
        3,
        "worker-group failures survived (restart from the latest valid checkpoint); 0 = none",
    )

    @property
    def elastic(self) -> bool:
        return 0 < self.min_workers < self.num_workers

    def __post_init__(self) -> None:
        _require(
            self.num_workers >= 1, "scaling.num_workers", f"must be >= 1, got {self.num_workers}"
        )
        _require(
            0 <= self.min_workers <= self.num_workers,
            "scaling.min_workers",
            f"must be between 0 and num_workers ({self.num_workers}), got {self.min_workers}",
        )
        _require(
            self.max_failures >= 0,
            "scaling.max_failures",
            f"must be >= 0, got {self.max_failures}",
        )
        _require(
            self.cpus_per_worker > 0,
            "scaling.cpus_per_worker",
            f"must be > 0, got {self.cpus_per_worker}",
        )
        _require(
            self.threads_per_worker >= 1,
            "scaling.threads_per_worker",
            f"must be >= 1, got {self.threads_per_worker}",
        )


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow records the run and registers the model."""

    uri: str = _opt(
        "",
        "MLflow tracking URI; empty = $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db",
    )
    experiment: str = _opt("mxtrain", "MLflow experiment the run is recorded in")
    register: bool = _opt(True, "register the trained model in the MLflow model registry")
    model_name: str = _opt("", "registered model name; empty = the recipe's name")
    alias: str = _opt("candidate", "registry alias pointed at the new model version")
    artifact_uri: str = _opt(
        "",
        "where a new experiment stores artifacts (folder or s3://bucket/prefix); empty = the"
        " tracking server's default",
    )

    def __post_init__(self) -> None:
        _require(bool(self.experiment.strip()), "tracking.experiment", "must not be empty")
        _require(bool(self.alias.strip()), "tracking.alias", "must not be empty")

    def resolved_uri(self) -> str:
        if self.uri:
            return self.uri
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


@dataclass(frozen=True)
class CheckpointConfig:
    """When checkpoints are written and how many Ray Train keeps."""

    keep_last: int = _opt(2, "checkpoints kept in storage (older ones are deleted)")
    every_steps: int = _opt(
        0, "also checkpoint every N steps within an epoch (0 = at the end of each epoch only)"
    )

    def __post_init__(self) -> None:
        _require(self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")
        _require(
            self.every_steps >= 0,
            "checkpoint.every_steps",
            f"must be >= 0, got {self.every_steps}",
        )


@dataclass(frozen=True)
class StorageConfig:
    """Where run outputs (checkpoints, Ray Train state) are written."""

    path: str = _opt("", "run outputs: a folder or s3://bucket/prefix; empty = <repo>/runs")

    def resolved_path(self) -> str:
        return self.path or str(REPO_ROOT / "runs")


@dataclass(frozen=True)
class S3Config:
    """How S3 is reached. Credentials never go here: they come from the standard AWS sources
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE and the shared
    config files, or the instance's IAM role)."""

    endpoint_url: str = _opt(
        "", "S3 endpoint for S3-compatible servers; empty = $AWS_ENDPOINT_URL, else AWS"
    )
    region: str = _opt("", "S3 region; empty = $AWS_REGION / $AWS_DEFAULT_REGION / the profile")
    max_attempts: int = _opt(5, "attempts per S3 request (retry mode standard, with backoff)")
    connect_timeout_s: float = _opt(5.0, "seconds to wait for a TCP connection to S3")

    def __post_init__(self) -> None:
        _require(
            self.max_attempts >= 1, "s3.max_attempts", f"must be >= 1, got {self.max_attempts}"
        )
        _require(
            self.connect_timeout_s > 0,
            "s3.connect_timeout_s",
            f"must be > 0, got {self.connect_timeout_s}",
        )
        _require(
            not self.endpoint_url or "://" in self.endpoint_url,
            "s3.endpoint_url",
            f"must be a URL like http://host:port, got {self.endpoint_url!r}",
        )


@dataclass(frozen=True)
class JobConfig:
    """Everything one training job needs; built by :func:`load_job_config`."""

    recipe: str = _opt("custom", "recipe name; also the default registered model name")
    seed: int = _opt(0, "seed for initialisation and shuffling")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    s3: S3Config = field(default_factory=S3Config)

    def __post_init__(self) -> None:
        _require(
            self.optim.precision == "float32" or self.scaling.use_gpu,
            "optim.precision",
            f"{self.optim.precision} needs scaling.use_gpu=true: MXNet has no float16 matrix"
            " products on the CPU",
        )

    @property
    def registered_model_name(self) -> str:
        return self.tracking.model_name or self.recipe

    def resume_key(self) -> str:
        """A hash of what a checkpoint's weights and data position depend on: the model, the
        data and its order. A run resumes only from checkpoints with the same key (optimizer
        settings and the number of epochs may change)."""
        import hashlib
        import json

        keep = ("model.", "data.uri", "data.batch_size", "data.shuffle_buffer", "seed")
        picked = {k: v for k, v in self.to_dict().items() if k.startswith(keep)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Every field flattened to ``section.key`` -> value (what MLflow logs as params)."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelConfig):
                flat["model.name"] = value.name
                for af in dataclasses.fields(value.arch):
                    flat[f"model.{af.name}"] = getattr(value.arch, af.name)
            elif dataclasses.is_dataclass(value):
                for sf in dataclasses.fields(value):
                    flat[f"{f.name}.{sf.name}"] = getattr(value, sf.name)
            else:
                flat[f.name] = value
        return flat


# ---------------------------------------------------------------------------------------------
# Building a JobConfig from recipe + overrides


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "scaling": ScalingConfig,
    "tracking": TrackingConfig,
    "checkpoint": CheckpointConfig,
    "storage": StorageConfig,
    "s3": S3Config,
}
_TOP_LEVEL = ("recipe", "seed")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "arch"}


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(key: str, value: Any, tp: Any, choices: Iterable[str] | None) -> Any:
    """Check ``value`` against the field type; ints are accepted where floats are expected."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        raise TypeError(f"unsupported field type for {key}")  # pragma: no cover - our bug
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(
            f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    if tp is float:
        value = float(value)
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
    return value


def _unknown_key(key: str, known: Iterable[str]) -> ConfigError:
    known = list(known)
    section, _, name = key.rpartition(".")
    close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
    # Abbreviations (optim.lr -> optim.learning_rate) are not close by edit distance.
    initials = [
        k
        for k in known
        if k.rpartition(".")[0] == section
        and name
        and "".join(w[0] for w in k.rpartition(".")[2].split("_")) == name
    ]
    hints = list(dict.fromkeys(initials + close))[:2]
    hint = f"; did you mean {' or '.join(repr(h) for h in hints)}?" if hints else ""
    return ConfigError(
        f"unknown config key {key!r}{hint} (python -m jobs.train --help lists the keys)"
    )


def all_keys(model_name: str | None = None) -> list[str]:
    """The ``section.key`` names a recipe or ``--set`` may use."""
    keys = list(_TOP_LEVEL)
    for section, cls in _SECTIONS.items():
        keys += [f"{section}.{name}" for name in _field_types(cls)]
    families = [model_name] if model_name else list(MODEL_CONFIGS)
    for fam in families:
        keys += [f"model.{name}" for name in _field_types(MODEL_CONFIGS[fam])]
    return sorted(set(keys))


def _build(cls: type, prefix: str, values: Mapping[str, Any]) -> Any:
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if name not in types_:
            raise _unknown_key(key, [f"{prefix}.{n}" for n in types_])
        meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
        kwargs[name] = _coerce(key, value, types_[name], meta.get("choices"))
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the model families raise "field: problem"
        raise ConfigError(f"{prefix}.{exc}") from None


def job_config_from_mapping(values: Mapping[str, Any]) -> JobConfig:
    """Build and validate a JobConfig from a nested mapping (a parsed recipe + overrides)."""
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name in _TOP_LEVEL:
            tp = _field_types(JobConfig)[name]
            kwargs[name] = _coerce(name, value, tp, None)
        elif name in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a [{name}] table, got {value!r}")
            if name == "model":
                section = dict(value)
                family = section.pop("name", ModelConfig().name)
                family = _coerce("model.name", family, str, tuple(MODEL_CONFIGS))
                arch = _build(MODEL_CONFIGS[family], "model", section)
                kwargs["model"] = ModelConfig(name=family, arch=arch)
            else:
                kwargs[name] = _build(_SECTIONS[name], name, value)
        else:
            raise _unknown_key(name, list(_TOP_LEVEL) + list(_SECTIONS))
    return JobConfig(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value); the value is read as TOML.

    A value that is not valid TOML is taken as a plain string, so ``data.uri=s3://b/p``
    needs no quotes.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def resolve_recipe(recipe: str) -> Path:
    """A recipe name (``digits-cnn``) or a path to a TOML file."""
    path = Path(recipe)
    if path.suffix == ".toml" or os.sep in recipe:
        candidate = path
    else:
        candidate = RECIPES_DIR / f"{recipe}.toml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml")))
        raise ConfigError(f"recipe {recipe!r} not found ({candidate}); known recipes: {known}")
    return candidate


def load_job_config(
    recipe: str | None = None,
    overrides: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> JobConfig:
    """Recipe file, then ``extra`` (CLI shortcuts like ``--data``), then ``--set`` overrides."""
    values: dict[str, Any] = {}
    if recipe:
        path = resolve_recipe(recipe)
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"recipe {path}: not valid TOML ({exc})") from None
        values.setdefault("recipe", path.stem)
    layered = [(k.split("."), v) for k, v in (extra or {}).items()]
    layered += [parse_override(o) for o in overrides]
    for parts, value in layered:
        if len(parts) == 1:
            values[parts[0]] = value
        elif len(parts) == 2:
            section = values.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"{parts[0]}: is not a section")
            section[parts[1]] = value
        else:
            raise _unknown_key(".".join(parts), all_keys())
    return job_config_from_mapping(values)


def describe_options() -> str:
    """Every key with its type, default and help: the body of ``--help``."""
    lines = []

    def add(prefix: str, cls: type) -> None:
        types_ = _field_types(cls)
        for f in dataclasses.fields(cls):
            if f.name == "arch" or f.name not in types_:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            help_ = f.metadata.get("help", "")
            choices = f.metadata.get("choices")
            if choices:
                help_ += f" [{' | '.join(choices)}]"
            shown = "''" if default == "" else repr(default)
            lines.append(f"  {prefix}{f.name:<22} {help_} (default {shown})")

    lines.append("top level:")
    for name in _TOP_LEVEL:
        f = next(f for f in dataclasses.fields(JobConfig) if f.name == name)
        lines.append(f"  {name:<22} {f.metadata['help']} (default {f.default!r})")
    for section, cls in _SECTIONS.items():
        lines.append(f"[{section}]")
        add(f"{section}.", cls)
        if section == "model":
            for fam, arch_cls in MODEL_CONFIGS.items():
                lines.append(f"  with model.name = {fam!r}:")
                add("model.", arch_cls)
    return "\n".join(lines)
