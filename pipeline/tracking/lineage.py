"""Data lineage in MLflow: a data set a run read, logged as the run's dataset input (the UI's
Datasets column) with its source URI, a digest of its files, its schema and its row count.

A training run logs its three splits (context train, val, test) with the digests of
pipeline/data/digest.py; a scoring run the data it scored.
"""

from __future__ import annotations

import json
import warnings

from pipeline.data.contract import DatasetInfo
from pipeline.data.digest import SPLITS, split_digest
from pipeline.redact import redact
from pipeline.tracking.client import client_for, quiet_mlflow
from pipeline.tracking.names import INPUT_ROWS

#: MLflow's dataset table holds digests of at most 36 characters.
DIGEST_CHARS = 36


def split_source(info: DatasetInfo, split: str) -> str:
    """Where the split lives: its folder when it has one of its own, else the set's URI."""
    root = info.uri.rstrip("/")
    files = info.splits[split].files
    if files and all(f"/{split}/" in path for path in files):
        return f"{root}/{split}"
    return root


def schema(info: DatasetInfo):
    """The columns a job reads, as MLflow's schema: the features tensor and the label."""
    import numpy as np
    from mlflow.types.schema import Schema, TensorSpec

    dtype = np.dtype("uint8") if info.feature_scale is not None else np.dtype("float32")
    return Schema(
        [
            TensorSpec(dtype, (-1, *info.feature_shape), "features"),
            TensorSpec(np.dtype("int64"), (-1,), "label"),
        ]
    )


def log_training_data(tracking_uri: str, run_id: str, info: DatasetInfo, name: str) -> None:
    """The job's splits as the run's dataset inputs, context train/val/test."""
    spec = schema(info)
    for split in SPLITS:
        if split in info.splits:
            log_dataset(
                tracking_uri,
                run_id,
                split_source(info, split),
                f"{name}-{split}",
                split_digest(info, split),
                info.splits[split].rows,
                split,
                spec,
            )


def log_dataset(
    tracking_uri: str,
    run_id: str,
    data_uri: str,
    name: str,
    digest: str,
    rows: int,
    context: str,
    schema=None,
) -> None:
    """Record that run ``run_id`` read ``data_uri`` (``context``: train, val, test, scoring)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings(), quiet_mlflow():
        # "can be interpreted in multiple ways": local paths match two equal source kinds.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(redact(data_uri))

        class Counted(MetaDataset):
            """MetaDataset with a profile (the UI's Profile field): the row count."""

            @property
            def profile(self):
                return {"num_rows": rows}

            def to_dict(self):
                return {**super().to_dict(), "profile": json.dumps(self.profile)}

        dataset = Counted(source, name=name, digest=digest[:DIGEST_CHARS], schema=schema)
        client_for(tracking_uri).log_inputs(
            run_id,
            datasets=[
                DatasetInput(
                    dataset._to_mlflow_entity(),
                    tags=[
                        InputTag("mlflow.data.context", context),
                        InputTag(INPUT_ROWS, str(rows)),
                    ],
                )
            ],
        )
