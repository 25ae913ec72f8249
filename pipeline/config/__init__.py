"""The job's configuration: one typed, validated, frozen object from the CLI to the workers.

* :mod:`pipeline.config.fields` - how a field declares its help, choices and bounds;
* :mod:`pipeline.config.schema` - the sections and :class:`JobConfig`;
* :mod:`pipeline.config.loader` - recipe file + ``--set`` overrides -> JobConfig;
* :mod:`pipeline.config.describe` - the keys as ``--help`` text.

Import what you need from here. Nothing below imports MXNet, Ray or MLflow: config errors are
reported before any heavy machinery starts.
"""

from pipeline.config.describe import describe_options
from pipeline.config.loader import (
    RECIPES_DIR,
    all_keys,
    config_from_params,
    job_config_from_mapping,
    load_job_config,
    parse_override,
    resolve_recipe,
)
from pipeline.config.schema import (
    PRECISIONS,
    REPO_ROOT,
    AugmentConfig,
    CheckpointConfig,
    CompressConfig,
    DataConfig,
    InitConfig,
    JobConfig,
    ModelConfig,
    OptimConfig,
    S3Config,
    ScalingConfig,
    StorageConfig,
    TrackingConfig,
    TuneConfig,
)

__all__ = [
    "PRECISIONS",
    "RECIPES_DIR",
    "REPO_ROOT",
    "AugmentConfig",
    "CheckpointConfig",
    "CompressConfig",
    "DataConfig",
    "InitConfig",
    "JobConfig",
    "ModelConfig",
    "OptimConfig",
    "S3Config",
    "ScalingConfig",
    "StorageConfig",
    "TrackingConfig",
    "TuneConfig",
    "all_keys",
    "config_from_params",
    "describe_options",
    "job_config_from_mapping",
    "load_job_config",
    "parse_override",
    "resolve_recipe",
]
