"""Building a :class:`JobConfig` from a recipe file, CLI shortcuts and ``--set`` overrides.

A job is a recipe (``jobs/recipes/NAME.toml``) plus ``section.key=value`` overrides. Every value
is checked here for its type and choices, then by the schema for its range; an unknown key gets
a "did you mean" hint.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from models.config import MODEL_CONFIGS
from pipeline.config.schema import (
    REPO_ROOT,
    AugmentConfig,
    CheckpointConfig,
    CompressConfig,
    DataConfig,
    InitConfig,
    JobConfig,
    ModelConfig,
    OptimConfig,
    S3Config,
    ScalingConfig,
    StorageConfig,
    TrackingConfig,
    TuneConfig,
)
from pipeline.errors import ConfigError

RECIPES_DIR = REPO_ROOT / "jobs" / "recipes"


#: Each section of a recipe, in the order --help lists them.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "init": InitConfig,
    "optim": OptimConfig,
    "scaling": ScalingConfig,
    "tracking": TrackingConfig,
    "checkpoint": CheckpointConfig,
    "compress": CompressConfig,
    "tune": TuneConfig,
    "storage": StorageConfig,
    "s3": S3Config,
}
TOP_LEVEL = ("recipe", "seed")


def field_types(cls: type) -> dict[str, Any]:
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
    if typing.get_origin(tp) is tuple:
        return _coerce_tuple(key, value, typing.get_args(tp)[0])
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


def _coerce_tuple(key: str, value: Any, item: type) -> tuple:
    """A list field: a TOML list, or (from ``--set``) one comma-separated string."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            value = [item(p) for p in parts]
        except ValueError:
            raise ConfigError(f"{key}: expected a list of {item.__name__}, got {value!r}") from None
    if not isinstance(value, list | tuple):
        raise ConfigError(f'{key}: expected a list like ["a", "b"], got {value!r}')
    return tuple(_coerce(key, v, item, None) for v in value)


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
    keys = list(TOP_LEVEL)
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{name}" for name in field_types(cls)]
    families = [model_name] if model_name else list(MODEL_CONFIGS)
    for fam in families:
        keys += [f"model.{name}" for name in field_types(MODEL_CONFIGS[fam])]
    return sorted(set(keys))


def _build(cls: type, prefix: str, values: Mapping[str, Any]) -> Any:
    types_ = field_types(cls)
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
        if name in TOP_LEVEL:
            tp = field_types(JobConfig)[name]
            kwargs[name] = _coerce(name, value, tp, None)
        elif name in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a [{name}] table, got {value!r}")
            if name == "model":
                section = dict(value)
                family = section.pop("name", ModelConfig().name)
                family = _coerce("model.name", family, str, tuple(MODEL_CONFIGS))
                arch = _build(MODEL_CONFIGS[family], "model", section)
                kwargs["model"] = ModelConfig(name=family, arch=arch)
            else:
                kwargs[name] = _build(SECTIONS[name], name, value)
        else:
            raise _unknown_key(name, list(TOP_LEVEL) + list(SECTIONS))
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


def _from_param(text: str, tp: Any) -> Any:
    """One value as ``str(value)`` wrote it (what MLflow records as a param)."""
    if typing.get_origin(tp) is tuple:
        value = ast.literal_eval(text)  # "('a', 'b')": literals only, never code
        return list(value) if isinstance(value, tuple | list) else value
    if tp is bool:
        return {"True": True, "False": False}.get(text, text)
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            return text  # _coerce names the key and what it expected
    return text


def config_from_params(params: Mapping[str, str]) -> JobConfig:
    """The JobConfig a run was trained with, from its MLflow params (``to_dict`` values as
    strings). Params that are not config keys (row counts, derived facts) are skipped; keys
    added since the run was logged keep their defaults."""
    family = params.get("model.name", ModelConfig().name)
    if family not in MODEL_CONFIGS:
        raise ConfigError(f"model.name={family!r}: not a model family of this version")
    known: dict[str, Any] = {name: field_types(JobConfig)[name] for name in TOP_LEVEL}
    for section, cls in SECTIONS.items():
        known.update({f"{section}.{k}": tp for k, tp in field_types(cls).items()})
    known.update({f"model.{k}": tp for k, tp in field_types(MODEL_CONFIGS[family]).items()})
    values: dict[str, Any] = {}
    for key, text in params.items():
        if key not in known:
            continue
        try:
            value = _from_param(text, known[key])
        except (ValueError, SyntaxError):
            raise ConfigError(f"{key}: logged value {text!r} is not readable") from None
        section, _, name = key.rpartition(".")
        if section:
            values.setdefault(section, {})[name] = value
        else:
            values[name] = value
    return job_config_from_mapping(values)
