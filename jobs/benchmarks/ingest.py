"""Ingest figures: rows/s from Parquet into MXNet NDArray batches.

* ours: the worker's path with ``data.cache=stream`` (the path that scales past memory): the
  shard reader's row groups and shuffled windows, batches, ``mx.nd.array``;
* pyarrow: ``pq.read_table`` with one thread + to numpy, no batching: the decode limit;
* Ray Data: ``read_parquet().iter_batches(batch_format="numpy")`` + ``np.stack``, the way
  its docs feed a framework;
* Petastorm: cannot run with our pins (see PETASTORM_WHY).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jobs.benchmarks.harness import Figure, median_time, not_available, paired_times, ratio_figure
from pipeline.config import S3Config
from pipeline.data.contract import FEATURES, LABEL, DatasetInfo
from pipeline.storage import resolve

PETASTORM_WHY = (
    "petastorm 0.13.1 (the latest release) builds on pyarrow's legacy ParquetDataset API "
    "(ParquetDataset(validate_schema=...), dataset.pieces), removed in pyarrow 15; our pin is "
    "pyarrow 25, which mxnet/numpy 1.23.5 also constrain; it also pulls in pyspark"
)


def _train_only(info: DatasetInfo) -> DatasetInfo:
    return dataclasses.replace(info, splits={"train": info.splits["train"]})


#: For the augmented ingest figure: fashion-cnn's crop and flip, plus erasing, so every image
#: transform is in it.
AUGMENT = {"crop_padding": 2, "flip": True, "erase_prob": 0.5}


def ours(
    info: DatasetInfo, batch_size: int, s3: S3Config | None = None, augment: bool = False
) -> int:
    import mxnet as mx

    from pipeline.config import AugmentConfig
    from pipeline.data.augment import Augmenter
    from pipeline.data.ingest import ShardReader, open_source

    split = info.splits["train"]
    transform = Augmenter(AugmentConfig(**AUGMENT), info.feature_shape, 0) if augment else None
    reader = ShardReader(
        open_source(info, "train", False, s3),
        split,
        info.num_features,
        0,
        1,
        0,
        info.feature_scale,
        transform,
    )
    rows = 0
    for batch in reader.batches(epoch=0, batch_size=batch_size, shuffle_rows=2048, ctx=mx.cpu()):
        rows += batch.x.shape[0]
    mx.nd.waitall()
    reader.source.close()
    return rows


def quiet_ray_data() -> None:
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def raydata(info: DatasetInfo, batch_size: int) -> int:
    import mxnet as mx
    import ray.data

    loc = resolve(info.uri)
    ds = ray.data.read_parquet(
        list(info.splits["train"].files), filesystem=loc.filesystem, columns=[FEATURES, LABEL]
    )
    rows = 0
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
        x = mx.nd.array(np.stack(batch[FEATURES]))
        mx.nd.array(batch[LABEL])
        rows += x.shape[0]
    mx.nd.waitall()
    return rows


def pyarrow_decode(info: DatasetInfo) -> int:
    import pyarrow.parquet as pq

    loc = resolve(info.uri)
    rows = 0
    for path in info.splits["train"].files:
        table = pq.read_table(
            path, filesystem=loc.filesystem, columns=[FEATURES, LABEL], use_threads=False
        )
        feats = table.column(FEATURES).combine_chunks().flatten().to_numpy()
        labels = table.column(LABEL).to_numpy()
        rows += len(labels)
        assert feats.size == len(labels) * info.num_features
    return rows


def figures(
    local: DatasetInfo, s3_info: DatasetInfo | None, batch_size: int, reps: int
) -> tuple[list[Figure], dict]:
    rows = local.splits["train"].rows
    t_ours, t_arrow = paired_times(
        lambda: ours(local, batch_size), lambda: pyarrow_decode(local), reps
    )
    t_ray = median_time(lambda: raydata(local, batch_size), reps)
    ours_rps = rows / t_ours
    out = [
        ratio_figure(
            "ingest_vs_pyarrow",
            ours_rps,
            rows / t_arrow,
            ">= 0.8",
            "rows/s",
            f"{rows:,} rows; baseline decodes only (1 thread, no batching)",
        ),
        ratio_figure(
            "ingest_vs_raydata",
            ours_rps,
            rows / t_ray,
            ">= 1.0",
            "rows/s",
            "baseline: Ray Data iter_batches(numpy) + np.stack",
        ),
        not_available("ingest_vs_petastorm", ">= 2.0", "rows/s", PETASTORM_WHY),
    ]
    t_aug, t_plain = paired_times(
        lambda: ours(local, batch_size, augment=True), lambda: ours(local, batch_size), reps
    )
    out.append(
        ratio_figure(
            "ingest_augmented_vs_plain",
            rows / t_aug,
            rows / t_plain,
            "",
            "rows/s",
            f"the same reader with {AUGMENT} (in its read-ahead thread) vs without; reported, "
            "not judged",
        )
    )
    if s3_info is not None:
        t_s3, t_local = paired_times(
            lambda: ours(s3_info, batch_size), lambda: ours(local, batch_size), reps
        )
        # What pyarrow itself reads from the same server, for the note: SeaweedFS shares
        # the cores with the reader, so this bounds the ratio.
        t_arrow_s3 = median_time(lambda: pyarrow_decode(s3_info), reps)
        out.append(
            ratio_figure(
                "ingest_s3_vs_local",
                rows / t_s3,
                rows / t_local,
                ">= 0.8",
                "rows/s",
                "same path; SeaweedFS on loopback vs local disk; pyarrow's own decode from "
                f"this server: {rows / t_arrow_s3:,.0f} rows/s "
                f"({t_arrow / t_arrow_s3:.2f} of its local rate)",
            )
        )
    return out, {"ingest_rows_per_s": ours_rps}
