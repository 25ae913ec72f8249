"""A smaller variant of a registered model (pruned, INT8), recorded beside its source.

Each variant gets a run of its own in the source run's experiment, nested under the source
run in the UI (``mlflow.parentRunId``), with its measurements as metrics, what was done as
params, and the variant as a pyfunc model; it is registered as a new version of the same
registered model, its description and tags saying what it is, and the variant's alias
(``pruned``, ``int8``) moves to it only if its accuracy is within the allowed drop.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field

from pipeline.model.bundle import Bundle
from pipeline.tracking import code_version
from pipeline.tracking.client import client_for, quiet_mlflow
from pipeline.tracking.model_source import SourceModel
from pipeline.tracking.names import TAG_NOTE, TAG_PARENT_RUN, TAG_SOURCE_VERSION, TAG_VARIANT
from pipeline.tracking.registry import log_bundle_model, tracking_uri_scope


@dataclass(frozen=True)
class Variant:
    """What is recorded of one variant."""

    #: Short name, also the alias: "pruned", "int8".
    name: str
    model: Bundle
    metrics: dict[str, float]
    params: dict[str, str]
    #: Registry version tags (besides the variant and source version).
    tags: dict[str, str]
    #: One paragraph for the run's and the version's description.
    description: str
    #: Whether the alias may move to it (its accuracy is within the allowed drop).
    promote: bool
    #: JSON artifacts of the run, by file name.
    documents: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    run_id: str
    version: int
    promoted: bool


def record_variant(uri: str, source: SourceModel, variant: Variant, input_example) -> Recorded:
    """Create the variant's run, log and register its model; on any failure the run ends
    FAILED and no version of it is left registered."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    client = client_for(uri)
    tags = {
        **code_version.source_tags(code_version.entry_point()),
        TAG_PARENT_RUN: source.run_id,
        TAG_NOTE: variant.description,
        TAG_VARIANT: variant.name,
        TAG_SOURCE_VERSION: source.version,
    }
    run = client.create_run(
        source.experiment_id,
        run_name=f"{source.name}-v{source.version}-{variant.name}",
        tags=tags,
    )
    run_id = run.info.run_id
    version = None
    try:
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in variant.metrics.items()],
            params=[Param(k, str(v)) for k, v in variant.params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with tracking_uri_scope(uri), warnings.catch_warnings(), quiet_mlflow():
            # MLflow asks for type hints we do not use (the signature says it all).
            warnings.filterwarnings("ignore", message=".*type hints.*")
            warnings.simplefilter("ignore")
            with mlflow.start_run(run_id=run_id):
                for name, document in variant.documents.items():
                    mlflow.log_dict(document, name)
                info = log_bundle_model(variant.model, input_example)
            version_tags = {**variant.tags, TAG_VARIANT: variant.name}
            version_tags[TAG_SOURCE_VERSION] = source.version
            registered = mlflow.register_model(info.model_uri, source.name, tags=version_tags)
        version = str(registered.version)
        client.update_model_version(source.name, version, description=variant.description)
        if variant.promote:
            client.set_registered_model_alias(source.name, variant.name, version)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):
            if version is not None:
                client.delete_model_version(source.name, version)
            client.set_terminated(run_id, "FAILED")
        raise
    return Recorded(run_id, int(version), variant.promote)
