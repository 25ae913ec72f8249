"""Progress of long work on a terminal or in a log: a bar redrawn in place when the output is
a terminal, a plain line every ``every_s`` seconds when it is not (CI, a submitted job's log),
so neither a user nor a log reader sees silence or a screen of carriage returns."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar:
    """``update(n)`` as work is done; ``close()`` prints the final state once."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "rows",
        out: TextIO | None = None,
        every_s: float = 10.0,
        width: int = 24,
        rate_unit: str = "",
        per_unit: float = 1.0,
    ) -> None:
        """``rate_unit``/``per_unit``: the speed in another unit (steps done, samples/s:
        ``per_unit`` samples per step); by default in ``unit``."""
        self.total = max(0, int(total))
        self.label = label
        self.unit = unit
        self.rate_unit = rate_unit or unit
        self.per_unit = per_unit
        self.done = 0
        self._out = out or sys.stderr
        self._tty = bool(getattr(self._out, "isatty", lambda: False)())
        self._every = 0.2 if self._tty else every_s
        self._width = width
        self._start = time.monotonic()
        self._last = self._start
        self._closed = False
        self._shown = -1

    def update(self, n: int) -> None:
        self.done += int(n)
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._print(now)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        share = self.done / self.total if self.total else 0.0
        left = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
        speed = rate * self.per_unit
        filled = round(share * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        return (
            f"{self.label} [{bar}] {share:6.1%} {self.done:,}/{self.total:,} {self.unit}, "
            f"{speed:,.0f} {self.rate_unit}/s, {_duration(elapsed)} elapsed, ETA {_duration(left)}"
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._shown != self.done or self._tty:
            self._print(time.monotonic(), final=True)

    def _print(self, now: float, final: bool = False) -> None:
        self._shown = self.done
        text = self.line(now)
        if self._tty:
            self._out.write("\r" + text + ("\n" if final else ""))
        else:
            self._out.write(text + "\n")
        self._out.flush()
