"""What every benchmark shares: figures as ratios of two measurements taken in the same
process run, medians of repetitions, and the results file + table."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Figure:
    """One row of .bench/results.json.

    ``ratio`` = value / baseline, or for paired figures the median of the per-pair ratios
    (close to value / baseline, and the statistic a paired design calls for); for an absolute
    figure (no baseline: a difference measured within pairs, such as checkpoint_stall)
    ``ratio`` = value. ``target`` is a bound
    on the ratio (``>= x`` or ``<= x``), or empty where the figure is reported, not judged.
    """

    name: str
    value: float | None
    baseline: float | None
    ratio: float | None
    target: str
    unit: str
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.ratio is None or not self.target:
            return None
        op, bound = self.target.split()
        return self.ratio >= float(bound) if op == ">=" else self.ratio <= float(bound)


#: Seconds added to every call of "ours" in paired measurements (``--handicap``): the smoke
#: test slows our side on purpose to show that the harness can report a miss.
HANDICAP = 0.0


def alternate(
    ours: Callable[[], float], baseline: Callable[[], float], reps: int
) -> tuple[list[float], list[float]]:
    """What two measuring functions return, run in alternation: ``reps`` pairs after one
    unmeasured run of each, so drift in a shared machine's speed falls on both sides alike.
    The side that goes first alternates too, so neither always runs on the other's warm
    caches."""
    ours()
    baseline()
    out: tuple[list[float], list[float]] = ([], [])
    for rep in range(reps):
        sides = ((ours, 0), (baseline, 1)) if rep % 2 == 0 else ((baseline, 1), (ours, 0))
        for fn, side in sides:
            out[side].append(fn())
    return out


def paired_samples(
    ours: Callable[[], object], baseline: Callable[[], object], reps: int
) -> tuple[list[float], list[float]]:
    """Wall times of two functions run by :func:`alternate` (``HANDICAP`` added to ours)."""

    def timed(fn: Callable[[], object], handicap: float) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            fn()
            time.sleep(handicap)
            return time.perf_counter() - start

        return run

    return alternate(timed(ours, HANDICAP), timed(baseline, 0.0), reps)


def spread(ratios: list[float]) -> str:
    """What a figure's note says about its repetitions."""
    if len(ratios) == 1:
        return "1 pair (no spread)"
    return (
        f"median of {len(ratios)} alternated pairs, pair ratios "
        f"{min(ratios):.3f}..{max(ratios):.3f}"
    )


def throughput_figure(
    name: str,
    work: float,
    samples: tuple[list[float], list[float]],
    target: str,
    unit: str,
    note: str,
) -> Figure:
    """``work`` per second of each side from :func:`paired_samples`: the value and baseline
    are the sides' medians, the ratio is the median of the per-pair ratios (the paired
    statistic), and the note ends with their spread."""
    ours, base = samples
    ratios = [b / a for a, b in zip(ours, base, strict=True)]
    return Figure(
        name,
        work / statistics.median(ours),
        work / statistics.median(base),
        statistics.median(ratios),
        target,
        unit,
        f"{note}; {spread(ratios)}",
    )


def paired_figure(
    name: str,
    samples: tuple[list[float], list[float]],
    target: str,
    unit: str,
    note: str,
) -> Figure:
    """A figure of two sides' measured quantities in alternated pairs (ours, baseline), where
    the ratio is ours / baseline: the sides' medians, the median of the per-pair ratios, and
    their spread at the end of the note."""
    ours, theirs = samples
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return Figure(
        name,
        statistics.median(ours),
        statistics.median(theirs),
        statistics.median(ratios),
        target,
        unit,
        f"{note}; {spread(ratios)}",
    )


def ratio_figure(
    name: str, value: float, baseline: float, target: str, unit: str, note: str = ""
) -> Figure:
    return Figure(name, value, baseline, value / baseline if baseline else None, target, unit, note)


def not_available(name: str, target: str, unit: str, why: str) -> Figure:
    return Figure(name, None, None, None, target, unit, f"n/a: {why}")


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if v == 0 or abs(v) >= 0.01:
        return f"{v:,.3f}"
    return f"{v:.3g}"


def table(figures: list[Figure]) -> str:
    rows = [("name", "value", "baseline", "ratio", "target", "met", "unit", "note")]
    for f in figures:
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        rows.append(
            (
                f.name,
                fmt(f.value),
                fmt(f.baseline),
                fmt(f.ratio),
                f.target or "-",
                met,
                f.unit,
                f.note,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    lines = []
    for j, r in enumerate(rows):
        cells = "  ".join(c.ljust(w) for c, w in zip(r[:7], widths, strict=True))
        lines.append(cells + "  " + r[7])
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, str | int]:
    """What the figures were measured on: they mean little without it."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return {
        "cores": os.cpu_count() or 0,
        "cpu": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def write(
    figures: list[Figure],
    path: Path,
    size: str,
    seconds: float,
    group_seconds: dict[str, float] | None = None,
    measured_on: dict | None = None,
    rerun: list[str] | None = None,
) -> None:
    """``{"machine", "size", "seconds", "group_seconds", "rerun", "figures"}`` as JSON
    (non-finite numbers as null); ``group_seconds``: what each group of figures took when
    last run; ``measured_on``: the machine, when not this one (a file rebuilt from the page);
    ``rerun``: the groups run on their own (``--only``) since the run of every group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(f).items()
        }
        for f in figures
    ]
    data = {
        "machine": measured_on or machine(),
        "size": size,
        "seconds": round(seconds),
        "group_seconds": group_seconds or {},
        "rerun": rerun or [],
        "figures": rows,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def read(path: Path) -> tuple[dict, list[Figure]]:
    """(the results' header, the figures) of a results file written by :func:`write`."""
    data = json.loads(path.read_text())
    header = {k: v for k, v in data.items() if k != "figures"}
    return header, [Figure(**f) for f in data["figures"]]
