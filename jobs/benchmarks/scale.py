"""Scale figures: a set of many files on S3, 30 ms away and on loopback.

The set is written once by ``prepare_data``'s writer (``files`` files, ``rows_per_file`` rows
of 16 float32 features each; 10,000 x 2,000 = 20 million rows at the default size) to
SeaweedFS. Every figure is ours through ``infra/local/latency_proxy.py`` (30 ms a request,
100 MB/s a connection: a distant S3) over ours on loopback, so the ratio is what the distance
costs:

* ``scale_preflight_30ms_vs_loopback``: the driver's preflight (``inspect_dataset`` then
  ``check_unique_ids``) in files/s; the note gives seconds per 1,000 files both ways.
* ``scale_stream_30ms_vs_loopback``: one worker's streaming reader (``data.cache=stream``,
  shuffled row groups, ``data.read_ahead_mb`` in flight) over its shard of a job of enough
  workers that a shard is ``stream_rows`` rows, in rows/s. Goal: >= 0.8.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from jobs.benchmarks.harness import Figure, paired_samples, throughput_figure

PREFIX = "bench/scale"
SHAPE = (16,)


def prepare(files: int, rows_per_file: int, progress: Callable[[str], None]) -> float:
    """Write the set (seconds it took)."""
    from pipeline.data.datasets import synthetic_files
    from pipeline.data.prepare import write_dataset

    rows = files * rows_per_file * 10 // 8  # train gets 80%: `files` training files
    start = time.perf_counter()
    write_dataset(
        f"s3://{PREFIX}",
        synthetic_files(rows, SHAPE, 10, seed=5, rows_per_file=rows_per_file),
        rows_per_file=rows_per_file,
        row_group_size=max(1, rows_per_file // 4),
        overwrite=True,
        progress=progress,
    )
    return time.perf_counter() - start


def _preflight() -> int:
    from pipeline.data.contract import check_unique_ids, inspect_dataset

    info = inspect_dataset(f"s3://{PREFIX}")
    check_unique_ids(info)
    return sum(len(s.files) for s in info.splits.values())


def _stream(rows: int, ahead: list[int]) -> Callable[[], int]:
    """One worker's pass over its shard (the plan read once, outside the timing)."""
    from pipeline.data.contract import inspect_dataset

    info = inspect_dataset(f"s3://{PREFIX}", splits=("train",))
    split = info.splits["train"]
    world = max(1, math.ceil(split.rows / rows))

    def run() -> int:
        import mxnet as mx

        from pipeline.data.ingest import ShardReader, open_source

        source = open_source(info, "train", False)
        ahead.append(source.ahead)
        reader = ShardReader(source, split, info.num_features, 0, world, 0)
        seen = 0
        for batch in reader.batches(epoch=0, batch_size=256, shuffle_rows=2048, device=mx.cpu()):
            seen += batch.x.shape[0]
        mx.nd.waitall()
        reader.source.close()
        return seen

    return run


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def figures(files: int, rows_per_file: int, stream_rows: int, reps: int, progress) -> list[Figure]:
    from infra.local import latency_proxy

    written = prepare(files, rows_per_file, progress)
    total_files = files * 10 // 8 + 2  # train, val, test
    direct = os.environ["AWS_ENDPOINT_URL"]
    port = urlsplit(direct).port
    assert port is not None
    with latency_proxy.running(port, latency_ms=30, mbps=100) as proxy:

        def through(fn: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
                try:
                    return fn()
                finally:
                    os.environ["AWS_ENDPOINT_URL"] = direct

            return run

        pre = paired_samples(through(_preflight), _preflight, reps)
        ahead: list[int] = []
        read = _stream(stream_rows, ahead)
        proxy_cpu = _cpu_seconds(proxy.pid)
        stream = paired_samples(through(read), read, reps)
        proxy_cpu = _cpu_seconds(proxy.pid) - proxy_cpu
    # The proxy runs on the reader's cores (a real distant S3 does not): say what it took.
    proxy_share = proxy_cpu / sum(stream[0])
    per_1000 = [f"{1000 * sorted(side)[len(side) // 2] / total_files:.2f}" for side in pre]
    return [
        throughput_figure(
            "scale_preflight_30ms_vs_loopback",
            total_files,
            pre,
            "",
            "files/s",
            f"the driver's preflight (listing, manifest, one footer, the manifest's id proof) of "
            f"{total_files:,} files ({files * rows_per_file * 10 // 8:,} rows of {SHAPE[0]} "
            f"floats, written by prepare_data in {written:.0f} s): {per_1000[0]} s per 1,000 "
            f"files through the 30 ms proxy, {per_1000[1]} s on loopback",
        ),
        throughput_figure(
            "scale_stream_30ms_vs_loopback",
            stream_rows,
            stream,
            ">= 0.8",
            "rows/s",
            f"one worker's streaming reader over a shard of about {stream_rows:,} rows "
            f"(row groups of {max(1, rows_per_file // 4)} rows, shuffled, {ahead[0]} in flight, "
            "data.read_ahead_mb's default) through "
            f"the 30 ms proxy vs on loopback; the proxy itself used {proxy_share:.2f} of a core "
            "while the reader read through it (cores the reader shares here)",
        ),
    ]
