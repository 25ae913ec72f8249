"""The job's configuration schema: typed, validated, frozen sections -> :class:`JobConfig`.

Every field carries a ``help`` text and, where it has one, its range (``ge``/``gt``/``lt``
metadata, see :mod:`pipeline.config.fields`), both printed by ``python -m jobs.train --help``.
Each section checks its bounds when it is built (:class:`Section`); ``__post_init__`` of a
section holds only the rules that relate fields to each other. A bad value raises
:class:`~pipeline.errors.ConfigError` with a one-line message that names the key.

This module must stay cheap to import (no MXNet, Ray or MLflow): config errors are reported
before any heavy machinery starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from models.config import MODEL_CONFIGS
from pipeline.config.fields import check_bounds, option, require
from pipeline.config.stop_rule import StopRule

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO_ROOT / "jobs" / "recipes"


class Section:
    """Base of the config sections: bounds are checked once, from the fields' metadata, when
    a section is built; :meth:`check` adds the rules across fields."""

    #: The section's name in recipes and ``--set`` keys (``data``, ``optim``, ...).
    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_bounds(self, self.KEY)
        self.check()

    def check(self) -> None:
        """Rules that relate fields; raise ConfigError through :func:`require`."""


@dataclass(frozen=True)
class DataConfig(Section):
    """Where the training data lives and how it is fed to the workers."""

    KEY = "data"

    uri: str = option(
        "data/digits",
        "prepared data set: a folder, file:// or s3://bucket/prefix holding train/, val/, test/",
    )
    batch_size: int = option(
        64, "samples per step on each worker; the global batch is x workers", ge=1
    )
    eval_batch_size: int = option(
        512, "samples per batch when computing validation/test metrics", ge=1
    )
    shuffle_buffer: int = option(
        2048,
        "rows each worker shuffles together (the row groups' order is shuffled too), drawn"
        " anew every epoch from (seed, epoch); 0 = no shuffle",
        ge=0,
    )
    cache: str = option(
        "auto",
        "memory: each worker reads the Parquet files once (checking their SHA-256) and slices"
        " its shard from memory every epoch; stream: each worker reads its row groups from"
        " storage every epoch (for data sets larger than memory);"
        " auto: memory when the files total at most cache_max_mb",
        choices=("auto", "memory", "stream"),
    )
    cache_max_mb: int = option(
        1024, "largest data set (stored Parquet bytes) that auto caches", ge=0
    )
    read_ahead_mb: int = option(
        64,
        "stream: stored bytes of row groups each worker's reader holds or has asked for, per"
        " split; as many concurrent requests as fit (2 to 64, from the split's average row"
        " group), up to 4 row groups asked for per request, so a distant S3's latency overlaps"
        " while memory stays bounded by this setting",
        ge=1,
        le=16_384,
    )
    ids_check_mb: int = option(
        256,
        "memory the driver's check that every id is used once may hold; past it the ids are"
        " spilled to local disk in 256 partitions by hash (a set whose manifest proves its"
        " ids unique is not read at all)",
        ge=16,
        le=65_536,
    )
    require_manifest: bool = option(
        True,
        "refuse a set in the contract's layout without _manifest.json (it proves the set is"
        " whole and carries every file's SHA-256); write one with `python -m"
        " jobs.write_manifest <uri>`. Your own Parquet (label_column set) needs none",
    )
    # -- your own Parquet: naming label_column switches from the contract to these keys ------
    label_column: str = option(
        "",
        "your own Parquet: the label column (integers are class indices, strings become"
        " classes sorted by name); empty = the contract's layout (id, features, label)",
    )
    feature_columns: tuple[str, ...] = option(
        (),
        "your own Parquet: number columns (float, int, bool) and string columns (categories,"
        " one-hot encoded) making the feature vector, or one list column; names or patterns"
        ' (TOML list, or a,b,c with --set); e.g. ["petal_*", "sepal_width"] or ["*"] for'
        " every column but the label, id and split columns",
    )
    image_column: str = option(
        "",
        "your own Parquet: a column of PNG/JPEG bytes (binary, or the Hugging Face"
        " image struct {bytes, path}), decoded in the workers' reader threads",
    )
    image_size: tuple[int, ...] = option(
        (),
        "images: [height, width] every image is brought to (see image_fit); empty = the"
        " size of the first training image",
    )
    image_channels: int = option(
        0, "images: 1 (grey) or 3 (RGB), converted as needed; 0 = the first image's", ge=0, le=3
    )
    image_fit: str = option(
        "resize",
        "images of another size: resize (stretch to image_size) or crop (scale the shorter"
        " side to fit, then cut the centre)",
        choices=("resize", "crop"),
    )
    max_classes: int = option(
        10_000,
        "your own Parquet: the most classes a label column may make (integer labels 0..N-1,"
        " or N distinct strings); one stray label like 10**12 would otherwise make an output"
        " layer no worker can allocate. Raise it for a data set with more classes",
        ge=2,
        le=10_000_000,
    )
    missing: str = option(
        "refuse",
        "your own Parquet's feature columns: a missing value (null, NaN) is refused (one line"
        " naming the column), or filled with the training split's mean (mean) or with 0"
        " (zero); a missing category takes its column's <other> slot. Fitted on the training"
        " split and applied the same way in training, evaluation, scoring and serving",
        choices=("refuse", "mean", "zero"),
    )
    normalize: bool = option(
        True,
        "your own Parquet's number columns: standardize each with the training split's mean"
        " and standard deviation (stored with the model, applied wherever it runs); on by"
        " default: it raised test accuracy on a mixed table (make bench, tables group);"
        " false feeds the stored values as they are",
    )
    max_categories: int = option(
        1000,
        "your own Parquet: the most distinct values a string feature column may hold (a"
        " one-hot slot each, plus one for values first seen later); an id or free-text column"
        " past it is refused rather than made into thousands of inputs",
        ge=1,
        le=100_000,
    )
    id_column: str = option(
        "",
        "your own Parquet: a unique integer row id; empty = derived from (file, row), stable"
        " while the files stay the same",
    )
    split_column: str = option(
        "",
        "your own Parquet in one folder: the column naming each row's split (train, val or"
        " validation, test); empty = train/, val/, test/ folders, else a seeded split",
    )
    val_fraction: float = option(
        0.1,
        "your own Parquet without val/ (or split_column): the share of training rows held out"
        " for validation, drawn from (seed, row id)",
        ge=0,
        lt=1,
    )
    test_fraction: float = option(
        0.1,
        "your own Parquet in one folder without split_column: the share of rows held out for"
        " the test split",
        ge=0,
        lt=1,
    )

    @property
    def own_parquet(self) -> bool:
        """Whether the data is the user's Parquet mapped by the column keys."""
        return bool(self.label_column)

    def check(self) -> None:
        require(bool(self.uri.strip()), "data.uri", "must not be empty")
        mapped = self.feature_columns or self.image_column or self.id_column or self.split_column
        require(
            self.own_parquet or not mapped,
            "data.label_column",
            "must name the label column when data.feature_columns, image_column, id_column or"
            " split_column is set (your own Parquet)",
        )
        if self.own_parquet:
            require(
                bool(self.feature_columns) != bool(self.image_column),
                "data.feature_columns",
                "name the feature columns or data.image_column (one of the two)",
            )
        require(
            len(self.image_size) in (0, 2) and all(0 < d <= 4096 for d in self.image_size),
            "data.image_size",
            f"must be [height, width] with each in 1..4096, got {list(self.image_size)}",
        )
        require(
            self.image_channels in (0, 1, 3),
            "data.image_channels",
            f"must be 1 (grey), 3 (RGB) or 0 (as stored), got {self.image_channels}",
        )
        require(
            self.val_fraction + self.test_fraction < 1,
            "data.val_fraction",
            "val_fraction + test_fraction must leave rows to train on (sum < 1)",
        )


