"""Smaller variants of a registered classifier: pruned and INT8, measured and registered.

    python -m jobs.compress --model models:/fashion-cnn@candidate --prune 0.8 --quantize int8
    make compress MODEL=models:/fashion-cnn@candidate

The source model's run says what data and settings it was trained with; every variant is
measured against the float32 model on that run's test split, in this process, and
registered as a new version of the same model with the alias ``pruned`` or ``int8``.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import run_main
from pipeline.compress.job import CompressRequest, Row, compress
from pipeline.compress.quantize import CALIBRATION_ROWS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.compress",
        description="Make smaller variants of a registered classifier (magnitude-pruned and "
        "fine-tuned; INT8-quantized), measure each against the float32 model (size, CPU "
        "latency, test accuracy) and register them beside it in MLflow.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The pruned variant is fine-tuned by an ordinary training job (Ray, Horovod "
        "workers; the cluster of RAY_ADDRESS if set) starting from the pruned weights with "
        "the zeros held. Its weights are stored gzip-compressed: MXNet's dense kernels do "
        "not run faster on zeros, so it is smaller to store and ship, not faster.\n\n"
        "environment:\n"
        "  MLFLOW_TRACKING_URI   the registry (default sqlite:///<repo>/mlflow.db)\n"
        "  RAY_ADDRESS           fine-tune on this Ray cluster instead of a local Ray\n",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="URI",
        help="the source: models:/<name>@<alias> or models:/<name>/<version>",
    )
    p.add_argument(
        "--prune",
        type=float,
        metavar="SPARSITY",
        help="make a pruned variant with this share of conv/dense weights zeroed (0.8 = 80%%)",
    )
    p.add_argument(
        "--quantize", choices=("int8",), default="", help="make an INT8 variant (oneDNN, CPU)"
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="keep layers whose name contains PATTERN in float32 in the INT8 variant "
        "(repeatable; e.g. conv0 for the first convolution)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=3,
        metavar="N",
        help="epochs of fine-tuning after pruning (default: %(default)s)",
    )
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=0.0,
        metavar="LR",
        help="base learning rate of the fine-tuning (default: a tenth of the source run's)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="workers of the fine-tuning job (default: as many as the source run had)",
    )
    p.add_argument(
        "--calibration-rows",
        type=int,
        default=CALIBRATION_ROWS,
        metavar="N",
        help="training rows the INT8 ranges are calibrated on (default: %(default)s)",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        metavar="D",
        help="a variant whose test accuracy is lower than the float32 model's by more than D "
        "is registered without its alias (default: %(default)s)",
    )
    p.add_argument(
        "--storage",
        metavar="URI",
        help="where the fine-tuning's checkpoints go (default: the source run's storage.path)",
    )
    return p


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'variant':<9} {'weights':>11} {'size':>6} {'non-zero':>10} {'b1 ms':>7} "
        f"{'b64 ms':>7} {'b64 x':>6} {'accuracy':>8} {'delta':>8}  registered"
    )
    base = rows[0].size_bytes
    lines = [head]
    for r in rows:
        if r.variant == "float32":
            where = f"version {r.version} (source)"
        else:
            alias = f"@{r.variant}" if r.promoted else "no alias: accuracy below --max-drop"
            where = f"version {r.version} {alias}"
        lines.append(
            f"{r.variant:<9} {r.size_bytes:>11,} {r.size_bytes / base:>5.2f}x {r.nonzero:>10,} "
            f"{r.latency_b1_s * 1e3:>7.2f} {r.latency_b64_s * 1e3:>7.2f} {r.ratio_b64:>5.2f}x "
            f"{r.accuracy:>8.4f} {r.delta:>+8.4f}  {where}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = CompressRequest(
        model=args.model,
        prune=args.prune,
        quantize=args.quantize,
        exclude=tuple(args.exclude),
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        workers=args.workers,
        calibration_rows=args.calibration_rows,
        max_drop=args.max_drop,
        storage=args.storage or "",
    )
    rows = compress(request, progress=lambda msg: print(msg, flush=True))
    print("\n" + format_table(rows), flush=True)
    print(
        "latency: CPU, one thread, median of paired calls against float32 in this process; "
        "accuracy on the source run's test split",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
