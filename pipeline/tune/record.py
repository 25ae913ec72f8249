"""The search's record in MLflow: the parent run (opened, or reopened by ``--resume``, with
the place of Tune's state computed, never read back), each trial's outcome (a stopped
trial's run KILLED), the best trial's model registered through the gate, and the parent run
closed with the best trial and value."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.config import JobConfig, load_job_config
from pipeline.errors import ConfigError, PipelineError, TrackingError, TrainingError
from pipeline.redact import redact
from pipeline.tracking.names import (
    PARAM_STORAGE,
    TAG_BEST_PREFIX,
    TAG_BEST_RUN,
    TAG_BEST_TRIAL,
    TAG_KIND,
    TAG_NOTE,
    TAG_RECIPE,
    TAG_RECIPE_TRIAL,
    TAG_REGISTERED,
    TAG_STOPPED,
    TAG_TRIAL,
    TAG_TUNE_PARENT,
)
from pipeline.tune.space import Dimension, trial_overrides
from pipeline.tune.trial import TrialSpec

Progress = Callable[[str], None]


@dataclass
class TrialOutcome:
    trial_id: str
    config: dict
    epochs: int
    value: float | None
    status: str
    run_id: str = ""
    metrics: dict = field(default_factory=dict)


def open_search_run(
    cfg: JobConfig,
    overrides: tuple[str, ...],
    resume: str,
    dims: list[Dimension],
    metric: str,
    concurrency: int,
    source_tags: dict[str, str],
    progress: Progress,
) -> tuple[str, str, str]:
    """(run id, experiment id, Tune's experiment path) of the search's MLflow run: new, or
    the interrupted one ``--resume`` names, RUNNING again."""
    from mlflow.entities import Param

    from pipeline.tracking.client import client_for, tracking_problem

    uri = cfg.tracking.resolved_uri()
    try:
        client = client_for(uri)
        if resume:
            return _reopen_parent(client, cfg, resume, progress)
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.tracking.experiment)
        run = client.create_run(
            exp_id,
            run_name=f"tune-{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                **source_tags,
                TAG_KIND: "tune",
                TAG_RECIPE: cfg.recipe,
                TAG_NOTE: (
                    f"Hyperparameter search over {cfg.recipe}: {cfg.tune.trials} trials, "
                    f"{cfg.tune.scheduler} on {metric} ({cfg.tune.mode}); space: "
                    + "; ".join(str(d) for d in dims)
                ),
            },
        )
        run_id = run.info.run_id
        path = search_path(cfg, run_id)
        params = {
            "recipe": cfg.recipe,
            "tune.space": json.dumps([str(d) for d in dims]),
            "tune.trials": str(cfg.tune.trials),
            "tune.scheduler": cfg.tune.scheduler,
            "tune.metric": metric,
            "tune.mode": cfg.tune.mode,
            "tune.grace_epochs": str(cfg.tune.grace_epochs),
            "tune.reduction_factor": str(cfg.tune.reduction_factor),
            "tune.max_concurrent": str(concurrency),
            "tune.overrides": json.dumps([redact(o) for o in overrides]),
            "scaling.num_workers": str(cfg.scaling.num_workers),
            "optim.epochs": str(cfg.optim.epochs),
            PARAM_STORAGE: redact(path),
        }
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    except PipelineError:
        raise
    except Exception as exc:
        raise TrackingError(tracking_problem(uri, exc)) from None
    progress(f"MLflow run {run_id} (experiment {cfg.tracking.experiment!r}): the search")
    return run_id, exp_id, path


def search_path(cfg: JobConfig, run_id: str) -> str:
    """Where Tune keeps a search's state: under the user's ``storage.path``, named by the
    recipe and the search's run. Computed, never read back from the run: Tune unpickles
    what it finds there (``tuner.pkl``), so the place must be one the user chose."""
    return f"{cfg.storage.resolved_path().rstrip('/')}/tune-{cfg.recipe}-{run_id[:8]}"


def _reopen_parent(client, cfg: JobConfig, run_id: str, progress: Progress) -> tuple[str, str, str]:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--resume {run_id}: no such MLflow run") from None
    if run.data.tags.get(TAG_KIND) != "tune":
        raise ConfigError(f"--resume {run_id}: not a search's run (python -m jobs.tune made none)")
    if run.info.status == "FINISHED":
        raise ConfigError(f"--resume {run_id}: the search FINISHED; start a new one")
    path = search_path(cfg, run_id)
    recorded = run.data.params.get(PARAM_STORAGE, "")
    if recorded != redact(path):
        raise ConfigError(
            f"--resume {run_id}: the search kept its state at {recorded or '(not recorded)'}, "
            f"and this recipe and storage.path give {redact(path)}; resume with the recipe "
            "and --storage the search started with"
        )
    client.update_run(run_id, status="RUNNING")
    progress(f"resuming the search of MLflow run {run_id} from {redact(path)}")
    return run_id, run.info.experiment_id, path


def trial_outcomes(results, spec: TrialSpec, metric: str) -> list[TrialOutcome]:
    """Each trial as Tune ended it, with its MLflow run. A trial that reported fewer epochs
    than it was set to run was stopped by the scheduler: its run is tagged so, and marked
    KILLED if it was still open (the stop kills the trial before its job ends). With very
    short epochs the job may finish before the stop lands; it is still a stopped trial (the
    scheduler judged it on an early epoch) and is not a candidate for the best."""
    from pipeline.tracking.client import client_for

    client = client_for(spec.tracking_uri)
    runs = {
        r.data.tags.get(TAG_TRIAL): r
        for r in client.search_runs(
            [spec.experiment_id],
            f"tags.`mlflow.parentRunId` = '{spec.parent_run_id}'",
            max_results=1000,
        )
    }
    outcomes = []
    for result in results:
        m = result.metrics or {}
        trial_id = str(m.get("trial_id", ""))
        config = {d.key: result.config.get(d.key) for d in spec.dims}
        planned = load_job_config(
            spec.recipe, [*spec.overrides, *trial_overrides(list(spec.dims), config)]
        ).optim.epochs
        epochs = int(m.get("training_iteration", 0))
        value = m.get(metric)
        outcome = TrialOutcome(
            trial_id=trial_id,
            config=config,
            epochs=epochs,
            value=float(value) if isinstance(value, int | float) and math.isfinite(value) else None,
            status="failed" if result.error else "finished",
        )
        if not result.error and epochs < planned:
            outcome.status = "stopped early"
        run = runs.get(trial_id)
        if run is not None:
            outcome.run_id = run.info.run_id
            outcome.metrics = dict(run.data.metrics)
            if outcome.status == "stopped early":
                client.set_tag(run.info.run_id, TAG_STOPPED, "true")
                # Still open (the trial was killed), or FAILED by the stop's interruption.
                if run.info.status in ("RUNNING", "FAILED"):
                    client.set_terminated(run.info.run_id, "KILLED")
            elif run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "FAILED" if result.error else "KILLED")
            elif run.info.status != "FINISHED" and outcome.status == "finished":
                outcome.status = run.info.status.lower()
        outcomes.append(outcome)
    return outcomes


def best_outcome(outcomes: list[TrialOutcome], mode: str) -> TrialOutcome | None:
    """The best finished trial by its last value of the metric (a stopped trial has no final
    model to register)."""
    done = [o for o in outcomes if o.status == "finished" and o.value is not None and o.run_id]
    if not done:
        return None
    pick = max if mode == "max" else min
    return pick(done, key=lambda o: o.value if o.value is not None else math.nan)


def register_best(cfg: JobConfig, best: TrialOutcome, parent: str, progress: Progress):
    from pipeline.tracking.registry import register_logged_model

    registration = register_logged_model(
        cfg,
        best.run_id,
        best.metrics,
        cfg.tune.alias,
        tags={TAG_TUNE_PARENT: parent, TAG_TRIAL: best.trial_id},
    )
    alias = f"@{cfg.tune.alias}" if registration.promoted else "no alias"
    progress(
        f"registered {registration.name} version {registration.version} ({alias}; gate: "
        f"{registration.verdict}) from trial {best.trial_id}"
    )
    return registration


def finish_search_run(
    uri: str,
    parent: str,
    outcomes: list[TrialOutcome],
    best: TrialOutcome | None,
    metric: str,
    registration,
    own: TrialOutcome | None,
) -> None:
    from mlflow.entities import Metric, RunTag

    from pipeline.tracking.client import client_for

    client = client_for(uri)
    now = int(time.time() * 1000)
    stopped = sum(o.status == "stopped early" for o in outcomes)
    metrics = [
        Metric("trials_finished", sum(o.status == "finished" for o in outcomes), now, 0),
        Metric("trials_stopped_early", stopped, now, 0),
        Metric(
            "trials_failed",
            sum(o.status not in ("finished", "stopped early") for o in outcomes),
            now,
            0,
        ),
    ]
    tags = []
    if own is not None and own.value is not None:  # the recipe's own settings
        metrics.append(Metric(f"recipe_{metric}", own.value, now, 0))
        tags.append(RunTag(TAG_RECIPE_TRIAL, own.trial_id))
    if best is not None and best.value is not None:
        metrics.append(Metric(f"best_{metric}", best.value, now, 0))
        for key in ("test_accuracy", "generated_accuracy"):
            if key in best.metrics:
                metrics.append(Metric(f"best_{key}", best.metrics[key], now, 0))
        tags += [
            RunTag(TAG_BEST_TRIAL, best.trial_id),
            RunTag(TAG_BEST_RUN, best.run_id),
        ]
        tags += [RunTag(f"{TAG_BEST_PREFIX}{k}", json.dumps(v)) for k, v in best.config.items()]
    if registration is not None:
        tags.append(RunTag(TAG_REGISTERED, f"{registration.name}/{registration.version}"))
    client.log_batch(parent, metrics=metrics, tags=tags)
    client.log_dict(
        parent,
        [o.__dict__ for o in sorted(outcomes, key=lambda o: o.trial_id)],
        "trials.json",
    )
    client.set_terminated(parent, "FINISHED" if best is not None else "FAILED")
    if best is None:
        raise TrainingError(
            "no trial finished, so there is no model to register; the trials' runs say why "
            f"(nested under MLflow run {parent})"
        )