@dataclass(frozen=True)
class AugmentConfig(Section):
    """Random changes to the training samples, new every epoch (data diversity against
    overfitting). Each sample's draw follows from (seed, epoch, sample id), so a resumed run
    trains on exactly the samples the uninterrupted one would have."""

    KEY = "augment"

    crop_padding: int = option(
        0,
        "random crop: pad each image by this many zero pixels per side and cut a window of"
        " its size at a random offset; 0 = off",
        ge=0,
        le=16,
    )
    flip: bool = option(False, "mirror images left to right, each with probability 0.5")
    erase_prob: float = option(
        0.0,
        "random erasing: the probability of blanking a random rectangle (2-33% of the image)",
        ge=0,
        le=1,
    )
    noise_std: float = option(
        0.0, "Gaussian noise of this standard deviation added to float features; 0 = off", ge=0
    )

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.erase_prob or self.noise_std)

    @property
    def on_images(self) -> bool:
        return bool(self.crop_padding or self.flip or self.erase_prob)


@dataclass(frozen=True)
class ModelConfig:
    """The model family (``model.name``) and its architecture settings (the other keys,
    declared with their bounds in ``models/config.py``)."""

    name: str = option("cnn", "model family", choices=tuple(MODEL_CONFIGS))
    arch: Any = None

    def __post_init__(self) -> None:
        require(
            self.name in MODEL_CONFIGS,
            "model.name",
            f"unknown model family {self.name!r}; choose one of {', '.join(MODEL_CONFIGS)}",
        )
        if self.arch is None:
            object.__setattr__(self, "arch", MODEL_CONFIGS[self.name]())
        require(
            isinstance(self.arch, MODEL_CONFIGS[self.name]),
            "model",
            f"settings of type {type(self.arch).__name__} do not belong to family {self.name!r}",
        )
        check_bounds(self.arch, "model")


