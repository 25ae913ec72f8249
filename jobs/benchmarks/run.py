"""``make bench``: every performance figure as a ratio of two measurements from this run.

    python -m jobs.benchmarks.run                 # default sizes (about 25 minutes here)
    python -m jobs.benchmarks.run --size tiny     # seconds per figure: the smoke test's size

Writes .bench/results.json (the machine, and a list of {name, value, baseline, ratio, target,
unit, note}) and prints the table; ``python -m jobs.benchmarks.report`` puts it in README.md.
Run with one compute thread per process (the Makefile sets OMP_NUM_THREADS=1 and
MXNET_CPU_WORKER_NTHREADS=1) so 2 workers fit 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from jobs.benchmarks.harness import Figure, table, write

SIZES = {
    "tiny": {
        "ingest_rows": 20_000,
        "steps": 10,
        "batch": 64,
        "reps": 1,
        "allreduce": [1024, 65536, 2**20],
        "scaling_rows": 4_000,
        "scaling_epochs": 2,
        "rss_rows": 4_000,
        "job_epochs": 1,
        "stall_every": 10,
    },
    "default": {
        "ingest_rows": 400_000,
        "steps": 100,
        "batch": 64,
        "reps": 3,
        "allreduce": [1024, 16384, 262144, 4 * 2**20, 64 * 2**20],
        "scaling_rows": 40_000,
        "scaling_epochs": 3,
        "rss_rows": 50_000,
        "job_epochs": 2,
        "stall_every": 20,
    },
}


def _prepare(uri: str, rows: int, rows_per_file: int) -> None:
    from pipeline.data.datasets import synthetic_splits
    from pipeline.data.prepare import write_dataset

    write_dataset(
        uri,
        synthetic_splits(rows, (1, 8, 8), 10, seed=0),
        rows_per_file=rows_per_file,
        row_group_size=min(8192, rows_per_file),
        overwrite=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", choices=sorted(SIZES), default="default")
    p.add_argument("--out", type=Path, default=Path(".bench/results.json"))
    args = p.parse_args(argv)
    size = SIZES[args.size]
    logging.basicConfig(level=logging.WARNING)
    figures: list[Figure] = []
    started = time.perf_counter()

    from infra.local.seaweedfs import local_credentials, start

    with tempfile.TemporaryDirectory(prefix="mxtrain-bench-") as tmp_name:
        tmp = Path(tmp_name)
        rows = size["ingest_rows"]
        local_uri = str(tmp / "ingest")
        per_file = max(1000, rows // 8)
        _prepare(local_uri, rows, per_file)

        server = start(tmp / "seaweedfs", bucket="bench")
        access, secret = local_credentials()
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": access,
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_ENDPOINT_URL": server.endpoint,
                "AWS_REGION": "us-east-1",
            }
        )
        try:
            _prepare("s3://bench/ingest", rows, per_file)
            figures += _ingest(local_uri, "s3://bench/ingest", size)
            figures += _training(size, tmp)
            figures += _memory(size, tmp)
        finally:
            server.stop()

    seconds = time.perf_counter() - started
    write(figures, args.out, args.size, seconds)
    print(table(figures))
    print(f"\n{len(figures)} figures in {seconds:.0f}s -> {args.out}")
    print("put them in README.md's Performance table: python -m jobs.benchmarks.report")
    return 0


def _progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _ingest(local_uri: str, s3_uri: str, size: dict) -> list[Figure]:
    import ray

    from jobs.benchmarks import ingest
    from pipeline.data.contract import inspect_dataset

    _progress("ingest: ours vs pyarrow vs Ray Data, local and S3")
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    try:
        ingest.quiet_ray_data()
        local = inspect_dataset(local_uri, splits=("train",))
        remote = inspect_dataset(s3_uri, splits=("train",))
        out, _ = ingest.figures(local, remote, size["batch"], size["reps"])
    finally:
        ray.shutdown()
    return out


def _training(size: dict, tmp: Path) -> list[Figure]:
    from jobs.benchmarks import comm, train_step, whole_jobs

    _progress("training loop: step overhead")
    out, extra = train_step.figures(size["steps"], size["batch"], size["reps"])
    _progress("allreduce bandwidth (horovodrun -np 2 --gloo)")
    bw, seconds = comm.allreduce_figures(size["allreduce"], max(5, size["reps"]))
    out += bw
    uri = str(tmp / "scaling")
    _prepare(uri, size["scaling_rows"], max(1000, size["scaling_rows"] // 4))
    _progress("scaling efficiency (horovodrun, 1 vs 2 ranks)")
    fig, _ = comm.scaling_figure(
        uri, "digits-cnn", size["scaling_epochs"], size["batch"], 4 * extra["params_cnn"], seconds
    )
    out.append(fig)
    _progress("start-up: jobs.train on Ray vs horovodrun")
    out.append(comm.startup_figure(uri, "digits-cnn", tmp))
    _progress("checkpoint stall: jobs with and without mid-epoch checkpoints")
    epochs = size["job_epochs"]
    out.append(
        whole_jobs.checkpoint_stall_figure(
            uri, "digits-cnn", epochs, size["stall_every"], size["reps"], tmp
        )
    )
    _progress("tracking overhead: jobs with and without MLflow")
    out.append(whole_jobs.tracking_overhead_figure(uri, "digits-cnn", epochs, size["reps"], tmp))
    return out


def _memory(size: dict, tmp: Path) -> list[Figure]:
    from jobs.benchmarks import memory

    _progress("rss growth: streaming 1x vs 8x from S3")
    rows = size["rss_rows"]
    _prepare("s3://bench/rss-1x", rows, max(1000, rows // 4))
    _prepare("s3://bench/rss-8x", 8 * rows, max(1000, rows // 4))
    return [memory.rss_figure("s3://bench/rss-1x", "s3://bench/rss-8x", rows, tmp, "SeaweedFS")]


if __name__ == "__main__":
    sys.exit(main())
