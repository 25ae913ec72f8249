"""The job's MLflow record: one run per job, written by the driver and by rank 0 only.

The driver opens the run (params, tags), rank 0 logs the per-epoch metrics while training (so
the UI shows progress live), and the driver logs the trained model from the final checkpoint,
registers it and closes the run. A failed job ends its run FAILED and registers nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig
from pipeline.data.contract import DatasetInfo
from pipeline.errors import ConfigError, PipelineError, TrackingError
from pipeline.redact import has_password, redact
from pipeline.tracking import bundle
from pipeline.tracking.bundle import Bundle

TAG_RECIPE = "pipeline.recipe"
TAG_DATA_URI = "pipeline.data_uri"
TAG_WORLD_SIZE = "pipeline.world_size"
TAG_RESUME_KEY = "pipeline.resume_key"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start_run(cfg: JobConfig, info: DatasetInfo) -> str:
    """Create the run with every config field as a param; return its id."""
    import mlflow

    uri = cfg.tracking.resolved_uri()
    try:
        client = _client(uri)
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
        run = client.create_run(
            exp_id,
            run_name=f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                TAG_RECIPE: cfg.recipe,
                TAG_DATA_URI: redact(cfg.data.uri),
                TAG_WORLD_SIZE: str(cfg.scaling.num_workers),
                TAG_RESUME_KEY: cfg.resume_key(),
            },
        )
        params = [mlflow.entities.Param(k, _param_value(v)) for k, v in cfg.to_dict().items()]
        params += [
            mlflow.entities.Param("data.feature_shape", json.dumps(list(info.feature_shape))),
            mlflow.entities.Param("data.num_classes", str(info.num_classes)),
        ]
        params += [
            mlflow.entities.Param(f"data.rows.{split}", str(s.rows))
            for split, s in info.splits.items()
        ]
        client.log_batch(run.info.run_id, params=params)
    except ConfigError:
        raise
    except Exception as exc:  # any failure here is the tracking store's, not ours
        raise TrackingError(_tracking_problem(uri, exc)) from None
    return run.info.run_id


def _user(uri: str) -> str:
    """The MLflow user a request goes as: the URI's own, else MLFLOW_TRACKING_USERNAME."""
    from urllib.parse import urlsplit

    return urlsplit(uri).username or os.environ.get("MLFLOW_TRACKING_USERNAME", "")


def _tracking_problem(uri: str, exc: Exception) -> str:
    """One line; for a server with authentication, which variables to set."""
    text = str(exc)
    if "error code 401" in text:
        return (
            f"MLflow tracking at {uri} refused the credentials (401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server"
        )
    if "error code 403" in text:
        return (
            f"MLflow tracking at {uri}: user {_user(uri)!r} may not write to experiment(s) it does "
            "not own (403); ask the server's admin for EDIT permission or use another "
            "tracking.experiment"
        )
    return f"MLflow tracking at {uri} cannot be used: {_one_line(exc)}"


def reopen_run(cfg: JobConfig, run_id: str) -> None:
    """Mark an interrupted run RUNNING again so a resumed job continues it (``--resume``).

    Refuses (ConfigError) a run that does not exist, already FINISHED, or was started with
    settings its checkpoints do not fit."""
    uri = cfg.tracking.resolved_uri()
    client = _client(uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ConfigError(
            f"--resume {run_id}: no such MLflow run in {uri}; copy the run id from the "
            "interrupted job's output or the MLflow UI"
        ) from None
    if run.info.status == "FINISHED":
        raise ConfigError(f"--resume {run_id}: the run already FINISHED; nothing to resume")
    tags = run.data.tags
    if tags.get(TAG_RESUME_KEY) != cfg.resume_key():
        raise ConfigError(
            f"--resume {run_id}: the run was started with another model, data set, batch "
            f"size, shuffle buffer or seed (recipe {tags.get(TAG_RECIPE, '?')}); resume it "
            "with the same recipe and --set values"
        )
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "pipeline.resumes", str(int(tags.get("pipeline.resumes", "0")) + 1))


def _param_value(value: Any) -> str:
    """As MLflow records it: a URI's password replaced (see pipeline/redact.py)."""
    return "" if value is None else redact(str(value))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def end_run(uri: str, run_id: str, status: str) -> None:
    """Close the run with ``status`` (FINISHED, FAILED, KILLED); never raises."""
    with contextlib.suppress(Exception):
        _client(uri).set_terminated(run_id, status=status)