#: optim.precision's modes (see pipeline/train/precision.py).
PRECISIONS = ("float32", "float16", "amp")


@dataclass(frozen=True)
class InitConfig(Section):
    """Where the network's starting weights come from (fine-tuning, e.g. a pruned model)."""

    KEY = "init"

    weights: str = option(
        "",
        "start from the weights of this model bundle (a folder or s3:// URI holding "
        "model-symbol.json, model-0000.params and model.json, as a checkpoint or a registered "
        "model stores it) instead of random ones; empty = Xavier initialisation",
    )
    hold_zeros: bool = option(
        False,
        "conv and dense weights that are zero at the start stay zero through training "
        "(fine-tuning a pruned model with its mask held); needs init.weights",
    )

    def check(self) -> None:
        require(
            not self.hold_zeros or bool(self.weights),
            "init.hold_zeros",
            "holds the zeros of init.weights, which is empty; set init.weights to a bundle",
        )


@dataclass(frozen=True)
class OptimConfig(Section):
    """The optimizer, its schedule and the length of training."""

    KEY = "optim"

    optimizer: str = option("sgd", "update rule", choices=("sgd", "nag", "adam"))
    learning_rate: float = option(0.05, "base learning rate for one worker (see lr_scaling)", gt=0)
    lr_scaling: str = option(
        "linear",
        "linear: multiply the learning rate by the number of workers (the global batch grows"
        " with them); none: keep it",
        choices=("linear", "none"),
    )
    lr_schedule: str = option(
        "cosine", "learning rate over the epochs", choices=("cosine", "constant")
    )
    warmup_epochs: int = option(
        1,
        "epochs of linear warm-up from 0 to the (scaled) learning rate; fewer than epochs",
        ge=0,
    )
    momentum: float = option(0.9, "momentum (sgd, nag) or beta1 (adam)", ge=0, lt=1)
    weight_decay: float = option(1e-4, "L2 weight decay", ge=0)
    epochs: int = option(15, "passes over the training split", ge=1)
    stop_at: str = option(
        "",
        "end training at the first epoch whose metric reaches this, e.g. val_accuracy>=0.92"
        " (that epoch is the last: the test split is evaluated and the model registered);"
        " empty = train all epochs",
    )
    grad_clip_norm: float = option(
        0.0,
        "clip the global gradient norm to this value (grad_clipped_fraction logs how often it"
        " did); 0 = off",
        ge=0,
    )
    precision: str = option(
        "float32",
        "float32; float16: float16 parameters and compute, float32 master weights in the"
        " optimizer, static loss scale; amp: MXNet AMP (float16 per op where safe, dynamic loss"
        " scale). float16 and amp need scaling.use_gpu=true",
        choices=PRECISIONS,
    )
    loss_scale: float = option(
        1024.0,
        "static loss scale for precision=float16 (a power of two divides out exactly)",
        gt=0,
    )

    def check(self) -> None:
        StopRule.parse(self.stop_at)
        require(
            self.warmup_epochs < self.epochs,
            "optim.warmup_epochs",
            f"must be in [0, optim.epochs), got {self.warmup_epochs}",
        )


