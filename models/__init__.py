"""Gluon models, one module per family. Knows nothing of Ray, Horovod, MLflow or S3."""

from models.registry import ADVERSARIAL, build_gan, build_model, count_params

__all__ = ["ADVERSARIAL", "build_gan", "build_model", "count_params"]
