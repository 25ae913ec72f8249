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

    ``ratio`` = value / baseline, except where the note says otherwise; ``target`` is a bound
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


def median_time(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``fn`` over ``reps`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_times(
    ours: Callable[[], object], baseline: Callable[[], object], reps: int
) -> tuple[float, float]:
    """Median wall times of two functions run in alternation (one warm-up each), so drift in
    a shared machine's speed falls on both sides of the ratio alike."""
    ours()
    baseline()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(reps):
        for fn, out in ((ours, times[0]), (baseline, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def ratio_figure(
    name: str, value: float, baseline: float, target: str, unit: str, note: str = ""
) -> Figure:
    return Figure(name, value, baseline, value / baseline if baseline else None, target, unit, note)


def not_available(name: str, target: str, unit: str, why: str) -> Figure:
    return Figure(name, None, None, None, target, unit, f"n/a: {why}")


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v == 0 or 0.01 <= abs(v) < 100_000:
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:.3g}"


def table(figures: list[Figure]) -> str:
    rows = [("name", "value", "baseline", "ratio", "target", "met", "unit", "note")]
    for f in figures:
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        rows.append(
            (
                f.name,
                _fmt(f.value),
                _fmt(f.baseline),
                _fmt(f.ratio),
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


def write(figures: list[Figure], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [
        {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(f).items()
        }
        for f in figures
    ]
    path.write_text(json.dumps(data, indent=2) + "\n")
