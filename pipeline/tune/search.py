"""``python -m jobs.tune``'s work: a hyperparameter search whose trials are ordinary jobs.

    driver: space checked, data checked, parent MLflow run opened, Ray
      Tuner(run_trial x N configurations, scheduler on the per-epoch metric)
        trial (a Tune function trainable): pipeline.launch.run_job with the trial's --set
          overrides, its MLflow run nested under the parent, registration off, Ray Train's
          epoch-end reports forwarded to Tune (EpochReports) -- the same data plan,
          checkpoints, tracking and loop as jobs.train
      stopped trials' runs marked KILLED (stopped early by the scheduler), the best finished
      trial's logged model registered under the recipe's model name with alias tune.alias
      (through the quality gate), the parent run FINISHED with the best trial and value

A search survives its driver: ``--resume <parent run id>`` restores Tune's state from its
storage (local or S3); a trial that was running starts again and resumes its own run's
newest checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, load_job_config
from pipeline.errors import ConfigError
from pipeline.redact import redact
from pipeline.storage import resolve
from pipeline.tracking import code_version, outage
from pipeline.tune.record import (
    TrialOutcome,
    best_outcome,
    finish_search_run,
    open_search_run,
    register_best,
    trial_outcomes,
)
from pipeline.tune.space import Dimension, check_space, parse_space
from pipeline.tune.trial import TrialSpec, run_trial

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TuneRequest:
    recipe: str
    #: ``--set`` overrides (and the CLI's shortcuts as overrides), applied to every trial.
    overrides: tuple[str, ...] = ()
    #: Trials; 0 = the recipe's tune.trials.
    trials: int = 0
    #: The parent MLflow run of a search whose driver died.
    resume: str = ""


@dataclass(frozen=True)
class TuneSummary:
    parent_run_id: str
    metric: str
    mode: str
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    registration: Any
    seconds: float
    experiment_path: str
    #: The trial of the recipe's own settings (the first), if it ran.
    recipe_trial: TrialOutcome | None = None


def recipe_settings(cfg: JobConfig, dims: list[Dimension]) -> dict[str, Any]:
    """The searched keys' values in the recipe (with the search's --set overrides)."""
    values = cfg.to_dict()
    return {d.key: values[d.key] for d in dims}


def _scheduler(cfg: JobConfig, dims: list[Dimension]):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    epochs = cfg.optim.epochs
    for d in dims:
        if d.key == "optim.epochs":
            epochs = max(int(v) for v in d.edges())
    if cfg.tune.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            # One past the last epoch: at max_t ASHA stops a trial itself, which would kill
            # a finishing trial before its job logs the model and closes its run.
            max_t=epochs + 1,
            grace_period=min(cfg.tune.grace_epochs, epochs),
            reduction_factor=cfg.tune.reduction_factor,
        )
    if cfg.tune.scheduler == "median":
        return MedianStoppingRule(
            time_attr="training_iteration",
            grace_period=cfg.tune.grace_epochs,
            min_samples_required=2,
        )
    return FIFOScheduler()


def _absolute_paths(cfg: JobConfig) -> list[str]:
    """Overrides that make the job's local paths absolute (data, storage, start weights)."""
    out = []
    for key, value in (
        ("data.uri", cfg.data.uri),
        ("storage.path", cfg.storage.resolved_path()),
        ("init.weights", cfg.init.weights),
    ):
        if value and "://" not in value:
            out.append(f"{key}={json.dumps(str(Path(value).expanduser().resolve()))}")
    return out


