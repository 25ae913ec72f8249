"""A registered model as the start of the next job: ``models:/<name>@<alias>`` or
``models:/<name>/<version>`` resolved to its version, its bundle on the local disk, and the
configuration and metrics of the run that trained it.

Only the version's bundle is used, as data: its MLmodel and code files are downloaded with
it and never run (:mod:`pipeline.model.installed`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import JobConfig, config_from_params
from pipeline.errors import ConfigError, TrackingError
from pipeline.model import bundle, installed
from pipeline.model.bundle import Bundle
from pipeline.redact import redact
from pipeline.tracking.client import client_for, quiet_mlflow, tracking_problem
from pipeline.tracking.outage import is_unreachable
from pipeline.tracking.registry import tracking_uri_scope

_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))")


@dataclass(frozen=True)
class SourceModel:
    name: str
    version: str
    #: The alias the user named it by ("" when given by version).
    alias: str
    run_id: str
    experiment_id: str
    #: The version's bundle as stored (what its size is measured on).
    bundle: Bundle
    #: The same network with its weights checked and rewritten by this package
    #: (:meth:`Bundle.plain_copy`): the one to load, ship to actors or serve.
    plain: Bundle
    #: The downloaded MLflow model folder (MLmodel, the pyfunc code, the bundle's files),
    #: there as long as the directory given to :func:`fetch_source_model`. Data only: its
    #: MLmodel and code are the registry's, never run.
    path: Path
    #: The configuration the source run trained with (from its params).
    cfg: JobConfig
    metrics: dict[str, float]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> tuple[str, str, str]:
    """(name, alias, version) of ``models:/name@alias`` / ``models:/name/version``; one of
    alias and version is empty."""
    match = _URI.fullmatch(uri.strip())
    if match is None:
        raise ConfigError(
            f"--model {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version> "
            "(e.g. models:/fashion-cnn@candidate)"
        )
    return match["name"], match["alias"] or "", match["version"] or ""


def _version(client, name: str, alias: str, version: str, where: str):
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code):
            raise
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise ConfigError(
            f"no registered model {name!r} in {where}; registered: "
            f"{', '.join(known) or 'none'} (train one with make train-distributed)"
        ) from None
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code) and "not found" not in str(exc):
            raise
        aliases = client.get_registered_model(name).aliases or {}
        have = ", ".join(f"@{a} -> version {v}" for a, v in sorted(aliases.items()))
        what = f"alias @{alias}" if alias else f"version {version}"
        raise ConfigError(
            f"registered model {name!r} has no {what} (aliases: {have or 'none'}); "
            f"use models:/{name}/<version> or an alias it has"
        ) from None


def fetch_source_model(uri: str, tracking_uri: str, directory: str | Path) -> SourceModel:
    """Resolve ``uri`` in the registry at ``tracking_uri`` and download its bundle into
    ``directory``; ConfigError when the model, alias or version does not exist."""
    name, alias, version = parse_model_uri(uri)
    where = redact(tracking_uri)
    try:
        client = client_for(tracking_uri)
        found = _version(client, name, alias, version, where)
        run = client.get_run(found.run_id)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with tracking_uri_scope(tracking_uri), quiet_mlflow():
            import mlflow

            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{found.version}",
                dst_path=str(Path(directory, "version")),
            )
    except (ConfigError, TrackingError):
        raise
    except Exception as exc:
        if is_unreachable(exc):
            raise TrackingError(f"MLflow tracking at {where} does not answer: {exc}") from None
        raise TrackingError(tracking_problem(tracking_uri, exc)) from None
    try:
        model = bundle.read(Path(local, "artifacts"))
        plain = model.plain_copy(Path(directory, "plain"))
        installed.load(plain)  # the graph and weights load, or one line here
    except bundle.BundleError as exc:
        raise ConfigError(f"{uri}: not a model this pipeline logged ({exc})") from None
    return SourceModel(
        name=name,
        version=str(found.version),
        alias=alias,
        run_id=found.run_id,
        experiment_id=run.info.experiment_id,
        bundle=model,
        plain=plain,
        path=Path(local),
        cfg=config_from_params(run.data.params),
        metrics=dict(run.data.metrics),
    )
