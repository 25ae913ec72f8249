"""The model registry: the trained model logged as a pyfunc, registered, and the alias moved
only if the run met its bar.

A registered version carries ``mxtrain.gate``: ``pending`` until the verdict, then ``passed``
or the reason it did not (``test_accuracy 0.1450 < tracking.gate_min 0.97``). The alias
(``tracking.alias``) moves only to a version that passed ``tracking.gate_metric >=
tracking.gate_min``. A version whose job then fails (the alias could not be set, the run could
not be closed) is deleted again by the driver (:func:`withdraw_versions`), and ``--resume``
deletes the versions an interrupted driver left, so no failed run keeps a version that could
be taken for a candidate.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass

from pipeline.config import JobConfig
from pipeline.errors import PipelineError, TrackingError
from pipeline.model import bundle
from pipeline.model.bundle import Bundle
from pipeline.model.installed import pyfunc_arguments
from pipeline.tracking import summary
from pipeline.tracking.client import client_for, request_user, tracking_problem
from pipeline.tracking.names import TAG_GATE
from pipeline.tracking.outage import is_unreachable


@dataclass(frozen=True)
class Registration:
    name: str
    version: int
    #: Whether the alias now points at this version.
    promoted: bool
    #: The gate's verdict in words ("test_accuracy 0.9861 >= 0.98", "... < tracking.gate_min
    #: 0.98", "no gate (...)").
    verdict: str


def gate_verdict(cfg: JobConfig, metrics: dict) -> tuple[bool, str]:
    """Whether the run's final metrics meet the recipe's bar, and why in words."""
    name, bar = cfg.tracking.gate_metric, cfg.tracking.gate_min
    if not name:
        return True, "no gate (tracking.gate_metric is empty)"
    value = metrics.get(name)
    if value is None:
        return False, f"the run has no metric {name} (tracking.gate_metric)"
    if not math.isfinite(value) or value < bar:
        return False, f"{name} {value:.4f} < tracking.gate_min {bar:g}"
    return True, f"{name} {value:.4f} >= {bar:g}"


@contextlib.contextmanager
def tracking_uri_scope(uri: str):
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


def log_bundle_model(model: Bundle, input_example):
    """Log ``model`` as the active run's pyfunc model ``model``; MLflow's ModelInfo."""
    import mlflow

    with pyfunc_arguments(model, input_example) as arguments:
        return mlflow.pyfunc.log_model(name="model", **arguments)


def log_and_register_model(
    cfg: JobConfig, run_id: str, checkpoint_dir: str, input_example, metrics: dict
) -> Registration | None:
    """Log the checkpoint's model bundle as a pyfunc model; register it and, if the run
    passed its gate, move the alias.

    Returns the registration, or None when registration is off. A refusal by the
    tracking server is a one-line TrackingError that says what to change."""
    try:
        return _log_and_register_model(cfg, run_id, checkpoint_dir, input_example, metrics)
    except (PipelineError, bundle.BundleError):
        raise
    except Exception as exc:  # the tracking store's or registry's answer
        if is_unreachable(exc):
            raise  # no answer at all: the caller may wait and try again
        uri = cfg.tracking.resolved_uri()
        if "error code 403" in str(exc):
            raise TrackingError(
                f"MLflow tracking at {uri}: user {request_user(uri)!r} may not log or register "
                f"model {cfg.registered_model_name!r} (403): ask the server's admin for EDIT "
                "permission on it, or register under another name (tracking.model_name)"
            ) from None
        raise TrackingError(tracking_problem(uri, exc)) from None


def _log_and_register_model(
    cfg: JobConfig, run_id: str, checkpoint_dir: str, input_example, metrics: dict
) -> Registration | None:
    import mlflow

    uri = cfg.tracking.resolved_uri()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with (
        tracking_uri_scope(uri),
        tempfile.TemporaryDirectory() as tmp,
        warnings.catch_warnings(),
    ):
        # MXNet cannot infer the input dtype of an imported graph; MLflow asks for type
        # hints we do not use (the signature says it all). Neither is actionable.
        warnings.simplefilter("ignore")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # Only the bundle's own files are logged (the checkpoint holds more).
        model = bundle.read(checkpoint_dir).copy_to(tmp)
        with mlflow.start_run(run_id=run_id):
            info = log_bundle_model(model, input_example)
        if not cfg.tracking.register:
            return None
        return _register_version(cfg, uri, info.model_uri, run_id, metrics, cfg.tracking.alias)


def register_logged_model(
    cfg: JobConfig, run_id: str, metrics: dict, alias: str, tags: dict[str, str] | None = None
) -> Registration:
    """Register the model run ``run_id`` already logged (a search's best trial) under
    ``cfg``'s model name; ``alias`` moves to it only if ``metrics`` pass the gate."""
    uri = cfg.tracking.resolved_uri()
    try:
        with tracking_uri_scope(uri), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            return _register_version(
                cfg, uri, _logged_model_uri(uri, run_id), run_id, metrics, alias, tags
            )
    except PipelineError:
        raise
    except Exception as exc:
        raise TrackingError(tracking_problem(uri, exc)) from None


def _logged_model_uri(uri: str, run_id: str) -> str:
    """The model run ``run_id`` logged, as MLflow 3 names it (``models:/m-...``): the
    ``runs:/<id>/model`` form works too, with a warning that it is not an artifact path."""
    client = client_for(uri)
    run = client.get_run(run_id)
    found = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1
    )
    return f"models:/{found[0].model_id}" if found else f"runs:/{run_id}/model"


def _register_version(
    cfg: JobConfig,
    uri: str,
    model_uri: str,
    run_id: str,
    metrics: dict,
    alias: str,
    tags: dict[str, str] | None = None,
) -> Registration:
    """A new version of ``cfg``'s model from ``model_uri``, its gate verdict as a tag, and
    ``alias`` moved to it if it passed (the version is deleted again if that fails)."""
    import mlflow

    withdraw_versions(uri, run_id)  # what an earlier, interrupted try left
    name = cfg.registered_model_name
    client = client_for(uri)
    run_tags = client.get_run(run_id).data.tags
    origin = summary.version_tags(run_id, run_tags, metrics)
    registered = mlflow.register_model(
        model_uri, name, tags={TAG_GATE: "pending", **origin, **(tags or {})}
    )
    version = str(registered.version)
    try:
        passed, verdict = gate_verdict(cfg, metrics)
        client.set_model_version_tag(name, version, TAG_GATE, "passed" if passed else verdict)
        description = summary.version_description(cfg, run_id, run_tags, metrics)
        client.update_model_version(
            name, version, description=f"{description} Quality gate: {verdict}."
        )
        if passed:
            client.set_registered_model_alias(name, alias, version)
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_model_version(name, version)
        raise
    return Registration(name, int(version), passed, verdict)


def withdraw_versions(uri: str, run_id: str) -> None:
    """Delete every registered version of ``run_id`` (its job failed, or is resumed and will
    register again); never raises."""
    with contextlib.suppress(Exception):
        client = client_for(uri)
        for version in client.search_model_versions(f"run_id = '{run_id}'"):
            with contextlib.suppress(Exception):
                client.delete_model_version(version.name, version.version)
