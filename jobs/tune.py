"""A hyperparameter search with Ray Tune: each trial is an ordinary distributed job of the
recipe, with the keys of the recipe's ``[tune]`` space drawn for it.

    python -m jobs.tune --recipe fashion-mlp --trials 6
    make tune RECIPE=fashion-mlp TRIALS=6
    python -m jobs.tune --recipe digits-fcn \
        --set 'tune.space=["optim.learning_rate = loguniform(0.01, 0.5)"]'

MLflow gets one run for the search with a nested run per trial; the best finished trial's
model is registered under the recipe's model name with the alias ``tuned``.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs._cli import run_main
from pipeline.tune.search import TuneRequest, TuneSummary, tune


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.tune",
        description="Search a recipe's hyperparameters with Ray Tune. The space is the "
        "recipe's [tune] section (space = ['section.key = loguniform(lo, hi)' | uniform(lo, "
        "hi) | randint(lo, hi) | choice(a, b, ...)]); each trial is an ordinary job (Horovod "
        "workers, checkpoints, MLflow) judged on its per-epoch validation metric, and the "
        "scheduler (ASHA by default) stops the poor ones early.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The search's settings are the tune.* keys (python -m jobs.train --help lists "
        "them): tune.trials, tune.metric, tune.mode, tune.scheduler, tune.grace_epochs, "
        "tune.reduction_factor, tune.max_concurrent, tune.max_failures, tune.alias.\n\n"
        "environment:\n"
        "  RAY_ADDRESS           search on this Ray cluster instead of a local Ray\n"
        "  MLFLOW_TRACKING_URI   tracking store when tracking.uri is empty\n",
    )
    p.add_argument("--recipe", default="digits-fcn", help="recipe name or .toml path")
    p.add_argument(
        "--trials", type=int, default=0, help="trials (default: the recipe's tune.trials)"
    )
    p.add_argument("--data", help="data URI; sets data.uri")
    p.add_argument("--workers", type=int, help="workers per trial; sets scaling.num_workers")
    p.add_argument("--storage", help="checkpoints and the search's state; sets storage.path")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value for every trial (repeatable)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        default="",
        help="continue a search whose driver died: the MLflow run id of the search",
    )
    return p


def format_summary(summary: TuneSummary) -> str:
    rows = sorted(
        summary.trials,
        key=lambda o: (o.value is None, -(o.value or 0) if summary.mode == "max" else o.value or 0),
    )
    keys = list(rows[0].config) if rows else []
    head = f"{'trial':<12} {'epochs':>6} {summary.metric:>14}  {'status':<14} " + "  ".join(keys)
    lines = [head]
    for o in rows:
        value = f"{o.value:.4f}" if o.value is not None else "-"
        drawn = "  ".join(
            json.dumps(o.config[k]) if not isinstance(o.config[k], float) else f"{o.config[k]:.4g}"
            for k in keys
        )
        mark = " *best" if summary.best is o else ""
        mark += " (recipe's settings)" if summary.recipe_trial is o else ""
        lines.append(f"{o.trial_id:<12} {o.epochs:>6} {value:>14}  {o.status:<14} {drawn}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.data:
        overrides.insert(0, f"data.uri={json.dumps(args.data)}")
    if args.workers:
        overrides.insert(0, f"scaling.num_workers={args.workers}")
    if args.storage:
        overrides.insert(0, f"storage.path={json.dumps(args.storage)}")
    summary = tune(
        TuneRequest(args.recipe, tuple(overrides), args.trials, args.resume),
        progress=lambda msg: print(msg, flush=True),
    )
    print("\n" + format_summary(summary), flush=True)
    best = summary.best
    found = f"best trial {best.trial_id} ({summary.metric} {best.value:.4f})" if best else ""
    print(
        f"\nsearch {summary.parent_run_id}: {len(summary.trials)} trials in "
        f"{summary.seconds / 60:.1f} min; {found}",
        flush=True,
    )
    own = summary.recipe_trial
    if own is not None and own.value is not None and best is not None and best.value is not None:
        print(
            f"the recipe's own settings (trial {own.trial_id}, {own.status}): {summary.metric} "
            f"{own.value:.4f}; best {best.value:.4f} ({best.value - own.value:+.4f})",
            flush=True,
        )
    if summary.registration is not None:
        r = summary.registration
        print(f"model: models:/{r.name}/{r.version} ({r.verdict})", flush=True)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
