"""What a reviewer reads in the MLflow UI without opening a terminal: the run's description
(the UI's note, ``mlflow.note.content``) and the registered model version's description and
tags.

Both are built from what the run itself recorded (its tags: recipe, data, digest, code
version, restarts) and its final metrics, so a version registered later from a finished run
(a search's best trial) says the same as one registered by its own job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pipeline.config import JobConfig
from pipeline.tracking.names import (
    BEST_EPOCH,
    BEST_PREFIX,
    METRIC_TAG_PREFIX,
    RANK_PREFIX,
    SLOWEST_RANK,
    TAG_COMMIT,
    TAG_DATA_DIGEST,
    TAG_DATA_URI,
    TAG_DIRTY,
    TAG_RESTARTS,
    TAG_SOURCE_RUN,
    TAG_VERSION,
    TAG_VERSION_COMMIT,
)


def headline_metrics(metrics: Mapping[str, float], gate_metric: str = "") -> dict[str, float]:
    """The metrics worth reading first: the gate's, then test_*, val_*, train_loss."""
    keys = [gate_metric] if gate_metric in metrics else []
    keys += sorted(k for k in metrics if k.startswith("test_") and "/" not in k)
    keys += sorted(k for k in metrics if k.startswith("val_") and "/" not in k)
    keys += [k for k in ("train_loss", "samples_per_sec") if k in metrics]
    out: dict[str, float] = {}
    for key in keys:
        value = metrics[key]
        if isinstance(value, int | float) and key not in out:
            out[key] = float(value)
    return out


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4f}"


def _code_line(tags: Mapping[str, str]) -> str:
    commit = tags.get(TAG_COMMIT, "")
    version = tags.get(TAG_VERSION, "?")
    if not commit:
        return f"Code: mxtrain {version}, not from a git checkout"
    dirty = " with uncommitted changes" if tags.get(TAG_DIRTY) == "true" else ""
    return f"Code: commit {commit[:12]}{dirty}, mxtrain {version}"


def run_description(
    cfg: JobConfig,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    status: str,
    registered: str = "",
    verdict: str = "",
    error: str = "",
) -> str:
    """The run's note (Markdown): recipe, data, workers, restarts, final metrics against the
    recipe's target, the gate's verdict and the model it registered; or how it ended."""
    scaling = cfg.scaling
    workers = (
        f"{scaling.min_workers}-{scaling.num_workers} workers (elastic)"
        if scaling.elastic
        else f"{scaling.num_workers} workers"
    )
    final_world = metrics.get("world_size")
    if final_world is not None and scaling.elastic:
        workers += f", {final_world:.0f} at the end"
    restarts = tags.get(TAG_RESTARTS, "0")
    lines = [
        f"**{cfg.recipe}** ({cfg.model.name}): {status}",
        "",
        f"- Data: `{tags.get(TAG_DATA_URI, cfg.data.uri)}`, digest "
        f"`{tags.get(TAG_DATA_DIGEST, '?')[:12]}` (Datasets: train, val, test)",
        f"- {workers}, {_epochs(cfg, metrics)}, {restarts} restarts of the worker group",
        f"- {_code_line(tags)}",
    ]
    shown = headline_metrics(metrics, cfg.tracking.gate_metric)
    if shown:
        lines += ["", "| metric | final | target |", "|---|---|---|"]
        for key, value in shown.items():
            target = ""
            if key == cfg.tracking.gate_metric:
                met = math.isfinite(value) and value >= cfg.tracking.gate_min
                target = f">= {cfg.tracking.gate_min:g} ({'met' if met else 'missed'})"
            lines.append(f"| {key} | {_number(value)} | {target} |")
    best = best_epoch_line(cfg, metrics)
    if best:
        lines.append(f"- {best}")
    slowest = slowest_line(metrics)
    if slowest:
        lines.append(f"- {slowest}")
    if verdict:
        lines += ["", f"Quality gate: {verdict}."]
    if registered:
        lines.append(f"Registered: {registered}.")
    if error:
        lines += ["", f"Error: {error}"]
    return "\n".join(lines)


