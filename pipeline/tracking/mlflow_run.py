"""The job's MLflow run: one per job, written by the driver and by rank 0 only.

The driver opens the run (params, tags), rank 0 logs the per-epoch metrics while training (so
the UI shows progress live), and the driver closes the run once the model is registered
(pipeline/tracking/registry.py). A failed job ends its run FAILED and registers nothing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Mapping

from pipeline.config import JobConfig
from pipeline.data.contract import DatasetInfo
from pipeline.data.digest import data_digest
from pipeline.errors import ConfigError, TrackingError
from pipeline.redact import redact
from pipeline.tracking import code_version, summary
from pipeline.tracking.client import (
    client_for,
    one_line,
    param_value,
    tracking_problem,
)
from pipeline.tracking.lineage import log_training_data
from pipeline.tracking.names import (
    TAG_ATTEMPTS,
    TAG_DATA_DIGEST,
    TAG_DATA_URI,
    TAG_DRIVER,
    TAG_HEARTBEAT,
    TAG_NOTE,
    TAG_RECIPE,
    TAG_RESTARTS,
    TAG_RESUME_KEY,
    TAG_RESUMES,
    TAG_WORLD_SIZE,
)
from pipeline.tracking.outage import retry_while_unreachable


def start_run(cfg: JobConfig, info: DatasetInfo, tags: Mapping[str, str] | None = None) -> str:
    """Create the run with every config field as a param (and ``tags``); return its id."""
    import mlflow

    uri = cfg.tracking.resolved_uri()
    try:
        client = client_for(uri)
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            exp_id = client.create_experiment(
                cfg.tracking.experiment, artifact_location=cfg.tracking.artifact_uri or None
            )
        else:
            exp_id = exp.experiment_id
            wanted = cfg.tracking.artifact_uri.rstrip("/")
            if wanted and exp.artifact_location.rstrip("/") != wanted:
                raise ConfigError(
                    f"tracking.artifact_uri={wanted}: experiment {cfg.tracking.experiment!r} "
                    f"already stores its artifacts at {exp.artifact_location}; use another "
                    "tracking.experiment or leave tracking.artifact_uri empty"
                )
        run_tags = {
            TAG_RECIPE: cfg.recipe,
            TAG_DATA_URI: redact(cfg.data.uri),
            TAG_WORLD_SIZE: str(cfg.scaling.num_workers),
            TAG_RESUME_KEY: cfg.resume_key(),
            TAG_DATA_DIGEST: data_digest(info),
            # The first worker group's start, counted here (the driver counts the later ones
            # for rank 0: run_logger.RunLogger.count_attempt): one that dies at once is counted too.
            TAG_ATTEMPTS: "1",
            TAG_RESTARTS: "0",
            **code_version.source_tags(code_version.entry_point()),
            **(tags or {}),
        }
        # The description until the job ends and replaces it with its summary.
        run_tags[TAG_NOTE] = summary.run_description(cfg, run_tags, {}, "running")
        run = client.create_run(
            exp_id,
            run_name=f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags=run_tags,
        )
        params = [mlflow.entities.Param(k, param_value(v)) for k, v in cfg.to_dict().items()]
        params += [
            mlflow.entities.Param("data.feature_shape", json.dumps(list(info.feature_shape))),
            mlflow.entities.Param("data.num_classes", str(info.num_classes)),
        ]
        params += [
            mlflow.entities.Param(f"data.rows.{split}", str(s.rows))
            for split, s in info.splits.items()
        ]
        if info.mapping is not None:  # what was derived from the user's own Parquet
            facts = info.mapping.facts()
            facts["class_names"] = json.dumps(list(info.class_names))
            params += [
                mlflow.entities.Param(f"data.derived.{key}", param_value(value)[:6000])
                for key, value in facts.items()
            ]
        client.log_batch(run.info.run_id, params=params)
        log_training_data(uri, run.info.run_id, info, dataset_name(cfg.data.uri))
    except ConfigError:
        raise
    except Exception as exc:  # any failure here is the tracking store's, not ours
        raise TrackingError(tracking_problem(uri, exc)) from None
    return run.info.run_id


def dataset_name(uri: str) -> str:
    """A data set's name in the UI: the last part of its URI (``s3://b/fashion-mnist`` ->
    ``fashion-mnist``)."""
    return redact(uri).rstrip("/").rsplit("/", 1)[-1] or "data"


def reopen_run(cfg: JobConfig, run_id: str) -> dict[str, str]:
    """Mark an interrupted run RUNNING again so a resumed job continues it (``--resume``);
    return its tags.

    Refuses (ConfigError) a run that does not exist, already FINISHED, or was started with
    settings its checkpoints do not fit."""
    uri = cfg.tracking.resolved_uri()
    client = client_for(uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ConfigError(
            f"--resume {run_id}: no such MLflow run in {uri}; copy the run id from the "
            "interrupted job's output or the MLflow UI"
        ) from None
    if run.info.status == "FINISHED":
        raise ConfigError(f"--resume {run_id}: the run already FINISHED; nothing to resume")
    driver = live_driver(run.data.tags) if run.info.status == "RUNNING" else None
    if driver is not None:
        raise ConfigError(
            f"--resume {run_id}: the run's driver ({driver}) is still running; stop it first "
            "(ray job stop, or kill that process) or let it finish"
        )
    tags = run.data.tags
    if tags.get(TAG_RESUME_KEY) != cfg.resume_key():
        raise ConfigError(
            f"--resume {run_id}: the run was started with another model, data set, batch "
            f"size, shuffle buffer or seed (recipe {tags.get(TAG_RECIPE, '?')}); resume it "
            "with the same recipe and --set values"
        )
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, TAG_RESUMES, str(int(tags.get(TAG_RESUMES, "0")) + 1))
    return dict(tags)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    client = client_for(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def end_run(
    uri: str, run_id: str, status: str, wait_s: float = 0.0, progress=lambda _msg: None
) -> None:
    """Close the run with ``status`` (FINISHED, FAILED, KILLED), waiting out an unreachable
    server for up to ``wait_s``; never raises."""

    def close() -> None:
        client_for(uri).set_terminated(run_id, status=status)

    try:
        retry_while_unreachable(close, uri, f"closing run {run_id}", wait_s, progress)
    except Exception as exc:
        progress(redact(f"warning: run {run_id} could not be marked {status}: {one_line(exc)}"))


# -- one driver per run ----------------------------------------------------------------------

#: Seconds between heartbeats; a driver on another host is presumed dead after 3 missed.
HEARTBEAT_S = 30.0


class Heartbeat:
    """The driver's sign of life in its run's tags: who it is (host, pid, process start) once,
    and the time every ``HEARTBEAT_S``. ``--resume`` refuses a run whose driver is alive, so
    two drivers never train into one run and one checkpoint folder."""

    def __init__(self, uri: str, run_id: str, every_s: float = HEARTBEAT_S):
        import threading

        import psutil

        self.uri, self.run_id, self.every_s = uri, run_id, every_s
        me = psutil.Process()
        self.identity = json.dumps(
            {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()}
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="driver-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        client = client_for(self.uri)
        with contextlib.suppress(Exception):
            client.set_tag(self.run_id, TAG_DRIVER, self.identity)
        while True:
            with contextlib.suppress(Exception):  # an outage only delays the next beat
                client.set_tag(self.run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def live_driver(tags: dict[str, str]) -> str | None:
    """Who still drives a RUNNING run ("pid 123 on host x"), or None if nobody does."""
    import psutil

    try:
        driver = json.loads(tags[TAG_DRIVER])
        beat = float(tags.get(TAG_HEARTBEAT, "0"))
    except (KeyError, ValueError, TypeError):
        return None  # a run from before heartbeats, or one whose driver never beat
    who = f"pid {driver.get('pid')} on host {driver.get('host')}"
    if driver.get("host") == socket.gethostname():
        try:
            alive = psutil.Process(int(driver["pid"])).create_time() == driver.get("started")
        except (psutil.Error, KeyError, ValueError, TypeError):
            alive = False
        return who if alive else None
    return who if time.time() - beat < 3 * HEARTBEAT_S else None