class RunLogger:
    """Rank 0's handle on the run: metrics by epoch, params, artifacts.

    Calls are queued and sent by a background thread, so a slow tracking server never stalls
    training; :meth:`close` waits until everything is sent. A failed call is reported once on
    stderr and does not stop training.
    """

    def __init__(self, uri: str, run_id: str):
        import queue
        import threading

        self.uri = uri
        self.run_id = run_id
        self._queue: queue.Queue = queue.Queue()
        self._warned = False
        self._thread = threading.Thread(target=self._send, name="mlflow-logger", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        import sys

        client = _client(self.uri)
        while True:
            item = self._queue.get()
            if item is None:
                return
            method, kwargs = item
            try:
                getattr(client, method)(self.run_id, **kwargs)
                if method == "log_artifact":
                    shutil.rmtree(Path(kwargs["local_path"]).parent, ignore_errors=True)
            except Exception as exc:
                if not self._warned:
                    self._warned = True
                    print(
                        redact(f"warning: MLflow logging to {self.uri} failed: {_one_line(exc)}"),
                        file=sys.stderr,
                        flush=True,
                    )

    def count_attempt(self) -> int:
        """Count this start of the worker group in the run's tags (synchronously: it must
        land before anything else): ``pipeline.attempts`` and ``pipeline.restarts``."""
        client = _client(self.uri)
        tags = client.get_run(self.run_id).data.tags
        attempt = int(tags.get("pipeline.attempts", "0")) + 1
        client.set_tag(self.run_id, "pipeline.attempts", str(attempt))
        client.set_tag(self.run_id, "pipeline.restarts", str(attempt - 1))
        return attempt

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import mlflow

        now = int(time.time() * 1000)
        batch = [
            mlflow.entities.Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        self._queue.put(("log_batch", {"metrics": batch}))

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        batch = [mlflow.entities.Param(k, _param_value(v)) for k, v in params.items()]
        self._queue.put(("log_batch", {"params": batch}))

    def log_artifact(self, path: str, artifact_path: str) -> None:
        """Copies ``path`` first: the caller may delete it before the upload runs."""

        keep = Path(tempfile.mkdtemp(prefix="mxtrain-artifact-")) / Path(path).name
        shutil.copy(path, keep)
        self._queue.put(("log_artifact", {"local_path": str(keep), "artifact_path": artifact_path}))

    def close(self) -> None:
        """Send everything queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()


@contextlib.contextmanager
def _tracking_uri_scope(uri: str):
    """``mlflow.set_tracking_uri`` for a block only: it sets a process global and the
    MLFLOW_TRACKING_URI variable, which must not leak into the program that called us."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    old_global = getattr(utils, "_tracking_uri", None)
    old_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_global)  # type: ignore[arg-type]  # None resets it
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


def model_signature(model: Bundle, feature_example):
    """(signature, input example) of the logged model, computed by running the export."""
    import mxnet as mx
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    meta = model.meta
    if meta.kind == "generator":
        signature = ModelSignature(
            inputs=Schema([ColSpec("long", "label")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, meta.num_features))]),
            params=ParamSchema([ParamSpec("seed", "long", 0)]),
        )
        example = pd.DataFrame({"label": np.arange(meta.num_classes, dtype=np.int64)})
        return signature, example
    example = np.asarray(feature_example, dtype=np.float32)
    probs = mx.nd.softmax(model.load()(mx.nd.array(example))).asnumpy()
    return infer_signature(example, probs), example


def log_and_register_model(
    cfg: JobConfig, run_id: str, checkpoint_dir: str, input_example
) -> int | None:
    """Log the checkpoint's model bundle as a pyfunc model; register it and move the alias.

    Returns the new model version, or None when registration is off. A refusal by the
    tracking server is a one-line TrackingError that says what to change."""
    try:
        return _log_and_register_model(cfg, run_id, checkpoint_dir, input_example)
    except (PipelineError, bundle.BundleError):
        raise
    except Exception as exc:  # the tracking store's or registry's answer
        uri = cfg.tracking.resolved_uri()
        if "error code 403" in str(exc):
            raise TrackingError(
                f"MLflow tracking at {uri}: user {_user(uri)!r} may not log or register model "
                f"{cfg.registered_model_name!r} (403): ask the server's admin for EDIT "
                "permission on it, or register under another name (tracking.model_name)"
            ) from None
        raise TrackingError(_tracking_problem(uri, exc)) from None


def _log_and_register_model(
    cfg: JobConfig, run_id: str, checkpoint_dir: str, input_example
) -> int | None:
    import mlflow
    import mxnet as mx
    import numpy as np

    uri = cfg.tracking.resolved_uri()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if has_password(uri):  # MLflow prints "View run at: <tracking URI>", password and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    with (
        _tracking_uri_scope(uri),
        tempfile.TemporaryDirectory() as tmp,
        warnings.catch_warnings(),
    ):
        # MXNet cannot infer the input dtype of an imported graph; MLflow asks for type
        # hints we do not use (the signature says it all). Neither is actionable.
        warnings.simplefilter("ignore")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # Only the bundle's own files are logged (the checkpoint holds more).
        model = bundle.read(checkpoint_dir).copy_to(tmp)
        signature, example = model_signature(model, input_example)
        name = cfg.registered_model_name if cfg.tracking.register else None
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(model.pyfunc_code),
                artifacts=model.artifacts(),
                signature=signature,
                input_example=example,
                pip_requirements=[f"mxnet=={mx.__version__}", f"numpy=={np.__version__}"],
                registered_model_name=name,
            )
    if name is None:
        return None
    version = int(info.registered_model_version)
    _client(uri).set_registered_model_alias(name, cfg.tracking.alias, str(version))
    return version