def best_epoch_line(cfg: JobConfig, metrics: Mapping[str, float]) -> str:
    """Which epoch's model the run tested and registered under checkpoint.keep_best ("" when
    it is off: the last epoch's)."""
    if BEST_EPOCH not in metrics:
        return ""
    name = cfg.checkpoint.best_metric_name(cfg.tracking.gate_metric)
    value = metrics.get(BEST_PREFIX + name)
    scored = f", {name} {_number(value)}" if value is not None else ""
    return (
        f"Model: epoch {int(metrics[BEST_EPOCH])}'s, the best{scored} (checkpoint.keep_best);"
        " the test metrics are that model's"
    )


def slowest_line(metrics: Mapping[str, float]) -> str:
    """The slowest rank of the last epoch and where its time went, in words ("" without
    per-rank figures or with one rank)."""
    if SLOWEST_RANK not in metrics or f"{RANK_PREFIX}1/samples_per_sec" not in metrics:
        return ""
    rank = int(metrics[SLOWEST_RANK])

    def get(field: str) -> float:
        return metrics.get(f"{RANK_PREFIX}{rank}/{field}", float("nan"))

    fastest = max(v for k, v in metrics.items() if k.endswith("/samples_per_sec"))
    data, engine = get("data_wait_share"), get("engine_wait_share")
    why = (
        f"{data:.0%} of its epoch waiting for data"
        if data >= engine
        else f"{engine:.0%} waiting for compute and the allreduce"
    )
    return (
        f"Slowest rank (last epoch): rank {rank} on node {get('node'):.0f},"
        f" {get('samples_per_sec'):,.0f} samples/s ({fastest:,.0f} the fastest): {why}"
    )


def version_tags(run_id: str, run_tags: Mapping[str, str], metrics: Mapping[str, float]):
    """The model version's tags: where it came from (run, data digest, commit) and the
    headline metrics (``mxtrain.metric.<name>``)."""
    tags = {TAG_SOURCE_RUN: run_id}
    if run_tags.get(TAG_DATA_DIGEST):
        tags[TAG_DATA_DIGEST] = run_tags[TAG_DATA_DIGEST]
    if run_tags.get(TAG_COMMIT):
        tags[TAG_VERSION_COMMIT] = run_tags[TAG_COMMIT]
        tags[TAG_DIRTY] = run_tags.get(TAG_DIRTY, "unknown")
    for key, value in headline_metrics(metrics).items():
        tags[METRIC_TAG_PREFIX + key] = f"{value:.6g}"
    return tags


def version_description(
    cfg: JobConfig, run_id: str, run_tags: Mapping[str, str], metrics: Mapping[str, float]
) -> str:
    """The model version's description: what it is, how good, from what."""
    shown = headline_metrics(metrics, cfg.tracking.gate_metric)
    scores = ", ".join(f"{k} {_number(v)}" for k, v in list(shown.items())[:4])
    best = best_epoch_line(cfg, metrics)
    return (
        f"{cfg.recipe} ({cfg.model.name}) trained by run {run_id} on "
        f"{run_tags.get(TAG_DATA_URI, cfg.data.uri)} (digest "
        f"{run_tags.get(TAG_DATA_DIGEST, '?')[:12]}). {scores}. {_code_line(run_tags)}."
        + (f" {best}." if best else "")
    )


def _epochs(cfg: JobConfig, metrics: Mapping[str, float]) -> str:
    """The epochs trained, and why fewer than the recipe's when optim.stop_at ended it."""
    trained = metrics.get("epochs_trained")
    if trained is None or int(trained) >= cfg.optim.epochs:
        return f"{cfg.optim.epochs} epochs"
    return (
        f"{int(trained)} of {cfg.optim.epochs} epochs (stopped: optim.stop_at {cfg.optim.stop_at})"
    )