@dataclass(frozen=True)
class ScalingConfig(Section):
    """How many workers train, what each one gets and how they reach each other."""

    KEY = "scaling"

    num_workers: int = option(
        2, "Horovod workers (one Ray Train worker each); the most, when min_workers is set", ge=1
    )
    min_workers: int = option(
        0,
        "elastic: start with as many workers as the cluster has slots for, at least this"
        " many, at most num_workers (0 = always num_workers)",
        ge=0,
    )
    elastic_resize_interval_s: float = option(
        60.0,
        "elastic: how often a running group checks for more free slots (or fewer) and, when"
        " the count changed, restarts with it from the newest checkpoint",
        ge=0,
    )
    cpus_per_worker: float = option(1.0, "Ray CPUs reserved per worker", gt=0)
    threads_per_worker: int = option(
        1,
        "compute threads per worker (OMP and MXNet engine); 1 lets N workers share N cores",
        ge=1,
    )
    use_gpu: bool = option(False, "one GPU per worker (mx.gpu(local_rank)); needs a GPU build")
    fp16_allreduce: bool = option(
        False,
        "send gradients as float16 in the allreduce (Horovod Compression.fp16): half the bytes,"
        " float16 rounding of the sums",
    )
    max_failures: int = option(
        3,
        "worker-group failures survived (restart from the latest valid checkpoint); 0 = none",
        ge=0,
    )
    gloo_timeout_s: int = option(
        300,
        "seconds Gloo waits for every rank, at rendezvous and in each collective; raise it"
        " when one rank is slow to reach a collective (a large shard to cache, a busy node)",
        ge=1,
    )
    horovod_cycle_ms: float = option(
        5.0,
        "milliseconds between Horovod's cycles (HOROVOD_CYCLE_TIME): each cycle the ranks"
        " agree over the network on which gradients are ready and allreduce those together."
        " At Horovod's 1 ms default those messages take CPU from training when workers share"
        " cores (docs/performance.md); lower it where allreduce latency matters more than CPU"
        " (GPUs)",
        gt=0,
    )
    network_interface: str = option(
        "",
        "network interface Gloo uses on every node (eth0, ens5, ...); empty = the interface"
        " holding the node's Ray IP, or loopback when every worker runs on one node",
    )

    @property
    def elastic(self) -> bool:
        return 0 < self.min_workers < self.num_workers

    def check(self) -> None:
        require(
            self.min_workers <= self.num_workers,
            "scaling.min_workers",
            f"must be between 0 and num_workers ({self.num_workers}), got {self.min_workers}",
        )
        require(
            self.network_interface == self.network_interface.strip()
            and " " not in self.network_interface,
            "scaling.network_interface",
            f"must be one interface name like eth0, got {self.network_interface!r}",
        )


@dataclass(frozen=True)
class TrackingConfig(Section):
    """Where MLflow records the run and registers the model."""

    KEY = "tracking"

    uri: str = option(
        "",
        "MLflow tracking URI; empty = $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db",
    )
    enabled: bool = option(
        True,
        "record the run in MLflow (params, metrics, model, registry); false: train, checkpoint"
        " and print the summary only (nothing is registered; --resume needs tracking)",
    )
    experiment: str = option("mxtrain", "MLflow experiment the run is recorded in")
    register: bool = option(True, "register the trained model in the MLflow model registry")
    model_name: str = option("", "registered model name; empty = the recipe's name")
    alias: str = option(
        "candidate",
        "registry alias moved to the new model version if the run passes its gate",
    )
    gate_metric: str = option(
        "",
        "the final metric a run must reach for the alias to move (each recipe sets its"
        " target); a run below it is registered without the alias; empty = no gate",
        choices=("", "test_accuracy", "val_accuracy", "generated_accuracy"),
    )
    gate_min: float = option(0.0, "the lowest value of gate_metric that moves the alias", ge=0)
    outage_wait_s: float = option(
        300.0,
        "how long rank 0 (buffering its metrics) and the driver (registering, closing the run)"
        " wait out an unreachable tracking server before giving up",
        ge=0,
    )
    artifact_uri: str = option(
        "",
        "where a new experiment stores artifacts (folder or s3://bucket/prefix); empty = the"
        " tracking server's default",
    )
    system_metrics: bool = option(
        True,
        "log CPU, memory, disk and network use (and GPU when present) of every node of the job"
        " to the run's System metrics tab (MLflow's probes, sampled by each node's first local"
        " rank; several nodes are named node0, node1, ...)",
    )
    system_metrics_every_s: float = option(
        10.0,
        "seconds between system metrics samples (also one a second after the first training"
        " step and one at the end)",
        ge=1,
    )
    progress_every_s: float = option(
        10.0,
        "seconds between rank 0's progress lines within an epoch (step, samples/s, ETA);"
        " 0 = only the line at each epoch's end",
        ge=0,
    )

    def check(self) -> None:
        require(bool(self.experiment.strip()), "tracking.experiment", "must not be empty")
        require(bool(self.alias.strip()), "tracking.alias", "must not be empty")

    def resolved_uri(self) -> str:
        if self.uri:
            return self.uri
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def validation_counterpart(gate_metric: str) -> str:
    """The per-epoch metric that stands for the gate's test metric while training:
    test_accuracy -> val_accuracy (val_accuracy without a gate)."""
    return "val_" + gate_metric.removeprefix("test_") if gate_metric else "val_accuracy"


