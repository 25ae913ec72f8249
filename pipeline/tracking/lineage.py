"""Data lineage in MLflow: a data set a run read, logged as the run's dataset input (the UI's
Datasets column) with its source URI, a digest of its files and its row count."""

from __future__ import annotations

import warnings

from pipeline.redact import redact
from pipeline.tracking.mlflow_run import client_for, quiet_mlflow

#: MLflow's dataset table holds digests of at most 36 characters.
DIGEST_CHARS = 36


def log_dataset(
    tracking_uri: str, run_id: str, data_uri: str, name: str, digest: str, rows: int, context: str
) -> None:
    """Record that run ``run_id`` read ``data_uri`` (``context``: train, val, test, scoring)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings(), quiet_mlflow():
        # "can be interpreted in multiple ways": local paths match two equal source kinds.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(redact(data_uri))
        dataset = MetaDataset(source, name=name, digest=digest[:DIGEST_CHARS])  # type: ignore[abstract]
        client_for(tracking_uri).log_inputs(
            run_id,
            datasets=[
                DatasetInput(
                    dataset._to_mlflow_entity(),
                    tags=[
                        InputTag("mlflow.data.context", context),
                        InputTag("mxtrain.rows", str(rows)),
                    ],
                )
            ],
        )
