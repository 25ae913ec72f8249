"""Score Parquet with a registered model: Ray Data streams the files through a pool of
actors that each load the model's MLflow pyfunc once.

    python -m jobs.predict --model models:/digits-cnn@candidate --data data/digits/test \\
        --out runs/predictions/digits-test
    make predict MODEL=models:/digits-cnn@candidate DATA=data/digits/test OUT=runs/predictions/x

The output folder gets Parquet parts and, last, _manifest.json; the job is recorded as an
MLflow run in the experiment ``mxtrain-predict``.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import run_main
from pipeline.predict.batch import PredictRequest, predict


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.predict",
        description="Score Parquet files (a folder or s3:// prefix) with a registered model "
        "and write the predictions as Parquet: id, the true label when the data has one, "
        "prediction (class index), prediction_name (when the classes have names) and "
        "probabilities (one per class). A generator model (the GAN) reads a 'label' column "
        "and writes one generated image per row (features).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The data is read as the model was trained: the contract's columns (id, "
        "features[, label]; a split folder of a prepared set such as data/digits/test), or, "
        "for a model trained on your own Parquet, the columns its run's data.* keys name. "
        "Labels are optional; with labels the summary gives the accuracy.\n\n"
        "The output folder must be new or empty (--overwrite replaces an earlier result). "
        "Its _manifest.json is written last: without it the result is incomplete.\n\n"
        "environment:\n"
        "  MLFLOW_TRACKING_URI   the registry (default sqlite:///<repo>/mlflow.db)\n"
        "  RAY_ADDRESS           score on this Ray cluster instead of a local Ray\n"
        "  AWS_*                 credentials and endpoint for s3:// data and output\n",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="URI",
        help="models:/<name>@<alias> or models:/<name>/<version>",
    )
    p.add_argument(
        "--data", required=True, metavar="URI", help="Parquet to score: folder, file:// or s3://"
    )
    p.add_argument(
        "--out", required=True, metavar="URI", help="output folder (or s3:// prefix), new or empty"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result at --out")
    p.add_argument(
        "--actors", type=int, default=2, metavar="N", help="model actors (default: %(default)s)"
    )
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        default=1.0,
        metavar="C",
        help="Ray CPUs (and compute threads) per actor (default: %(default)s)",
    )
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.0,
        metavar="G",
        help="Ray GPUs per actor; the model then runs on the actor's GPU (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1024,
        metavar="N",
        help="rows per call of the model (default: %(default)s)",
    )
    p.add_argument(
        "--buffer-mb",
        type=int,
        default=512,
        metavar="MB",
        help="object store memory the job holds in flight, rows read and not yet scored or "
        "written; bounds its memory whatever the data's size (default: %(default)s)",
    )
    p.add_argument(
        "--id-column",
        metavar="NAME",
        help="the scoring data's id column (default: the one the model was trained with; "
        "'' numbers rows by file and position)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="noise seed of a generator model (default: 0)"
    )
    p.add_argument(
        "--experiment",
        default="mxtrain-predict",
        help="MLflow experiment of the scoring run (default: %(default)s)",
    )
    p.add_argument(
        "--no-track", action="store_true", help="record no MLflow run (the registry is still read)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = PredictRequest(
        model=args.model,
        data=args.data,
        out=args.out,
        overwrite=args.overwrite,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        batch_size=args.batch_size,
        buffer_mb=args.buffer_mb,
        id_column=args.id_column,
        seed=args.seed,
        experiment=args.experiment,
        track=not args.no_track,
    )
    summary = predict(request, progress=lambda msg: print(msg, flush=True))
    for line in summary.lines():
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