@dataclass(frozen=True)
class CheckpointConfig(Section):
    """When checkpoints are written and how many Ray Train keeps."""

    KEY = "checkpoint"

    keep_last: int = option(
        2, "checkpoints kept in storage (older ones are deleted; unused with keep_best)", ge=1
    )
    every_steps: int = option(
        0,
        "also checkpoint every N steps within an epoch (0 = at the end of each epoch only)",
        ge=0,
    )
    keep_best: int = option(
        0,
        "keep the N checkpoints of the epochs that scored best on best_metric, plus the"
        " newest (to resume from); the model tested, logged and registered is then the best"
        " epoch's, not the last one's. 0 = the last epoch's model, the keep_last newest",
        ge=0,
    )
    best_metric: str = option(
        "",
        "the per-epoch metric keep_best ranks epochs by; empty = the validation counterpart"
        " of tracking.gate_metric (test_accuracy -> val_accuracy)",
    )
    best_mode: str = option(
        "max", "whether a higher or a lower best_metric is better", ("max", "min")
    )

    def best_metric_name(self, gate_metric: str) -> str:
        return self.best_metric or validation_counterpart(gate_metric)


@dataclass(frozen=True)
class CompressConfig(Section):
    """Smaller variants a training job makes of its model once it is registered and passed
    its gate (what ``python -m jobs.compress`` does on its own)."""

    KEY = "compress"

    prune: float = option(
        0.0,
        "make a pruned variant with this share of conv/dense weights zeroed, fine-tuned with "
        "the zeros held (0 = none)",
        ge=0,
        lt=1,
    )
    quantize: str = option("", "make an INT8 variant ('' = none)", choices=("", "int8"))
    finetune_epochs: int = option(3, "epochs of fine-tuning after pruning", ge=1)
    exclude: tuple[str, ...] = option(
        (), "name patterns of layers the INT8 variant keeps in float32"
    )
    max_drop: float = option(
        0.01,
        "a variant whose test accuracy is lower than the model's by more than this is "
        "registered without its alias",
        ge=0,
        le=1,
    )

    @property
    def wanted(self) -> bool:
        return bool(self.prune or self.quantize)


@dataclass(frozen=True)
class TuneConfig(Section):
    """A hyperparameter search over this recipe (``python -m jobs.tune``): each trial is an
    ordinary job of this recipe with some keys drawn from ``space``."""

    KEY = "tune"

    space: tuple[str, ...] = option(
        (),
        "the search space, one 'section.key = DIST' per item; DIST is loguniform(lo, hi), "
        "uniform(lo, hi), randint(lo, hi) (hi excluded) or choice(a, b, ...)",
    )
    trials: int = option(8, "trials (configurations drawn from the space)", ge=1)
    metric: str = option(
        "",
        "the per-epoch metric trials are judged on; empty = the validation counterpart of "
        "tracking.gate_metric (test_accuracy -> val_accuracy)",
    )
    mode: str = option("max", "whether a higher or lower metric is better", ("max", "min"))
    scheduler: str = option(
        "asha",
        "early stopping: asha (successive halving of trials by epoch), median (stop a trial "
        "below the median of others at the same epoch) or fifo (none)",
        ("asha", "median", "fifo"),
    )
    grace_epochs: int = option(1, "epochs every trial runs before it may be stopped", ge=1)
    reduction_factor: float = option(
        3.0, "asha: keep the best 1/reduction_factor of trials at each rung", gt=1
    )
    max_concurrent: int = option(
        0, "trials at a time; 0 = as many as the cluster has CPUs for", ge=0
    )
    max_failures: int = option(
        1, "times a trial that died is started again (it resumes its own checkpoint)", ge=0
    )
    alias: str = option("tuned", "alias the best trial's registered model gets")

    def metric_name(self, gate_metric: str) -> str:
        return self.metric or validation_counterpart(gate_metric)


