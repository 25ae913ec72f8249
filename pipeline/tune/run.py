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
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, load_job_config
from pipeline.errors import ConfigError, PipelineError, TrackingError, TrainingError
from pipeline.redact import redact
from pipeline.storage import resolve
from pipeline.tracking import code_version
from pipeline.tune.space import Dimension, check_space, parse_space, trial_overrides

Progress = Callable[[str], None]

TAG_KIND = "mxtrain.kind"
TAG_TRIAL = "mxtrain.tune.trial_id"
TAG_STOPPED = "mxtrain.tune.stopped_early"
PARAM_STORAGE = "tune.experiment_path"

#: What a trial changes besides its draw: it registers nothing (the search registers the best)
#: and makes no variants.
TRIAL_SETTINGS = ("tracking.register=false", "compress.prune=0", 'compress.quantize=""')


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
class TrialSpec:
    """What every trial needs besides its draw (travels to the trial actors)."""

    recipe: str
    overrides: tuple[str, ...]
    dims: tuple[Dimension, ...]
    parent_run_id: str
    metric: str
    tracking_uri: str
    experiment_id: str
    #: The search driver's code tags (pipeline/tracking/code_version.py): a trial runs in a
    #: Ray worker process, which may be on a node without the git checkout.
    source_tags: tuple[tuple[str, str], ...] = ()


@dataclass
class TrialOutcome:
    trial_id: str
    config: dict
    epochs: int
    value: float | None
    status: str
    run_id: str = ""
    metrics: dict = field(default_factory=dict)


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


# -- the trial ---------------------------------------------------------------------------------


def _epoch_reports(metric: str):
    """Ray Train's reports forwarded to Tune, the epoch-end ones only: a mid-epoch checkpoint's
    report has no validation metric, and the scheduler counts reports as epochs."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReports(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return EpochReports()


def run_trial(config: dict, spec: TrialSpec) -> None:
    """One trial: an ordinary job with the trial's draw, nested under the search's run; a
    trial started again resumes its own run."""
    import ray.tune

    from pipeline.launch import run_job
    from pipeline.tracking.mlflow_run import client_for

    trial_id = ray.tune.get_context().get_trial_id()
    sets = [*spec.overrides, *trial_overrides(list(spec.dims), config), *TRIAL_SETTINGS]
    cfg = load_job_config(spec.recipe, sets)
    earlier = client_for(spec.tracking_uri).search_runs(
        [spec.experiment_id],
        f"tags.`{TAG_TRIAL}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{spec.parent_run_id}'",
        max_results=1,
    )
    if earlier and earlier[0].info.status == "FINISHED":
        # It finished before the search's driver died, after Tune last saved its state.
        print(f"trial {trial_id}: its run {earlier[0].info.run_id} finished; replaying its epochs")
        _replay(client_for(spec.tracking_uri), earlier[0], spec.metric)
        return
    resume = earlier[0].info.run_id if earlier else None
    shown = " ".join(sets[: len(sets) - len(TRIAL_SETTINGS)])
    print(f"trial {trial_id}: {redact(shown)}", flush=True)
    run_job(
        cfg,
        progress=lambda msg: print(f"trial {trial_id}: {msg}", flush=True),
        resume=resume,
        run_tags={
            **dict(spec.source_tags),
            "mlflow.parentRunId": spec.parent_run_id,
            TAG_TRIAL: trial_id,
        },
        callbacks=[_epoch_reports(spec.metric)],
    )


def _replay(client, run, metric: str) -> None:
    """Report a finished trial's per-epoch metrics to Tune again, from its MLflow run."""
    import ray.tune

    epochs: dict[int, dict[str, float]] = {}
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            epochs.setdefault(m.step, {})[key] = m.value
    for step in sorted(epochs):
        if metric in epochs[step]:
            ray.tune.report({**epochs[step], "epoch": step})


# -- the driver --------------------------------------------------------------------------------


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


