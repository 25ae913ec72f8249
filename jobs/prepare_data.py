"""Write a data set as Parquet in the pipeline's data contract.

    python -m jobs.prepare_data --dataset digits --out data/digits
    python -m jobs.prepare_data --dataset digits --out s3://bucket/digits

The contract (columns, types, schema metadata, layout) is described in README.md and in
pipeline/data/contract.py; a user's own data must meet it too.
"""

from __future__ import annotations

import argparse
import time

from jobs._cli import run_main
from pipeline.data.prepare import load_digits_splits, synthetic_splits, write_dataset

DATASETS = {
    "digits": "scikit-learn's 1,797 8x8 handwritten digits (shipped offline), 10 classes",
    "synthetic": "seeded synthetic classes of any size (--rows, --shape, --classes)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jobs.prepare_data",
        description="Write a data set as Parquet train/val/test splits in the pipeline's data "
        "contract (see README.md, 'Data contract'); _manifest.json is written last.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="digits",
        help="; ".join(f"{k}: {v}" for k, v in DATASETS.items()),
    )
    p.add_argument(
        "--out", default="data/digits", help="output folder, file:// or s3://bucket/prefix URI"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split (and of synthetic data)")
    p.add_argument("--rows", type=int, default=100_000, help="synthetic: total rows")
    p.add_argument("--shape", default="1,8,8", help="synthetic: feature shape, e.g. 1,8,8 or 64")
    p.add_argument("--classes", type=int, default=10, help="synthetic: number of classes")
    p.add_argument(
        "--rows-per-file",
        type=int,
        default=128,
        help="rows per Parquet file (each split is written as several files)",
    )
    p.add_argument("--row-group-size", type=int, default=64, help="rows per Parquet row group")
    p.add_argument("--overwrite", action="store_true", help="replace what is already at --out")
    args = p.parse_args(argv)
    if args.rows_per_file < 1 or args.row_group_size < 1:
        p.error("--rows-per-file and --row-group-size must be >= 1")
    try:
        args.shape = tuple(int(d) for d in args.shape.split(","))
    except ValueError:
        p.error(f"--shape must be comma-separated integers, got {args.shape!r}")
    if args.rows < 10 or args.classes < 2 or min(args.shape) < 1:
        p.error("--rows must be >= 10, --classes >= 2 and every --shape dimension >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    print(f"writing {args.dataset} to {args.out}", flush=True)
    if args.dataset == "synthetic":
        splits, shape, num_classes = synthetic_splits(
            args.rows, args.shape, args.classes, args.seed
        )
    else:
        splits, shape, num_classes = load_digits_splits(seed=args.seed)
    manifest = write_dataset(
        args.out,
        splits,
        shape,
        num_classes,
        rows_per_file=args.rows_per_file,
        row_group_size=args.row_group_size,
        overwrite=args.overwrite,
        source=f"{args.dataset} (seed {args.seed})",
        progress=lambda msg: print(msg, flush=True),
    )
    total = sum(s["rows"] for s in manifest["splits"].values())
    print(
        f"done: {total} rows, feature_shape {shape}, {num_classes} classes, "
        f"{time.perf_counter() - start:.1f}s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
