"""The input example a logged model carries: a few rows of the test split as the model takes
them (MLflow shows it, and a scoring server's docs and tests use it)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.data.contract import DatasetInfo
from pipeline.storage import resolve


def input_example(info: DatasetInfo, s3: S3Config, rows: int = 5):
    """The first ``rows`` rows of the test split: feature rows (float32, scaled), or for a
    model of the user's table columns those columns as pandas reads them."""
    if info.mapping is not None and info.mapping.encoding is not None:
        return _table_rows(info, s3, rows)
    from pipeline.data.ingest import arrow_to_batch, epoch_pieces, open_source

    source = open_source(info, "test", memory=False, s3=s3)
    try:
        table = source.read(epoch_pieces(info.splits["test"], 0, 0, shuffle=False)[0])
    finally:
        source.close()
    return arrow_to_batch(
        table.slice(0, rows), info.num_features, info.feature_scale
    ).float_features()


def _table_rows(info: DatasetInfo, s3: S3Config, rows: int):
    """The first test rows in the user's own feature columns (a pandas DataFrame): read a row
    group at a time until there are enough (a drawn test split takes some rows of each)."""
    mapping = info.mapping
    assert mapping is not None and mapping.encoding is not None
    loc = resolve(info.uri, s3)
    split = info.splits["test"]
    found: list[pa.Table] = []
    for path, groups in zip(split.files, split.row_groups, strict=True):
        with loc.filesystem.open_input_file(path) as fh:
            parquet = pq.ParquetFile(fh)
            first_row = 0
            for group, count in enumerate(groups):
                stored = parquet.metadata.row_group(group).num_rows
                if count:
                    table = parquet.read_row_group(group, columns=mapping.columns("test"))
                    where = loc.uri_of(path)
                    chosen, _ = mapping.split_rows(table, path, first_row, "test", where)
                    found.append(chosen.select(list(mapping.encoding.names)))
                    if sum(t.num_rows for t in found) >= rows:
                        return pa.concat_tables(found).slice(0, rows).to_pandas()
                first_row += stored
    return pa.concat_tables(found).slice(0, rows).to_pandas()
