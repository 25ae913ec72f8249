"""Exactly once per epoch across resizes: a mid-epoch checkpoint resumed with another number
of workers trains every row of that epoch once, by the plan alone (no ids recorded)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.data.contract import inspect_dataset, make_schema
from pipeline.data.datasets import Split
from pipeline.data.epoch_plan import Remaining, Resize
from pipeline.data.ingest import FileSource, MemorySource, ShardReader
from pipeline.data.prepare import _table

BATCH, SHUFFLE = 32, 4096


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """10,007 rows in 4 files of uneven row groups: windows of 4,096 rows cut across them."""
    root = tmp_path_factory.mktemp("resize")
    (root / "train").mkdir()
    start = 0
    for i, n in enumerate((3001, 2500, 4000, 506)):
        ids = np.arange(start, start + n)
        feats = np.zeros((n, 1, 2, 2), np.float32)
        table = _table(Split(feats, ids % 3, ids), make_schema((1, 2, 2), 3))
        pq.write_table(table, root / "train" / f"part-{i}.parquet", row_group_size=300 + 37 * i)
        start += n
    return inspect_dataset(str(root), splits=("train",), require_manifest=False).splits["train"]


def _ids(split, world: int, resizes: list[Resize], steps: int | None, stream=False) -> list:
    """Real (not padding) ids each rank of ``world`` trains in its first ``steps`` batches
    (all of them when None) of epoch 3, after the worlds of ``resizes``."""
    fs = pafs.LocalFileSystem()
    seen = []
    for rank in range(world):
        source = FileSource(split.files, fs, str, 3) if stream else MemorySource(split, fs, 3)
        reader = ShardReader(source, split, 4, rank, world, seed=11)
        left = reader.remaining(3, BATCH, SHUFFLE, resizes)
        total = reader.steps(BATCH, left)
        batches = reader.batches(3, BATCH, shuffle_rows=SHUFFLE, resizes=resizes)
        for step, batch in enumerate(batches):
            if steps is not None and step == steps:
                break
            seen += batch.ids[batch.labels >= 0].tolist()
        else:
            assert step + 1 == total  # as many batches as the plan says
        source.close()
    return seen


@pytest.mark.parametrize(
    "worlds",
    [
        [(2, 37), (1, None)],  # 2 -> 1 mid-window
        [(1, 100), (2, None)],  # 1 -> 2
        [(2, 128), (1, None)],  # a checkpoint on a window's edge (128 x 32 = 4,096)
        [(3, 20), (2, 41), (4, None)],  # twice in one epoch
        [(2, 0), (3, None)],  # resized before any step
    ],
)
def test_every_row_once_across_resizes(split, worlds):
    trained: list = []
    resizes: list[Resize] = []
    for world, steps in worlds:
        trained += _ids(split, world, resizes, steps)
        if steps is not None:
            resizes.append(Resize(world, steps))
    counts = Counter(trained)
    assert len(counts) == split.rows and set(counts.values()) == {1}


def test_the_streaming_reader_follows_the_same_plan(split):
    resizes = [Resize(2, 50)]
    assert sorted(_ids(split, 3, resizes, None, stream=True)) == sorted(
        _ids(split, 3, resizes, None)
    )


def test_remaining_maps_its_order_back_to_the_sequence():
    left = Remaining([(10, 20), (20, 25), (40, 45), (0, 3)])
    assert left.segments == [(10, 25), (40, 45), (0, 3)] and left.rows == 23
    assert left.locate(12, 22) == [(22, 25), (40, 45), (0, 2)]
    assert left.locate(0, 0) == []
