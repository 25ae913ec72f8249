"""Ingest figures: rows/s from Parquet into MXNet NDArray batches.

* ours: the worker's path with ``data.cache=stream`` (the path that scales past memory): the
  shard reader's row groups and shuffled windows, batches, ``mx.nd.array``;
* pyarrow: ``pq.read_table`` with its own thread pool (as many threads as cores) + to numpy,
  no batching, no shuffling: the decode limit;
* Ray Data as a competent user runs it: one dataset reused for every epoch, Ray started with
  as many CPUs as the machine has, ``iter_batches`` of a whole window in pyarrow format,
  flattened to numpy without a per-row ``np.stack``, one device copy per window and batches
  sliced from it on the device (the copy our reader makes), no shuffling (ours shuffles);
* Petastorm in its own virtualenv (petastorm_worker.py): ``make_batch_reader`` with as many
  reader threads as cores, one device copy per row group. Petastorm 0.13.1 drops
  fixed_size_list columns (our contract's features) from the schema it infers, so its side
  reads a copy of the same rows with features as list<float32>, the type it supports.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from jobs.benchmarks import harness
from jobs.benchmarks.harness import (
    Figure,
    not_available,
    paired_samples,
    throughput_figure,
)
from jobs.benchmarks.procs import REPO, json_line
from pipeline.config import S3Config
from pipeline.data.contract import FEATURES, LABEL, DatasetInfo
from pipeline.storage import resolve

#: The interpreter of Petastorm's own virtualenv (``make petastorm-venv``, which ``make bench``
#: runs): petastorm 0.13.1 needs pyarrow < 15, this project pins pyarrow 25.
PETASTORM_PYTHON = REPO / ".bench" / "petastorm-venv" / "bin" / "python"


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
    for batch in reader.batches(epoch=0, batch_size=batch_size, shuffle_rows=2048, device=mx.cpu()):
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


#: Rows per device copy in the Ray Data baseline: the window our reader copies at batch 64
#: with shuffle_rows=2048 (``ShardReader.batches`` rounds windows up to 4,096 rows).
WINDOW = 4096


def raydata_dataset(info: DatasetInfo):
    """The Ray Data side's dataset, made once and iterated every epoch."""
    import ray.data

    loc = resolve(info.uri)
    return ray.data.read_parquet(
        list(info.splits["train"].files), filesystem=loc.filesystem, columns=[FEATURES, LABEL]
    )


def raydata(ds, num_features: int, batch_size: int) -> int:
    import mxnet as mx

    rows = 0
    for window in ds.iter_batches(batch_size=WINDOW, batch_format="pyarrow", prefetch_batches=2):
        column = window.column(FEATURES).combine_chunks()
        feats = column.flatten().to_numpy().reshape(-1, num_features)
        x = mx.nd.array(feats)
        y = mx.nd.array(window.column(LABEL).to_numpy())
        for lo in range(0, len(feats), batch_size):
            b = x[lo : lo + batch_size]
            y[lo : lo + batch_size]
            rows += b.shape[0]
    mx.nd.waitall()
    return rows


def pyarrow_decode(info: DatasetInfo) -> int:
    import pyarrow.parquet as pq

    loc = resolve(info.uri)
    rows = 0
    for path in info.splits["train"].files:
        table = pq.read_table(
            path, filesystem=loc.filesystem, columns=[FEATURES, LABEL], use_threads=True
        )
        feats = table.column(FEATURES).combine_chunks().flatten().to_numpy()
        labels = table.column(LABEL).to_numpy()
        rows += len(labels)
        assert feats.size == len(labels) * info.num_features
    return rows


