"""The id check in bounded memory: past its limit the ids go to disk in partitions by hash,
and a repeat is still found, named by its files."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.unique_ids import UniqueIds, first_repeat


def _files(rng, n_files=40, rows=500) -> list[np.ndarray]:
    every = rng.permutation(n_files * rows * 3)[: n_files * rows]  # unique, unordered
    return np.split(every.astype(np.int64), n_files)


@pytest.mark.parametrize("memory_mb", [256, 0.01])  # all in memory; spilled (about 870 ids)
def test_unique_ids_pass_and_a_repeat_is_named_by_its_two_files(memory_mb):
    rng = np.random.default_rng(0)
    files = _files(rng)
    with UniqueIds(memory_mb) as seen:
        for owner, ids in enumerate(files):
            seen.add(ids, owner)
        assert seen.first_repeat() is None
        assert seen.spilled == (memory_mb < 1)
    files[31] = files[31].copy()
    files[31][7] = files[4][123]  # one id twice
    files[35] = files[35].copy()
    files[35][:3] = files[2][:3]  # three more
    with UniqueIds(memory_mb) as seen:
        for owner, ids in enumerate(files):
            seen.add(ids, owner)
        value, first, second, total = seen.first_repeat()
    assert total == 4
    assert (value, {first, second}) in [
        (int(files[4][123]), {4, 31}),
        *((int(files[2][i]), {2, 35}) for i in range(3)),
    ]
    assert first_repeat(files)[3] == 4  # the in-memory answer agrees


def test_spill_files_are_removed_when_closed(tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    seen = UniqueIds(0.01, spill_dir=str(spill))
    seen.add(np.arange(10_000), 0)
    assert seen.spilled and any(spill.iterdir())
    seen.close()
    assert not any(spill.iterdir())


def test_memory_stays_within_the_setting_whatever_the_number_of_ids():
    import tracemalloc

    tracemalloc.start()
    try:
        with UniqueIds(16) as seen:  # 5 million ids: 40 MB as int64 alone
            for f in range(2000):
                seen.add(np.arange(f * 2500, (f + 1) * 2500) * 7, f)
            seen.add(np.array([7 * 1234567]), 2000)  # one repeat, in file 493
            value, first, second, total = seen.first_repeat()
            assert seen.spilled
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (value, {first, second}, total) == (7 * 1234567, {493, 2000}, 1)
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MB for a 16 MB setting"
