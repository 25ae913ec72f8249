"""One trial of a search: an ordinary training job (``pipeline.launch.run_job``) with the
trial's draw as ``--set`` overrides, its MLflow run nested under the search's, registration
off, and Ray Train's epoch-end reports forwarded to Tune (what its scheduler acts on). A trial
that Tune starts again resumes its own run; one that finished before the search's driver
died replays its epochs from MLflow."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import load_job_config
from pipeline.redact import redact
from pipeline.tracking.names import TAG_PARENT_RUN, TAG_TRIAL
from pipeline.tune.space import Dimension, trial_overrides

#: What a trial changes besides its draw: it registers nothing (the search registers the best)
#: and makes no variants.
TRIAL_SETTINGS = ("tracking.register=false", "compress.prune=0", 'compress.quantize=""')


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
    from pipeline.tracking.client import client_for

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
            TAG_PARENT_RUN: spec.parent_run_id,
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
