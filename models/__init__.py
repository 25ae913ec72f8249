"""Gluon models, one module per family. Knows nothing of Ray, Horovod, MLflow or S3."""

from models.registry import build_model, count_params

__all__ = ["build_model", "count_params"]