def _concurrency(cfg: JobConfig) -> tuple[int, float]:
    """(trials at a time, logical CPUs a local Ray needs): a trial holds its workers' CPUs
    plus one for its driver (Tune's trainable, which mostly waits)."""
    per_trial = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    if os.environ.get("RAY_ADDRESS"):
        return cfg.tune.max_concurrent or 0, 0.0  # decided once the cluster answers
    cores = os.cpu_count() or 1
    if per_trial > cores:
        raise ConfigError(
            f"a trial of {cfg.scaling.num_workers} workers x {cfg.scaling.cpus_per_worker:g} "
            f"CPU needs {per_trial:g} CPUs; this machine has {cores}: use --workers "
            f"{max(1, int(cores // cfg.scaling.cpus_per_worker))} or fewer (or a cluster, "
            "RAY_ADDRESS)"
        )
    fit = max(1, int(cores // per_trial))
    concurrency = min(cfg.tune.max_concurrent, fit) if cfg.tune.max_concurrent else fit
    return concurrency, concurrency * (per_trial + 1)


def _cluster_concurrency(cfg: JobConfig, wanted: int) -> int:
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    per_trial = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + 1
    if per_trial > cpus:
        raise ConfigError(
            f"a trial needs {per_trial:g} CPUs ({cfg.scaling.num_workers} workers x "
            f"{cfg.scaling.cpus_per_worker:g} + 1 for the trial's driver); the Ray cluster has "
            f"{cpus:g}: use fewer --workers"
        )
    fit = int(cpus // per_trial)
    return min(wanted, fit) if wanted else fit


def _drain_stopped_trials(spec: TrialSpec, outage_wait_s: float) -> None:
    """The metrics a trial's workers sent that its driver had not logged when the scheduler
    stopped it (Tune kills the trial), logged to its run while this Ray is up."""
    from pipeline.tracking.client import client_for
    from pipeline.tracking.names import TAG_RELAY
    from pipeline.tracking.relay import drain

    runs = client_for(spec.tracking_uri).search_runs(
        [spec.experiment_id],
        f"tags.`mlflow.parentRunId` = '{spec.parent_run_id}'",
        max_results=1000,
    )
    for run in runs:
        channel = run.data.tags.get(TAG_RELAY)
        if channel and run.info.status != "FINISHED":
            drain(spec.tracking_uri, run.info.run_id, channel, outage_wait_s)


def tune(request: TuneRequest, progress: Progress = print) -> TuneSummary:
    """Run (or resume) a search; PipelineError for anything a user can fix, before any trial
    starts where it can be known then."""
    from pipeline.distributed.ray_runtime import ray_runtime
    from pipeline.preflight import preflight

    started = time.perf_counter()
    overrides = list(request.overrides)
    if request.trials:
        overrides.append(f"tune.trials={request.trials}")
    cfg = load_job_config(request.recipe, overrides)
    # Trials run in Tune's trial folders: local paths must not depend on the working dir.
    overrides += _absolute_paths(cfg)
    cfg = load_job_config(request.recipe, overrides)
    if not cfg.tracking.enabled:
        raise ConfigError("a search records its trials in MLflow: tracking.enabled must be true")
    dims = parse_space(cfg.tune.space)
    check_space(dims, request.recipe, overrides)
    metric, mode = cfg.tune.metric_name(cfg.tracking.gate_metric), cfg.tune.mode
    concurrency, local_cpus = _concurrency(cfg)
    preflight(cfg)  # the data, the storage (writable), the model's fit: once, for all trials
    uri = cfg.tracking.resolved_uri()
    # The search's code tags, read from git once here: its run and every trial's carry them.
    source = code_version.source_tags(code_version.entry_point())
    parent, experiment_id, path = open_search_run(
        cfg, request.overrides, request.resume, dims, metric, concurrency, source, progress
    )
    spec = TrialSpec(
        request.recipe,
        tuple(overrides),
        tuple(dims),
        parent,
        metric,
        uri,
        experiment_id,
        tuple(source.items()),
    )
    status = "FAILED"
    try:
        # The trials' rank 0 loggers retry by themselves (tracking/outage.py).
        env = outage.FAST_FAILING
        # With the dashboard: a trial the scheduler stops dies with its Ray Train controller,
        # and Ray Train's placement-group cleaner learns of that death through the State API,
        # which the dashboard serves. Without it the stopped trial's CPUs were never given
        # back and the next trial waited for them forever (tests/integration/test_tune.py).
        with ray_runtime(
            local_cpus, cfg.scaling.threads_per_worker, progress, env=env, dashboard=True
        ):
            if os.environ.get("RAY_ADDRESS"):
                concurrency = _cluster_concurrency(cfg, concurrency)
            progress(
                f"search: {cfg.tune.trials} trials of {cfg.scaling.num_workers} workers, "
                f"{concurrency} at a time, {cfg.tune.scheduler} on {metric} ({mode}); "
                f"state in {redact(path)}"
            )
            results = _fit(cfg, dims, spec, metric, mode, concurrency, path, request.resume)
            _drain_stopped_trials(spec, cfg.tracking.outage_wait_s)
        outcomes = trial_outcomes(results, spec, metric)
        settings = recipe_settings(cfg, dims)
        own = next((o for o in outcomes if o.config == settings), None)
        best = best_outcome(outcomes, mode)
        registration = register_best(cfg, best, parent, progress) if best else None
        finish_search_run(uri, parent, outcomes, best, metric, registration, own)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            from pipeline.tracking.mlflow_run import end_run

            end_run(uri, parent, status)
    return TuneSummary(
        parent,
        metric,
        mode,
        outcomes,
        best,
        registration,
        time.perf_counter() - started,
        path,
        own,
    )


def _fit(
    cfg: JobConfig,
    dims: list[Dimension],
    spec: TrialSpec,
    metric: str,
    mode: str,
    concurrency: int,
    path: str,
    resume: str,
):
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"cpu": 1})
    loc = resolve(path, cfg.s3)
    if resume:
        if not tune.Tuner.can_restore(loc.path, storage_filesystem=loc.filesystem):
            raise ConfigError(
                f"--resume: no search state at {redact(path)} (the search's driver died before "
                "Tune saved any); start a new search"
            )
        tuner = tune.Tuner.restore(
            loc.path,
            trainable=trainable,
            resume_errored=True,
            storage_filesystem=loc.filesystem,
        )
    else:
        storage_path, name = loc.path.rsplit("/", 1)
        tuner = tune.Tuner(
            trainable,
            param_space={d.key: d.to_tune() for d in dims},
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                num_samples=cfg.tune.trials,
                scheduler=_scheduler(cfg, dims),
                # Seeded draws; the limit goes here: Tune applies max_concurrent_trials only
                # to searchers it builds itself or to Searcher instances.
                search_alg=BasicVariantGenerator(
                    random_state=cfg.seed,
                    max_concurrent=concurrency,
                    # The first trial is the recipe's own settings: what the search must beat.
                    points_to_evaluate=[recipe_settings(cfg, dims)],
                ),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=loc.filesystem,
                failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
                verbose=0,
            ),
        )
    return tuner.fit()
