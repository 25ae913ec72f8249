"""The search space of a recipe's ``[tune]`` section: ``section.key = DIST`` items, checked
against the configuration before any trial starts, turned into Ray Tune's distributions, and
each trial's draw turned back into ``--set`` overrides of an ordinary job.

    space = [
      "optim.learning_rate = loguniform(0.005, 0.3)",
      "model.dropout = uniform(0.0, 0.5)",
      "model.width = choice(128, 256, 512)",
      "data.batch_size = randint(32, 129)",   # 32..128
    ]
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import load_job_config
from pipeline.errors import ConfigError

KINDS = ("loguniform", "uniform", "randint", "choice")
_ITEM = re.compile(
    r"\s*(?P<key>[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)\s*=\s*(?P<kind>\w+)\s*\((?P<args>.*)\)\s*"
)


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str
    args: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{self.key} = {self.kind}({', '.join(json.dumps(a) for a in self.args)})"

    def to_tune(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)

    def edges(self) -> list[Any]:
        """Values that must all be valid settings of the key."""
        if self.kind == "choice":
            return list(self.args)
        lo, hi = self.args
        return [lo, hi - 1] if self.kind == "randint" else [lo, hi]


def toml_value(value: Any) -> str:
    """A drawn value as the right-hand side of a ``--set`` override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "item"):  # a numpy scalar from Tune's sampler
        value = value.item()
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def parse_space(items: Iterable[str]) -> list[Dimension]:
    dims: list[Dimension] = []
    for item in items:
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ConfigError(
                f"tune.space item {item!r}: expected 'section.key = DIST(...)' with DIST one of "
                f"{', '.join(KINDS)}"
            )
        key, kind = match["key"], match["kind"]
        if kind not in KINDS:
            raise ConfigError(
                f"tune.space {key}: unknown distribution {kind!r}; use one of {', '.join(KINDS)}"
            )
        if key.startswith("tune."):
            raise ConfigError(f"tune.space {key}: the search's own settings cannot be searched")
        try:
            args = tuple(tomllib.loads(f"v = [{match['args']}]")["v"])
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"tune.space {key}: arguments {match['args']!r} are not a list of numbers or "
                'quoted strings, e.g. choice("sgd", "adam")'
            ) from None
        dims.append(Dimension(key, kind, args))
        _check_args(dims[-1])
    keys = [d.key for d in dims]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"tune.space: {repeated[0]} is given twice")
    return dims


def _check_args(d: Dimension) -> None:
    where = f"tune.space {d}"
    if d.kind == "choice":
        if not d.args:
            raise ConfigError(f"{where}: choice() needs at least one value")
        return
    if len(d.args) != 2 or not all(
        isinstance(a, int | float) and not isinstance(a, bool) for a in d.args
    ):
        raise ConfigError(f"{where}: {d.kind} takes two numbers, (low, high)")
    lo, hi = d.args
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ConfigError(f"{where}: the range is empty or inverted; low must be below high")
    if d.kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0")
    if d.kind == "randint" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise ConfigError(f"{where}: randint takes integers (high excluded)")


def check_space(dims: list[Dimension], recipe: str, overrides: list[str]) -> None:
    """Every key is a configuration key and every edge of its range a valid value of it:
    ConfigError (with "did you mean") before any trial starts."""
    if not dims:
        raise ConfigError(
            f"recipe {recipe!r} has no search space: add [tune] space = ['section.key = "
            "loguniform(lo, hi)', ...] to it or pass --set 'tune.space=[...]'"
        )
    for d in dims:
        for value in d.edges():
            try:
                load_job_config(recipe, [*overrides, f"{d.key}={toml_value(value)}"])
            except ConfigError as exc:
                raise ConfigError(f"tune.space {d}: {exc}") from None


def trial_overrides(dims: list[Dimension], config: Mapping[str, Any]) -> list[str]:
    """A trial's draw as ``--set`` overrides, in the space's order."""
    return [f"{d.key}={toml_value(config[d.key])}" for d in dims if d.key in config]
