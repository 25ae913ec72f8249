"""Write a data set as Parquet in the pipeline's data contract.

    python -m jobs.prepare_data --dataset digits --out data/digits
    python -m jobs.prepare_data --dataset digits --out s3://bucket/digits
    python -m jobs.prepare_data --dataset fashion-mnist --out data/fashion-mnist [--source DIR]
    python -m jobs.prepare_data --dataset synthetic --rows 20000000 --shape 16 \
        --rows-per-file 2000 --out s3://bucket/scale        # a scale set, written in parallel
    python -m jobs.prepare_data --dataset fashion-mnist --copies 100 --out s3://bucket/fm100
    python -m jobs.prepare_data --dataset clinic --out data/clinic   # a user's table, not ours

The contract (columns, types, schema metadata, layout) is described in docs/data.md and in
pipeline/data/contract.py; a user's own data must meet it too.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jobs._cli import run_main
from pipeline.data.datasets import (
    FASHION_MNIST_DIR,
    clinic_table,
    fashion_copies,
    load_digits_splits,
    load_fashion_mnist,
    synthetic_files,
)
from pipeline.data.prepare import Dataset, StreamedDataset, write_dataset, write_table_splits

DATASETS = {
    "digits": "scikit-learn's 1,797 8x8 handwritten digits (shipped offline), 10 classes",
    "fashion-mnist": "Zalando's 70,000 28x28 grey images, 10 classes, from the idx files in "
    "--source (Debian's dataset-fashion-mnist package by default); the official 10,000 test "
    "images are the test split, 5,000 of the 60,000 training images the validation split; "
    "pixels stored as uint8",
    "synthetic": "seeded synthetic classes of any size (--rows, --shape, --classes), made file"
    " by file: memory holds only the files being written, whatever --rows",
    "clinic": "not the contract: a user's own mixed table as pandas writes it (569 rows of"
    " scikit-learn's breast cancer measurements as float32/float64 columns, an int and a"
    " string column, gaps, labels benign/malignant) in train/ val/ test/, to try training on"
    " your own tables (docs/data.md, 'A mixed table')",
}
#: (rows per file, rows per row group) by data set: several files per split, and row groups
#: small enough for the shuffled order to mix them.
LAYOUT = {
    "digits": (128, 64),
    "fashion-mnist": (5000, 500),
    "synthetic": (128, 64),
    "clinic": (569, 128),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.prepare_data",
        description="Write a data set as Parquet train/val/test splits in the pipeline's data "
        "contract (see docs/data.md, 'Data contract'); _manifest.json is written last.",
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
    p.add_argument(
        "--source",
        type=Path,
        default=FASHION_MNIST_DIR,
        help="fashion-mnist: the folder holding its four idx files (.gz)",
    )
    p.add_argument("--rows", type=int, default=100_000, help="synthetic: total rows")
    p.add_argument(
        "--copies",
        type=int,
        default=1,
        help="fashion-mnist: write the training split this many times, every copy after the "
        "first shifted by up to 2 pixels and mirrored half of the time per image, with ids of "
        "its own (a real-image set of any size; val and test stay the official ones)",
    )
    p.add_argument("--shape", default="1,8,8", help="synthetic: feature shape, e.g. 1,8,8 or 64")
    p.add_argument("--classes", type=int, default=10, help="synthetic: number of classes")
    p.add_argument(
        "--rows-per-file",
        type=int,
        default=None,
        help="rows per Parquet file (each split is written as several files); default "
        + ", ".join(f"{k}: {v[0]}" for k, v in LAYOUT.items()),
    )
    p.add_argument(
        "--row-group-size",
        type=int,
        default=None,
        help="rows per Parquet row group (the unit the epochs' order shuffles); default "
        + ", ".join(f"{k}: {v[1]}" for k, v in LAYOUT.items()),
    )
    p.add_argument("--overwrite", action="store_true", help="replace what is already at --out")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the data set's default layout filled in and checked."""
    p = build_parser()
    args = p.parse_args(argv)
    files, groups = LAYOUT[args.dataset]
    args.rows_per_file = files if args.rows_per_file is None else args.rows_per_file
    args.row_group_size = groups if args.row_group_size is None else args.row_group_size
    if args.rows_per_file < 1 or args.row_group_size < 1:
        p.error("--rows-per-file and --row-group-size must be >= 1")
    try:
        args.shape = tuple(int(d) for d in args.shape.split(","))
    except ValueError:
        p.error(f"--shape must be comma-separated integers, got {args.shape!r}")
    if args.rows < 10 or args.classes < 2 or min(args.shape) < 1:
        p.error("--rows must be >= 10, --classes >= 2 and every --shape dimension >= 1")
    if not 1 <= args.copies <= 100_000:
        p.error("--copies must be between 1 and 100000")
    if args.copies > 1 and args.dataset != "fashion-mnist":
        p.error("--copies applies to --dataset fashion-mnist only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    print(f"writing {args.dataset} to {args.out}", flush=True)
    if args.dataset == "clinic":
        rows = write_table_splits(args.out, clinic_table(args.seed), overwrite=args.overwrite)
        print(
            f"done: a user's table, {', '.join(f'{s} {n}' for s, n in rows.items())} rows"
            f" -> {args.out}; train it with --set data.label_column=diagnosis --set"
            " 'data.feature_columns=*' --set data.missing=mean"
        )
        return 0
    dataset: Dataset | StreamedDataset
    if args.dataset == "synthetic":
        dataset = synthetic_files(
            args.rows, args.shape, args.classes, args.seed, rows_per_file=args.rows_per_file
        )
    elif args.dataset == "fashion-mnist" and args.copies > 1:
        dataset = fashion_copies(args.source, args.seed, args.copies, args.rows_per_file)
    elif args.dataset == "fashion-mnist":
        dataset = load_fashion_mnist(args.source, seed=args.seed)
    else:
        dataset = load_digits_splits(seed=args.seed)
    manifest = write_dataset(
        args.out,
        dataset,
        rows_per_file=args.rows_per_file,
        row_group_size=args.row_group_size,
        overwrite=args.overwrite,
        progress=lambda msg: print(msg, flush=True),
    )
    total = sum(s["rows"] for s in manifest["splits"].values())
    files = sum(len(s["files"]) for s in manifest["splits"].values())
    size = sum(f["bytes"] for s in manifest["splits"].values() for f in s["files"])
    print(
        f"done: {total:,} rows in {files:,} files ({size / 2**20:,.1f} MB), feature_shape "
        f"{dataset.feature_shape}, {dataset.num_classes} classes, "
        f"{time.perf_counter() - start:.1f}s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
