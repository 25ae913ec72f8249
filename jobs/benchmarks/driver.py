"""driver_preflight_s3_30ms and driver_preflight_s3_loopback: what the driver reads before
any worker starts, on many small files in S3, against what a pyarrow user would run.

Both sides learn what a data-parallel job needs from a prepared set of ``files`` files before
training: every file's rows per row group (the sharding plan's units) and that no id is in
two splits.

* ours: ``inspect_dataset`` (footers, 32 requests in flight, the manifest matched) and
  ``check_unique_ids`` (the manifest's proof trusted: no id column read).
* the baseline: ``pyarrow.dataset`` over the same prefix with pyarrow's I/O pool raised to 32
  threads (its default here is 8): every fragment's row groups from its footer, then the
  ``id`` column of the whole set read (pyarrow's own concurrent scan) and checked unique
  with NumPy.

Through ``infra/local/latency_proxy.py`` at 30 ms a request (what a distant S3 costs) and on
loopback SeaweedFS. The ratio is files per second, ours over the baseline's.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import numpy as np

from jobs.benchmarks.harness import Figure, paired_samples, throughput_figure

ROWS_PER_FILE = 250
PREFIX = "bench/driver-set"


def _prepare(files: int) -> None:
    from pipeline.data.datasets import synthetic_splits
    from pipeline.data.prepare import write_dataset

    dataset = synthetic_splits(files * ROWS_PER_FILE, (16,), 4, seed=3)
    write_dataset(
        f"s3://{PREFIX}", dataset, rows_per_file=ROWS_PER_FILE, row_group_size=ROWS_PER_FILE,
        overwrite=True,
    )  # fmt: skip


def _ours() -> int:
    from pipeline.data.contract import check_unique_ids, inspect_dataset

    info = inspect_dataset(f"s3://{PREFIX}")
    check_unique_ids(info)
    return sum(len(s.files) for s in info.splits.values())


def _pyarrow() -> int:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=os.environ["AWS_ENDPOINT_URL"], scheme="http", region="us-east-1"
    )
    threads = pa.io_thread_count()
    pa.set_io_thread_count(32)
    try:
        dataset = ds.dataset(PREFIX, filesystem=fs, format="parquet")
        fragments = list(dataset.get_fragments())
        for fragment in fragments:
            fragment.ensure_complete_metadata()
            _ = [rg.num_rows for rg in fragment.row_groups]
        ids = dataset.to_table(columns=["id"]).column("id").to_numpy()
        if len(np.unique(ids)) != len(ids):
            raise AssertionError("repeated ids in the bench set")
        return len(fragments)
    finally:
        pa.set_io_thread_count(threads)


def preflight_figures(files: int, reps: int) -> list[Figure]:
    """The two figures: through a 30 ms proxy, and on loopback."""
    from infra.local import latency_proxy

    _prepare(files)
    direct = os.environ["AWS_ENDPOINT_URL"]
    figures = []
    port = urlsplit(direct).port
    assert port is not None
    with latency_proxy.running(port, latency_ms=30, mbps=100) as proxy:
        for name, endpoint, where in (
            ("driver_preflight_s3_30ms", proxy.endpoint, "SeaweedFS behind a 30 ms proxy"),
            ("driver_preflight_s3_loopback", direct, "SeaweedFS on loopback"),
        ):
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            try:
                samples = paired_samples(_ours, _pyarrow, reps)
            finally:
                os.environ["AWS_ENDPOINT_URL"] = direct
            figures.append(
                throughput_figure(
                    name,
                    files,
                    samples,
                    ">= 1.0",
                    "files/s",
                    f"{files} files of {ROWS_PER_FILE} rows, {where}: ours (footers 32 at a "
                    "time, the manifest's id proof) vs pyarrow.dataset with 32 I/O threads "
                    "(footers, then the id column read and checked unique)",
                )
            )
    return figures
