"""The configuration keys as text: the body of ``python -m jobs.train --help``."""

from __future__ import annotations

import dataclasses

from models.config import MODEL_CONFIGS
from pipeline.config.fields import bounds_text
from pipeline.config.loader import SECTIONS, TOP_LEVEL, field_types
from pipeline.config.schema import JobConfig


def _line(key: str, f: dataclasses.Field) -> str:
    """``  key  help [choices] (default D; bounds)``."""
    default = f.default if f.default is not dataclasses.MISSING else None
    help_ = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if choices:
        help_ += f" [{' | '.join(choices)}]"
    shown = "''" if default == "" else repr(default)
    bounds = bounds_text(f.metadata)
    return f"  {key:<28} {help_} (default {shown}{'; ' + bounds if bounds else ''})"


def describe_options() -> str:
    """Every key with its help, choices, default and bounds."""
    lines: list[str] = []

    def add(prefix: str, cls: type) -> None:
        types_ = field_types(cls)
        lines.extend(
            _line(f"{prefix}{f.name}", f) for f in dataclasses.fields(cls) if f.name in types_
        )

    lines.append("top level:")
    fields = {f.name: f for f in dataclasses.fields(JobConfig)}
    lines.extend(_line(name, fields[name]) for name in TOP_LEVEL)
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        add(f"{section}.", cls)
        if section == "model":
            for family, arch_cls in MODEL_CONFIGS.items():
                lines.append(f"  with model.name = {family!r}:")
                add("model.", arch_cls)
    return "\n".join(lines)
