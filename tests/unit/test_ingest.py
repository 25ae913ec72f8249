from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.data.contract import make_schema
from pipeline.data.ingest import (
    PAD_LABEL,
    _read_cached,
    arrow_to_batch,
    padding_rows,
    steps_per_epoch,
)
from pipeline.data.prepare import Split, _table


def test_padding_makes_totals_divisible():
    assert [padding_rows(n, 2) for n in (10, 11)] == [0, 1]
    assert padding_rows(1439, 4) == 1
    for total in range(1, 40):
        for world in (1, 2, 3, 5):
            assert (total + padding_rows(total, world)) % world == 0
            assert padding_rows(total, world) < world


def test_steps_per_epoch_counts_the_partial_batch():
    assert steps_per_epoch(1439, 2, 32) == 23  # 720 rows per rank
    assert steps_per_epoch(64, 2, 32) == 1
    assert steps_per_epoch(65, 2, 32) == 2


def _table_of(n: int) -> pa.Table:
    feats = np.arange(n * 4, dtype=np.float32).reshape(n, 1, 2, 2)
    return _table(Split(feats, np.arange(n) % 3, np.arange(n) + 100), make_schema((1, 2, 2), 3))


def test_arrow_to_batch_respects_slices():
    table = _table_of(10).slice(3, 4)
    batch = arrow_to_batch(table, 4)
    assert batch.features.shape == (4, 4) and batch.features.dtype == np.float32
    np.testing.assert_array_equal(batch.features[0], [12, 13, 14, 15])
    np.testing.assert_array_equal(batch.ids, [103, 104, 105, 106])


def test_arrow_to_batch_combines_chunks():
    table = pa.concat_tables([_table_of(3), _table_of(2)])
    batch = arrow_to_batch(table, 4)
    assert batch.features.shape == (5, 4)
    np.testing.assert_array_equal(batch.features[3], [0, 1, 2, 3])


def test_cached_read_pads_with_masked_rows(tmp_path):
    import pyarrow.parquet as pq

    paths = []
    for i, n in enumerate((3, 4)):
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(_table_of(n), path)
        paths.append(str(path))
    tables = _read_cached(tuple(paths), None, world_size=4)
    batch = arrow_to_batch(pa.concat_tables(tables), 4)
    assert len(batch.labels) == 8  # 7 rows + 1 padding row
    assert batch.num_real == 7
    assert list(batch.labels).count(PAD_LABEL) == 1
    assert batch.mask.sum() == 7