def _list_copy(info: DatasetInfo, out: Path) -> Path:
    """The train split's files with features as list<float32> (what Petastorm reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(info.splits["train"].files):
        table = pq.read_table(path)
        column = table.column(FEATURES).cast(pa.list_(pa.float32()))
        table = table.set_column(table.schema.get_field_index(FEATURES), FEATURES, column)
        meta = pq.ParquetFile(path).metadata
        pq.write_table(
            table, out / f"part-{i:05d}.parquet", row_group_size=meta.row_group(0).num_rows
        )
    return out


def _petastorm_epoch(url: str, batch_size: int) -> float:
    """Seconds of one measured Petastorm epoch, as its worker timed it."""
    proc = subprocess.run(
        [str(PETASTORM_PYTHON), str(REPO / "jobs/benchmarks/petastorm_worker.py"), url,
         str(batch_size)],
        capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?")
    return json_line(proc.stdout, "PETASTORM ")["seconds"]


def petastorm_figure(local: DatasetInfo, batch_size: int, reps: int, ours_note: str) -> Figure:
    name, target, unit = "ingest_vs_petastorm", ">= 2.0", "rows/s"
    if not PETASTORM_PYTHON.exists():
        return not_available(
            name, target, unit, f"no {PETASTORM_PYTHON.parent.parent}: make petastorm-venv"
        )
    rows = local.splits["train"].rows
    with tempfile.TemporaryDirectory(prefix="petastorm-") as tmp:
        url = _list_copy(local, Path(tmp, "train")).as_uri()
        times: tuple[list[float], list[float]] = ([], [])
        try:
            for rep in range(reps):
                for side in (0, 1) if rep % 2 == 0 else (1, 0):
                    if side == 1:
                        times[1].append(_petastorm_epoch(url, batch_size))
                        continue
                    if rep == 0:
                        ours(local, batch_size)  # the warm-up Petastorm's worker also has
                    start = time.perf_counter()
                    ours(local, batch_size)
                    time.sleep(harness.HANDICAP)
                    times[0].append(time.perf_counter() - start)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return not_available(name, target, unit, f"petastorm failed: {exc}")
    return throughput_figure(
        name,
        rows,
        times,
        target,
        unit,
        f"{ours_note}; baseline: petastorm 0.13.1 make_batch_reader, {os.cpu_count()} reader "
        "threads, shuffled row groups, one device copy per row group, reading a copy with "
        "features as list<float32> (it drops fixed_size_list columns)",
    )


def figures(
    local: DatasetInfo, s3_info: DatasetInfo | None, batch_size: int, reps: int
) -> list[Figure]:
    import os

    import pyarrow as pa

    rows = local.splits["train"].rows
    cores = os.cpu_count() or 1
    pa.set_cpu_count(cores)
    arrow = paired_samples(lambda: ours(local, batch_size), lambda: pyarrow_decode(local), reps)
    ds = raydata_dataset(local)
    ray = paired_samples(
        lambda: ours(local, batch_size), lambda: raydata(ds, local.num_features, batch_size), reps
    )
    ours_threads = "ours: 2 row-group reader threads + 1 read-ahead thread, batches of "
    ours_threads += f"{batch_size} from shuffled windows"
    out = [
        throughput_figure(
            "ingest_vs_pyarrow",
            rows,
            arrow,
            ">= 0.8",
            "rows/s",
            f"{rows:,} rows from local disk; {ours_threads}; baseline: pq.read_table with "
            f"pyarrow's pool of {cores} threads + to numpy (decode only)",
        ),
        throughput_figure(
            "ingest_vs_raydata",
            rows,
            ray,
            ">= 1.0",
            "rows/s",
            f"{ours_threads}; baseline: one Ray Data dataset reused, Ray with {cores} CPUs, "
            f"iter_batches of {WINDOW} rows as pyarrow -> numpy, one device copy per window, "
            "no shuffle",
        ),
        petastorm_figure(local, batch_size, reps, ours_threads),
    ]
    aug = paired_samples(
        lambda: ours(local, batch_size, augment=True), lambda: ours(local, batch_size), reps
    )
    out.append(
        throughput_figure(
            "ingest_augmented_vs_plain",
            rows,
            aug,
            "",
            "rows/s",
            f"the same reader with {AUGMENT} (in its read-ahead thread) vs without; reported, "
            "not judged",
        )
    )
    if s3_info is not None:
        s3 = paired_samples(
            lambda: ours(s3_info, batch_size), lambda: ours(local, batch_size), reps
        )
        # What pyarrow itself reads from the same server, for the note: SeaweedFS shares
        # the cores with the reader, so this bounds the ratio.
        arrow_s3 = paired_samples(
            lambda: pyarrow_decode(s3_info), lambda: pyarrow_decode(local), reps
        )
        bound = throughput_figure("pyarrow_s3_vs_local", rows, arrow_s3, "", "rows/s", "")
        out.append(
            throughput_figure(
                "ingest_s3_vs_local",
                rows,
                s3,
                ">= 0.8",
                "rows/s",
                "same path; SeaweedFS on loopback vs local disk; pyarrow's own decode from "
                f"this server: {bound.value:,.0f} rows/s ({bound.ratio:.2f} of its local rate)",
            )
        )
    return out