def tune(request: TuneRequest, progress: Progress = print) -> TuneSummary:
    """Run (or resume) a search; PipelineError for anything a user can fix, before any trial
    starts where it can be known then."""
    from pipeline.distributed.ray_runtime import ray_runtime
    from pipeline.launch import preflight

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
    parent, experiment_id, path = _parent_run(
        cfg, request, dims, metric, concurrency, source, progress
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
        with ray_runtime(local_cpus, cfg.scaling.threads_per_worker, progress):
            if os.environ.get("RAY_ADDRESS"):
                concurrency = _cluster_concurrency(cfg, concurrency)
            progress(
                f"search: {cfg.tune.trials} trials of {cfg.scaling.num_workers} workers, "
                f"{concurrency} at a time, {cfg.tune.scheduler} on {metric} ({mode}); "
                f"state in {redact(path)}"
            )
            results = _fit(cfg, dims, spec, metric, mode, concurrency, path, request.resume)
        outcomes = _outcomes(results, spec, metric)
        settings = recipe_settings(cfg, dims)
        own = next((o for o in outcomes if o.config == settings), None)
        best = _best(outcomes, mode)
        registration = _register_best(cfg, best, parent, progress) if best else None
        _finish_parent(uri, parent, outcomes, best, metric, registration, own)
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


def _parent_run(
    cfg: JobConfig,
    request: TuneRequest,
    dims: list[Dimension],
    metric: str,
    concurrency: int,
    source_tags: dict[str, str],
    progress: Progress,
) -> tuple[str, str, str]:
    """(run id, experiment id, Tune's experiment path) of the search's MLflow run: new, or
    the interrupted one ``--resume`` names, RUNNING again."""
    from mlflow.entities import Param

    from pipeline.tracking.mlflow_run import client_for, tracking_problem

    uri = cfg.tracking.resolved_uri()
    try:
        client = client_for(uri)
        if request.resume:
            return _reopen_parent(client, cfg, request.resume, progress)
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.tracking.experiment)
        run = client.create_run(
            exp_id,
            run_name=f"tune-{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                **source_tags,
                TAG_KIND: "tune",
                "pipeline.recipe": cfg.recipe,
                "mlflow.note.content": (
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
            "tune.overrides": json.dumps([redact(o) for o in request.overrides]),
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


def _outcomes(results, spec: TrialSpec, metric: str) -> list[TrialOutcome]:
    """Each trial as Tune ended it, with its MLflow run. A trial that reported fewer epochs
    than it was set to run was stopped by the scheduler: its run is tagged so, and marked
    KILLED if it was still open (the stop kills the trial before its job ends). With very
    short epochs the job may finish before the stop lands; it is still a stopped trial (the
    scheduler judged it on an early epoch) and is not a candidate for the best."""
    from pipeline.tracking.mlflow_run import client_for

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


def _best(outcomes: list[TrialOutcome], mode: str) -> TrialOutcome | None:
    """The best finished trial by its last value of the metric (a stopped trial has no final
    model to register)."""
    done = [o for o in outcomes if o.status == "finished" and o.value is not None and o.run_id]
    if not done:
        return None
    pick = max if mode == "max" else min
    return pick(done, key=lambda o: o.value if o.value is not None else math.nan)


def _register_best(cfg: JobConfig, best: TrialOutcome, parent: str, progress: Progress):
    from pipeline.tracking.registry import register_logged_model

    registration = register_logged_model(
        cfg,
        best.run_id,
        best.metrics,
        cfg.tune.alias,
        tags={"mxtrain.tune.parent_run_id": parent, TAG_TRIAL: best.trial_id},
    )
    alias = f"@{cfg.tune.alias}" if registration.promoted else "no alias"
    progress(
        f"registered {registration.name} version {registration.version} ({alias}; gate: "
        f"{registration.verdict}) from trial {best.trial_id}"
    )
    return registration


def _finish_parent(
    uri: str,
    parent: str,
    outcomes: list[TrialOutcome],
    best: TrialOutcome | None,
    metric: str,
    registration,
    own: TrialOutcome | None,
) -> None:
    from mlflow.entities import Metric, RunTag

    from pipeline.tracking.mlflow_run import client_for

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
        tags.append(RunTag("mxtrain.tune.recipe_trial", own.trial_id))
    if best is not None and best.value is not None:
        metrics.append(Metric(f"best_{metric}", best.value, now, 0))
        for key in ("test_accuracy", "generated_accuracy"):
            if key in best.metrics:
                metrics.append(Metric(f"best_{key}", best.metrics[key], now, 0))
        tags += [
            RunTag("mxtrain.tune.best_trial", best.trial_id),
            RunTag("mxtrain.tune.best_run_id", best.run_id),
        ]
        tags += [RunTag(f"mxtrain.tune.best.{k}", json.dumps(v)) for k, v in best.config.items()]
    if registration is not None:
        tags.append(
            RunTag("mxtrain.tune.registered", f"{registration.name}/{registration.version}")
        )
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
