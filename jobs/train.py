"""Train a recipe with N Horovod workers on Ray; track and register it in MLflow.

    python -m jobs.train --recipe digits-cnn --workers 2
    python -m jobs.train --recipe digits-cnn --set optim.epochs=30 --set data.batch_size=64

Without RAY_ADDRESS a local Ray is started and ended; with it, the job runs on that cluster.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import run_main
from pipeline.config import JobConfig, describe_options, load_job_config
from pipeline.errors import ConfigError
from pipeline.redact import redact


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description="Train a recipe (jobs/recipes/NAME.toml) on Parquet data with Horovod "
        "workers on Ray; MLflow records the run and registers the model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configuration keys (recipe file sections, or --set section.key=value):\n"
        + describe_options()
        + "\n\nenvironment:\n"
        "  RAY_ADDRESS           run on this Ray cluster instead of a local Ray\n"
        "  MLFLOW_TRACKING_URI   tracking store when tracking.uri is empty "
        "(default sqlite:///<repo>/mlflow.db)\n"
        "  MXTRAIN_TRACE_DIR     write per-rank sharding traces there (debugging)\n",
    )
    p.add_argument(
        "--recipe",
        default="digits-cnn",
        help="recipe name in jobs/recipes/ or a path to a .toml file (default: %(default)s)",
    )
    p.add_argument("--data", help="data URI (folder, file:// or s3://); sets data.uri")
    p.add_argument(
        "--workers",
        metavar="N|MIN-MAX",
        help="Horovod workers: N sets scaling.num_workers; MIN-MAX trains elastically with as "
        "many as the cluster has slots for (scaling.min_workers, scaling.num_workers)",
    )
    p.add_argument(
        "--storage", help="run outputs and checkpoints (folder or s3://); sets storage.path"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue an interrupted job (its driver was killed) under its MLflow run, from "
        "its newest valid checkpoint; give the same recipe and --set values",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (for your own Parquet also what was derived from "
        "it: splits, feature shape, classes) and exit without training",
    )
    return p


def parse_workers(text: str) -> dict[str, int]:
    """``--workers``/``WORKERS``: ``N`` or ``MIN-MAX``."""
    low, sep, high = text.partition("-")
    try:
        if not sep:
            return {"scaling.num_workers": int(text), "scaling.min_workers": 0}
        return {"scaling.min_workers": int(low), "scaling.num_workers": int(high)}
    except ValueError:
        raise ConfigError(
            f"--workers {text!r}: expected a number (2) or a range MIN-MAX (2-4)"
        ) from None


def config_from_args(args: argparse.Namespace) -> JobConfig:
    extra = {}
    if args.data is not None:
        extra["data.uri"] = args.data
    if args.workers is not None:
        extra.update(parse_workers(args.workers))
    if args.storage is not None:
        extra["storage.path"] = args.storage
    return load_job_config(args.recipe, args.overrides, extra)


SUMMARY_METRICS = (
    "test_accuracy",
    "generated_accuracy",
    "val_accuracy",
    "val_generated_accuracy",
    "train_loss",
)


def print_summary(result) -> None:
    m = result.metrics
    lines = [
        "",
        f"run {result.run_id} FINISHED in {result.seconds:.0f}s",
        "  "
        + "  ".join(f"{k} {m[k]:.4f}" for k in SUMMARY_METRICS if k in m)
        + (f"  samples_per_sec {m['samples_per_sec']:,.0f}" if "samples_per_sec" in m else ""),
    ]
    reg = result.registration
    if reg is not None and reg.promoted:
        lines.append(
            f"  registered {reg.name} version {reg.version} (alias @{result.alias}; gate: "
            f"{reg.verdict}): models:/{reg.name}@{result.alias}"
        )
    elif reg is not None:
        lines.append(
            f"  registered {reg.name} version {reg.version} WITHOUT alias @{result.alias}: "
            f"below the recipe's bar ({reg.verdict}); models:/{reg.name}/{reg.version}"
        )
    if not result.tracking_uri:
        lines.append("  tracking off (tracking.enabled=false): nothing was recorded in MLflow")
    else:
        lines.append(f"  tracking {redact(result.tracking_uri)}, experiment {result.experiment!r}")
        lines.append("  open the UI: make mlflow-ui  ->  http://127.0.0.1:5000")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.print_config:
        for key, value in cfg.to_dict().items():
            print(redact(f"{key} = {value!r}"))
        if cfg.data.own_parquet:  # what the column keys make of the user's files
            from pipeline.preflight import describe_data, inspect_data

            sys.stdout.flush()  # the config first, should the data be refused
            print("\n".join(describe_data(cfg, inspect_data(cfg))))
        return 0
    from pipeline.launch import run_job

    result = run_job(
        cfg,
        progress=lambda msg: print(msg, flush=True),
        resume=args.resume,
        driver_ends_with_job=True,  # this process ends with the job: see run_job
    )
    print_summary(result)
    if cfg.compress.wanted:
        make_variants(cfg, result)
    return 0


def make_variants(cfg: JobConfig, result) -> None:
    """The recipe's [compress] section: smaller variants of the model just registered."""
    reg = result.registration
    if reg is None or not reg.promoted:
        print("\ncompress: skipped, the model did not pass its gate", flush=True)
        return
    from jobs.compress import format_table
    from pipeline.compress.job import CompressRequest, compress

    print(f"\ncompress: variants of {reg.name} version {reg.version}", flush=True)
    rows = compress(
        CompressRequest(
            model=f"models:/{reg.name}/{reg.version}",
            prune=cfg.compress.prune or None,
            quantize=cfg.compress.quantize,
            exclude=cfg.compress.exclude,
            finetune_epochs=cfg.compress.finetune_epochs,
            max_drop=cfg.compress.max_drop,
            storage=cfg.storage.resolved_path(),
            tracking_uri=result.tracking_uri,
        ),
        progress=lambda msg: print(msg, flush=True),
    )
    print("\n" + format_table(rows), flush=True)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
