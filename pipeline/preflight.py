"""Everything checked before Ray starts, shared by every job that trains (``jobs.train``,
``jobs.tune``, ``jobs.compress``'s fine-tuning): the data's layout and contract, the
machine (GPUs, the network interface), the storage, the model's fit to the data, the start
weights. A failure is a PipelineError: one line for the user, no Ray started, no run opened.
(A training job checks the model's fit while Ray starts, before it opens the run:
pipeline/launch.py.)
"""

from __future__ import annotations

import os

from pipeline.config import JobConfig
from pipeline.data.contract import DatasetInfo, check_unique_ids, inspect_dataset
from pipeline.errors import ConfigError, ModelMisfitError
from pipeline.redact import redact
from pipeline.storage import check_access, check_writable, resolve
from pipeline.train.init_weights import check_init_weights


def inspect_data(cfg: JobConfig) -> DatasetInfo:
    """The data set's layout, shape and classes from its footers (and, for the user's own
    Parquet, its label/id/split columns); raises DataError for a set that cannot be read."""
    if cfg.data.own_parquet:
        from pipeline.data.own_parquet import inspect_own_parquet

        return inspect_own_parquet(cfg.data, cfg.seed, cfg.s3)
    return inspect_dataset(cfg.data.uri, s3=cfg.s3, require_manifest=cfg.data.require_manifest)


def describe_data(cfg: JobConfig, info: DatasetInfo) -> list[str]:
    """The start-up lines about the data: splits, shape, and what was derived from it."""
    lines = [
        f"data {redact(cfg.data.uri)}: "
        + ", ".join(f"{s} {i.rows} rows/{len(i.files)} files" for s, i in info.splits.items())
        + f"; feature_shape {list(info.feature_shape)}, {info.num_classes} classes"
    ]
    if info.mapping is not None:
        lines += [f"  {key}: {value}" for key, value in info.mapping.facts().items()]
        lines.append("  no checksums: the files are read as they are (no _manifest.json)")
    return lines


def preflight(cfg: JobConfig, model_fit: bool = True) -> DatasetInfo:
    """Everything that can be checked before a worker starts; raises a PipelineError.
    ``model_fit=False`` leaves out building the model (importing MXNet: most of this
    function's second): a training job checks that while Ray starts its workers, which
    refuse a model that does not fit as well (:func:`check_model_fits`)."""
    _check_local_machine(cfg)
    info = inspect_data(cfg)
    _check_cached_files(cfg, info)  # checksums first: a changed file is named as such
    if info.mapping is None:  # the user's own Parquet had its ids checked by the inspection
        check_unique_ids(info, cfg.s3, memory_mb=cfg.data.ids_check_mb)
    check_writable(cfg.storage.resolved_path(), cfg.s3)
    if cfg.tracking.artifact_uri:
        check_access(cfg.tracking.artifact_uri, cfg.s3)
    _check_augment(cfg, info)
    if model_fit:
        check_model_fits(cfg, info)
    check_init_weights(cfg, info)
    return info


def check_model_fits(cfg: JobConfig, info: DatasetInfo) -> None:
    """The model family can be built for the data's shape (ModelMisfitError if not)."""
    from models import build_model

    try:
        build_model(cfg.model.name, cfg.model.arch, info.feature_shape, info.num_classes)
    except ValueError as exc:
        raise ModelMisfitError.of(cfg.model.name, cfg.data.uri, exc) from None


def _check_augment(cfg: JobConfig, info: DatasetInfo) -> None:
    """Image augmentations need images; noise needs float features."""
    if cfg.augment.on_images and len(info.feature_shape) != 3:
        raise ConfigError(
            f"augment: crop, flip and erasing need image features (channels, height, width), "
            f"and {cfg.data.uri} has feature_shape {list(info.feature_shape)}; use "
            "augment.noise_std for flat features"
        )
    if cfg.augment.noise_std and info.feature_scale is not None:
        raise ConfigError(
            f"augment.noise_std needs float features, and {cfg.data.uri} stores uint8 pixels; "
            "use crop_padding, flip or erase_prob for images"
        )


def _check_local_machine(cfg: JobConfig) -> None:
    """On a local Ray (no RAY_ADDRESS) the workers run on this machine, so what they would
    miss is found here: without a GPU, Ray would wait forever for GPU slots; without the named
    interface, Gloo would time out at rendezvous."""
    if os.environ.get("RAY_ADDRESS"):
        return
    nic = cfg.scaling.network_interface
    if nic:
        import psutil

        names = sorted(psutil.net_if_addrs())
        if nic not in names:
            raise ConfigError(
                f"scaling.network_interface={nic}: this machine has no such interface (it has "
                f"{', '.join(names)}); name one of them or leave the key empty"
            )
    if cfg.scaling.use_gpu:
        import mxnet as mx

        needed = cfg.scaling.min_workers if cfg.scaling.elastic else cfg.scaling.num_workers
        found = mx.context.num_gpus()
        if found < needed:
            raise ConfigError(
                f"scaling.use_gpu=true needs a GPU per worker ({needed}) but MXNet sees {found} "
                "on this machine; set scaling.use_gpu=false, or run on a GPU cluster "
                "(RAY_ADDRESS) with a CUDA build of MXNet (infra/docker)"
            )


def _check_cached_files(cfg: JobConfig, info: DatasetInfo) -> None:
    """A local data set that the workers will cache is read and checked here once (SHA-256,
    decoding, every row's values), so a bad file costs no Ray start. Objects on S3 and
    streamed data sets are checked by the workers as they read them; a worker's data error
    ends the job without restarts (pipeline/distributed/failures.py)."""
    import pyarrow.fs as pafs

    from pipeline.data.ingest import open_source, should_cache

    local = isinstance(resolve(cfg.data.uri, cfg.s3).filesystem, pafs.LocalFileSystem)
    if local and should_cache(info, cfg.data.cache, cfg.data.cache_max_mb):
        for split in info.splits:
            open_source(info, split, memory=True).close()
