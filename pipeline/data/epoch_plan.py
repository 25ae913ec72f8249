"""What is left of an epoch after its workers were resized mid-way, row for row.

An epoch's sequence (its row groups in the order drawn from ``(seed, epoch)``) is dealt to the
ranks of a world in contiguous parts; each rank shuffles windows of its part and trains on
consecutive batches (:class:`~pipeline.data.ingest.ShardReader`). A checkpoint made after
``steps`` batches therefore says exactly which rows each rank has trained: its windows before
the current one, and the first ``done`` rows of the current window's permutation.

A job that resumes that checkpoint with another number of workers deals the rows *not yet
trained* to its own ranks: the remaining sequence is a list of segments ``[start, end)`` of
the epoch's sequence (one per old rank, plus the untrained rows of each old rank's current
window), replayed from the checkpoint's record of the resizes so far (``(world, steps)``
each), so the checkpoint stays a few numbers and every row is trained exactly once in the
epoch, whatever the worlds. Ray Data and Petastorm cannot say this: their splits have no
position to resume from.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Segment = tuple[int, int]


@dataclass(frozen=True)
class Resize:
    """The world of workers that trained ``steps`` batches of the epoch before a resume with
    another world size."""

    world: int
    steps: int


@dataclass(frozen=True)
class Dealing:
    """How an epoch's rows are dealt: batches of ``batch`` rows, windows of ``window`` rows
    shuffled (or not) with permutations drawn from ``(seed, epoch, rank, window index)``."""

    batch: int
    window: int
    shuffle: bool
    seed: int
    epoch: int


def rank_part(total: int, world: int, rank: int) -> tuple[int, int, int]:
    """(start, real rows, padding rows) of ``rank``'s part of a ``total``-row sequence: parts
    of ``ceil(total / world)`` rows, the last ones topped up with padding."""
    per = -(-total // world)
    start = min(rank * per, total)
    real = min(start + per, total) - start
    return start, real, per - real


def window_order(deal: Dealing, rank: int, index: int, rows: int) -> np.ndarray:
    """The order in which ``rank`` trains the ``rows`` rows of its window number ``index``."""
    if not deal.shuffle:
        return np.arange(rows)
    return np.random.default_rng([deal.seed, deal.epoch, rank, index]).permutation(rows)


def untrained(total: int, world: int, rank: int, steps: int, deal: Dealing) -> list[Segment]:
    """The positions (in a ``total``-row sequence) of ``rank``'s real rows not trained after
    ``steps`` batches, as sorted segments."""
    start, real, pad = rank_part(total, world, rank)
    done = steps * deal.batch
    if done >= real:
        return []
    index = done // deal.window
    first = index * deal.window
    rows = min(deal.window, real + pad - first)
    taken = done - first
    out: list[Segment] = []
    if taken:
        rest = np.sort(window_order(deal, rank, index, rows)[taken:]) + first
        out += runs(rest[rest < real] + start)
        first += rows
    if first < real:
        out.append((start + first, start + real))
    return merge(out)


def runs(positions: np.ndarray) -> list[Segment]:
    """Sorted positions as segments of consecutive ones."""
    if not len(positions):
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(positions)]])
    return [
        (int(positions[a]), int(positions[b - 1]) + 1) for a, b in zip(starts, ends, strict=True)
    ]


def merge(segments: Sequence[Segment]) -> list[Segment]:
    """Adjacent segments joined (order kept)."""
    out: list[Segment] = []
    for lo, hi in segments:
        if hi <= lo:
            continue
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


class Remaining:
    """Rows of the epoch's sequence still to train, as segments of it, in the order they are
    dealt again; ``locate`` maps a range of this order back to the sequence."""

    def __init__(self, segments: Sequence[Segment]):
        self.segments = merge(segments)
        self.offsets = [0]
        for lo, hi in self.segments:
            self.offsets.append(self.offsets[-1] + hi - lo)

    @property
    def rows(self) -> int:
        return self.offsets[-1]

    def locate(self, start: int, end: int) -> list[Segment]:
        """Positions ``[start, end)`` of the remaining order as segments of the sequence."""
        out: list[Segment] = []
        i = max(0, bisect.bisect_right(self.offsets, start) - 1)
        while start < end and i < len(self.segments):
            lo, hi = self.segments[i]
            skip = start - self.offsets[i]
            take = min(hi - lo - skip, end - start)
            if take > 0:
                out.append((lo + skip, lo + skip + take))
                start += take
            i += 1
        return merge(out)


def remaining(total: int, resizes: Sequence[Resize], deal: Dealing) -> Remaining:
    """The epoch's untrained rows after the worlds of ``resizes`` trained in turn, each on
    what the ones before it left."""
    left = Remaining([(0, total)])
    for resize in resizes:
        segments: list[Segment] = []
        for rank in range(resize.world):
            for lo, hi in untrained(left.rows, resize.world, rank, resize.steps, deal):
                segments += left.locate(lo, hi)
        left = Remaining(segments)
    return left
