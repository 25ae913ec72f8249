"""Check Parquet written elsewhere against the data contract and write its _manifest.json.

    python -m jobs.write_manifest data/my-set
    python -m jobs.write_manifest s3://bucket/my-set --overwrite

Training requires the manifest for sets in the contract's layout (``data.require_manifest``):
it proves the set is whole and lets the workers check every file's SHA-256. (Parquet read
through the column keys, ``data.label_column``, needs none and is not certified by this.)
This command reads every file once, checks every row (ids unique across splits, labels in
range, no null or non-finite feature), and writes the manifest only if all of it passes.
"""

from __future__ import annotations

import argparse
import time

from jobs._cli import run_main
from pipeline.data.manifest import certify


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.write_manifest",
        description="Check a data set in the pipeline's Parquet layout (train/, val/, test/; see "
        "docs/data.md, 'Data contract') row by row and write its _manifest.json (files, rows, "
        "bytes, SHA-256). S3 endpoint and credentials come from the standard AWS variables.",
    )
    p.add_argument("uri", help="the data set: a folder, file:// or s3://bucket/prefix URI")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a manifest that is already there"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    print(f"checking {args.uri}", flush=True)
    manifest = certify(args.uri, overwrite=args.overwrite, progress=lambda m: print(m, flush=True))
    total = sum(s["rows"] for s in manifest["splits"].values())
    files = sum(len(s["files"]) for s in manifest["splits"].values())
    print(
        f"done: {total} rows in {files} files meet the contract; wrote {args.uri}/_manifest.json "
        f"({time.perf_counter() - start:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