@dataclass(frozen=True)
class StorageConfig(Section):
    """Where run outputs (checkpoints, Ray Train state) are written."""

    KEY = "storage"

    path: str = option("", "run outputs: a folder or s3://bucket/prefix; empty = <repo>/runs")

    def resolved_path(self) -> str:
        return self.path or str(REPO_ROOT / "runs")


@dataclass(frozen=True)
class S3Config(Section):
    """How S3 is reached. Credentials never go here: they come from the standard AWS sources
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE and the shared
    config files, or the instance's IAM role)."""

    KEY = "s3"

    endpoint_url: str = option(
        "", "S3 endpoint for S3-compatible servers; empty = $AWS_ENDPOINT_URL, else AWS"
    )
    region: str = option("", "S3 region; empty = $AWS_REGION / $AWS_DEFAULT_REGION / the profile")
    max_attempts: int = option(
        5, "attempts per S3 request (retry mode standard, with backoff)", ge=1
    )
    connect_timeout_s: float = option(5.0, "seconds to wait for a TCP connection to S3", gt=0)

    def check(self) -> None:
        require(
            not self.endpoint_url or "://" in self.endpoint_url,
            "s3.endpoint_url",
            f"must be a URL like http://host:port, got {self.endpoint_url!r}",
        )


@dataclass(frozen=True)
class JobConfig:
    """Everything one training job needs; built by :func:`load_job_config`."""

    recipe: str = option("custom", "recipe name; also the default registered model name")
    seed: int = option(0, "seed for initialisation and shuffling", ge=0, le=2**32 - 1)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    s3: S3Config = field(default_factory=S3Config)

    def __post_init__(self) -> None:
        check_bounds(self, "")
        # The recipe's name becomes part of the checkpoint folder's path.
        require(
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.recipe) is not None,
            "recipe",
            f"must be a plain name (letters, digits, '.', '_', '-'), got {self.recipe!r}",
        )
        require(
            not self.compress.wanted or (self.tracking.enabled and self.tracking.register),
            "compress",
            "variants are registered beside the model: needs tracking.enabled and "
            "tracking.register",
        )
        require(
            self.optim.precision == "float32" or self.scaling.use_gpu,
            "optim.precision",
            f"{self.optim.precision} needs scaling.use_gpu=true: MXNet has no float16 matrix"
            " products on the CPU",
        )

    @property
    def registered_model_name(self) -> str:
        return self.tracking.model_name or self.recipe

    def resume_key(self) -> str:
        """A hash of what a checkpoint's weights and data position depend on: the model, the
        data and its order. A run resumes only from checkpoints with the same key (optimizer
        settings and the number of epochs may change)."""
        import hashlib
        import json

        keep: tuple[str, ...] = (
            "model.",
            "init.",
            "data.uri",
            "data.batch_size",
            "data.shuffle_buffer",
        )
        keep += ("seed",)
        if self.data.own_parquet:  # which rows, ids and pixels the columns map to
            keep += ("data.label_column", "data.feature_columns", "data.image", "data.id_column")
            keep += ("data.split_column", "data.val_fraction", "data.test_fraction")
        picked = {k: v for k, v in self.to_dict().items() if k.startswith(keep)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Every field flattened to ``section.key`` -> value (what MLflow logs as params)."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelConfig):
                flat["model.name"] = value.name
                for af in dataclasses.fields(value.arch):
                    flat[f"model.{af.name}"] = getattr(value.arch, af.name)
            elif dataclasses.is_dataclass(value):
                for sf in dataclasses.fields(value):
                    flat[f"{f.name}.{sf.name}"] = getattr(value, sf.name)
            else:
                flat[f.name] = value
        return flat
