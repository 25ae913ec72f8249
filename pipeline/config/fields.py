"""Declaring a config field: its default, help text, allowed choices and numeric bounds.

The bounds live in the field's metadata (``ge``, ``gt``, ``le``, ``lt``, the names pydantic
uses), so one function checks them all (:func:`check_bounds`) and ``--help`` prints them
(:func:`bounds_text`). Rules that relate two fields stay in the class's ``__post_init__``.
The model families' settings (``models/config.py``) declare theirs the same way; that module
may not import this one, so it writes the same metadata keys itself.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

from pipeline.errors import ConfigError

BOUNDS = ("ge", "gt", "le", "lt")


def option(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with its help text, choices and bounds as metadata."""
    meta: dict[str, Any] = {"help": help}
    if choices:
        meta["choices"] = choices
    for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if value is not None:
            meta[name] = value
    return field(default=default, metadata=meta)


def require(ok: bool, key: str, problem: str) -> None:
    """A rule across fields: ConfigError ``key: problem`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def bounds_text(metadata: Any) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``; empty without bounds."""
    low = ("[", metadata["ge"]) if "ge" in metadata else ("(", metadata.get("gt"))
    high = ("]", metadata["le"]) if "le" in metadata else (")", metadata.get("lt"))
    if low[1] is not None and high[1] is not None:
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low[1] is not None:
        return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    if high[1] is not None:
        return f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"
    return ""


def _within(value: float, metadata: Any) -> bool:
    checks = {
        "ge": lambda b: value >= b,
        "gt": lambda b: value > b,
        "le": lambda b: value <= b,
        "lt": lambda b: value < b,
    }
    return all(check(metadata[name]) for name, check in checks.items() if name in metadata)


def check_bounds(obj: Any, prefix: str) -> None:
    """Every numeric field of the dataclass ``obj`` is finite and within its declared bounds;
    else ConfigError ``prefix.field: must be ..., got value``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        if not _within(value, f.metadata):
            raise ConfigError(f"{key}: must be {bounds_text(f.metadata)}, got {value}")
