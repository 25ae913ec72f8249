"""Is every id used once? Answered in memory bounded by a setting, whatever the row count.

A billion ids are 8 GB, and sorting them needs as much again: the driver (or
``prepare_data``) cannot hold them. :class:`UniqueIds` keeps the ids it is given in memory up
to ``memory_mb``; past that it spills them, with the index of the file each came from, into
``PARTITIONS`` files on local disk by the id's hash. A repeated id always lands in the same
partition, so each partition is checked alone, and a partition holds about 1/256 of the ids
(a billion ids: about 47 MB each).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np

#: Spill files once the ids outgrow memory; a repeated id is always in one of them.
PARTITIONS = 256
#: What the ids held in memory may take by default (the ids and their files' indices).
DEFAULT_MEMORY_MB = 256
_ROW = np.dtype([("id", "<i8"), ("owner", "<i4")])
#: Bytes an id held in memory costs at the check's peak: itself, its sorted copy, a flag.
_HELD_BYTES_PER_ID = 20
# A multiplicative hash (Knuth's): ids that step by a power of two still spread evenly.
_MIX = np.uint64(0x9E3779B97F4A7C15)


def first_repeat(ids: list[np.ndarray]) -> tuple[int, int, int, int] | None:
    """The first id found twice in the per-file arrays ``ids``: (id, index of the file it is
    in, index of the file it is in again, how many repeats there are); None if none."""
    if not ids:
        return None
    every = np.concatenate(ids)
    owner = np.repeat(np.arange(len(ids)), [len(a) for a in ids])
    return _repeat_in(every, owner)


def _repeat_in(every: np.ndarray, owner: np.ndarray) -> tuple[int, int, int, int] | None:
    order = np.argsort(every, kind="stable")
    ordered = every[order]
    repeated = np.flatnonzero(ordered[1:] == ordered[:-1])
    del ordered
    if not len(repeated):
        return None
    first, second = order[repeated[0]], order[repeated[0] + 1]
    return int(every[first]), int(owner[first]), int(owner[second]), len(repeated)


class UniqueIds:
    """Collects the ids of many files (:meth:`add`, safe from several threads) and finds an
    id used twice (:meth:`first_repeat`) in about ``memory_mb``, the check's own work
    included: ids held in memory take 8 bytes each and checking them 9 more (a sorted copy,
    a comparison), so past ``memory_mb / 20`` bytes' worth of rows they are spilled."""

    def __init__(self, memory_mb: float = DEFAULT_MEMORY_MB, spill_dir: str | None = None):
        self.limit = int(memory_mb * 2**20) // _HELD_BYTES_PER_ID
        self.spill_dir = spill_dir
        self.total = 0
        self._held: list[tuple[np.ndarray, int]] = []  # (ids, owner)
        self._held_rows = 0
        self._spill: tempfile.TemporaryDirectory | None = None
        self._lock = threading.Lock()

    @property
    def spilled(self) -> bool:
        return self._spill is not None

    def add(self, ids: np.ndarray, owner: int) -> None:
        """The ids of the file numbered ``owner`` (how :meth:`first_repeat` names it)."""
        ids = np.asarray(ids, np.int64)
        with self._lock:
            self.total += len(ids)
            self._held.append((ids, owner))
            self._held_rows += len(ids)
            if self._held_rows > self.limit:
                self._write_out()

    def _write_out(self) -> None:
        """The held ids to the partition files, a slice at a time: partitioning costs about
        48 bytes a row (rows with owners, hashes, an order, the reordered copies), so a slice
        of limit / 6 rows stays within what the held ids were allowed."""
        if self._spill is None:
            self._spill = tempfile.TemporaryDirectory(prefix="mxtrain-ids-", dir=self.spill_dir)
        held, self._held, self._held_rows = self._held, [], 0
        slice_rows = max(1, self.limit // 6)
        while held:
            batch, rows_in = [], 0
            while held and rows_in < slice_rows:
                ids, owner = held.pop()
                batch.append((ids, owner))
                rows_in += len(ids)
            self._spill_rows(batch, rows_in)

    def _spill_rows(self, batch: list[tuple[np.ndarray, int]], count: int) -> None:
        rows = np.empty(count, _ROW)
        at = 0
        for ids, owner in batch:
            rows["id"][at : at + len(ids)] = ids
            rows["owner"][at : at + len(ids)] = owner
            at += len(ids)
        batch.clear()
        part = _partition(rows["id"])
        order = np.argsort(part, kind="stable")
        rows, part = rows[order], part[order]
        del order
        bounds = np.searchsorted(part, np.arange(PARTITIONS + 1))
        folder = Path(self._spill.name)  # type: ignore[union-attr]
        for p in range(PARTITIONS):
            if bounds[p] < bounds[p + 1]:
                with open(folder / f"{p:03d}", "ab") as f:
                    rows[bounds[p] : bounds[p + 1]].tofile(f)

    def first_repeat(self) -> tuple[int, int, int, int] | None:
        """(id, its file, the other file, how many repeats) for a repeated id, else None.
        Which repeated id is named is not defined once the ids were spilled."""
        with self._lock:
            if self._spill is None:
                return self._repeat_in_memory()
            if self._held:
                self._write_out()
            found, total = None, 0
            for path in sorted(Path(self._spill.name).iterdir()):
                rows = np.fromfile(path, _ROW)
                repeat = _repeat_in(rows["id"], rows["owner"])
                if repeat is not None:
                    found = found or repeat
                    total += repeat[3]
            return None if found is None else (*found[:3], total)

    def _repeat_in_memory(self) -> tuple[int, int, int, int] | None:
        if not self._held:
            return None
        every = np.concatenate([ids for ids, _ in self._held])
        every.sort()
        repeated = every[1:] == every[:-1]
        total = int(np.count_nonzero(repeated))
        if not total:
            return None
        value = int(every[1:][repeated][0])
        del every, repeated
        owners = [owner for ids, owner in self._held for _ in range(int((ids == value).sum()))]
        return value, owners[0], owners[1], total

    def close(self) -> None:
        with self._lock:
            self._held = []
            if self._spill is not None:
                self._spill.cleanup()
                self._spill = None

    def __enter__(self) -> UniqueIds:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _partition(ids: np.ndarray) -> np.ndarray:
    mixed = ids.astype(np.uint64) * _MIX  # wraps modulo 2**64, as intended
    return (mixed >> np.uint64(56)).astype(np.int64)  # the top 8 bits: 256 partitions
