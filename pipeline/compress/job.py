"""``python -m jobs.compress``'s work: a registered classifier in, smaller registered
variants out, each measured beside the float32 model in the same process.

* INT8 (``pipeline/compress/quantize.py``): quantized and calibrated here, on the CPU.
* Pruned: global magnitude pruning here, then fine-tuning with the zeros held through the
  ordinary training job (``pipeline.launch.run_job`` with ``init.weights`` and
  ``init.hold_zeros``: Ray, Horovod workers, checkpoints, on the cluster of ``RAY_ADDRESS``
  if set), the fine-tuned weights stored gzip-compressed (zeros compress; MXNet's dense
  kernels gain no speed from them).

Every variant is measured on the source run's test split with the same code as the float32
model, and recorded by ``pipeline/tracking/variants.py``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.compress.measure import accuracy, paired_latency, read_split
from pipeline.compress.quantize import (
    CALIBRATION_ROWS,
    int8_storage,
    quantize_classifier,
)
from pipeline.config import CompressConfig, InitConfig, TrackingConfig
from pipeline.errors import ConfigError, TrainingError
from pipeline.model import bundle
from pipeline.model.prune import (
    apply_masks,
    global_magnitude_masks,
    nonzero_params,
    sparsity_by_layer,
)
from pipeline.storage import resolve
from pipeline.tracking.client import client_for
from pipeline.tracking.model_source import SourceModel, fetch_source_model
from pipeline.tracking.names import (
    TAG_ACCURACY_DELTA,
    TAG_DTYPE,
    TAG_FINETUNE_OF,
    TAG_PARENT_RUN,
    TAG_SOURCE_RUN,
    TAG_SPARSITY,
)
from pipeline.tracking.variants import Variant, record_variant

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CompressRequest:
    """What ``jobs.compress`` was asked for."""

    model: str
    #: Share of conv/dense weights to zero; None = no pruned variant.
    prune: float | None = None
    #: "int8" or "" (no quantized variant).
    quantize: str = ""
    #: Name patterns of layers the INT8 variant keeps in float32.
    exclude: tuple[str, ...] = ()
    finetune_epochs: int = 3
    #: Base learning rate of the fine-tuning (per worker, before linear scaling); 0 = a
    #: tenth of the source run's.
    finetune_lr: float = 0.0
    #: Workers of the fine-tuning job; 0 = as many as the source run had.
    workers: int = 0
    calibration_rows: int = CALIBRATION_ROWS
    #: A variant whose test accuracy is lower than the float32 model's by more than this is
    #: registered without its alias.
    max_drop: float = 0.01
    #: Where the pruned starting weights and the fine-tuning's checkpoints go; "" = the
    #: source run's storage.path.
    storage: str = ""
    #: MLflow tracking URI; "" = MLFLOW_TRACKING_URI or the repository's sqlite store.
    tracking_uri: str = ""

    def check(self) -> None:
        if self.prune is None and not self.quantize:
            raise ConfigError("nothing to do: give --prune SPARSITY and/or --quantize int8")
        if self.prune is not None and not 0.0 <= self.prune < 1.0:
            raise ConfigError(
                f"--prune {self.prune:g}: the share of weights to zero must be in [0, 1) "
                "(0.8 zeroes 80%)"
            )
        if self.quantize not in ("", "int8"):
            raise ConfigError(f"--quantize {self.quantize!r}: only int8 is supported")
        if self.finetune_epochs < 1 or self.calibration_rows < 1:
            raise ConfigError("--finetune-epochs and --calibration-rows must be at least 1")
        if self.finetune_lr < 0 or self.workers < 0 or not 0 <= self.max_drop <= 1:
            raise ConfigError("--finetune-lr and --workers must be >= 0, --max-drop in [0, 1]")


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    variant: str
    size_bytes: int
    nonzero: int
    latency_b1_s: float
    latency_b64_s: float
    #: Variant / float32 latency, medians of paired calls (1.0 for float32 itself).
    ratio_b1: float
    ratio_b64: float
    accuracy: float
    delta: float
    version: int | None = None
    promoted: bool = False
    note: str = ""


def compress(request: CompressRequest, progress: Progress = print) -> list[Row]:
    request.check()
    uri = request.tracking_uri or TrackingConfig().resolved_uri()
    with tempfile.TemporaryDirectory() as tmp:
        source = fetch_source_model(request.model, uri, Path(tmp, "source"))
        kind = source.bundle.meta.kind
        if kind != "classifier":
            raise ConfigError(
                f"{request.model} is a {kind} (the GAN's generator turns labels into images): "
                "INT8 calibration and the accuracy check need a classifier, and the generator "
                "cannot be fine-tuned without its discriminator; compress a classifier"
            )
        progress(
            f"source: {source.name} version {source.version} (run {source.run_id}, recipe "
            f"{source.cfg.recipe}), data {source.cfg.data.uri}"
        )
        work = _Work(request, source, Path(tmp), uri, progress)
        variants = []
        if request.quantize:
            variants.append(work.int8())
        if request.prune is not None:
            variants.append(work.pruned())
    return [work.float32_row(), *variants]


class _Work:
    """The measurements shared by the variants: the float32 model, the test rows, the
    reference latencies."""

    def __init__(
        self, request: CompressRequest, source: SourceModel, tmp: Path, uri: str, progress
    ):
        from pipeline.preflight import inspect_data

        self.request, self.source, self.tmp, self.uri = request, source, tmp, uri
        self.progress = progress
        self.info = inspect_data(source.cfg)
        self.test = read_split(self.info, "test", source.cfg.s3)
        self.reference = _ready(source.bundle.load())
        self.reference_accuracy = accuracy(self.reference, self.test)
        self.reference_size = source.bundle.size_bytes()
        self.reference_arrays = source.bundle.arrays()
        self.reference_nonzero = nonzero_params(self.reference_arrays)
        self.reference_latency: tuple[float, float] | None = None
        logged = source.metrics.get("test_accuracy")
        progress(
            f"float32: test_accuracy {self.reference_accuracy:.4f} on "
            f"{len(self.test.y):,} test rows"
            + (f" (the run logged {logged:.4f})" if logged is not None else "")
        )

    def float32_row(self) -> Row:
        """The source's line: its latencies as timed beside the first variant."""
        assert self.reference_latency is not None, "measured with a variant"
        b1, b64 = self.reference_latency
        return Row(
            "float32",
            self.reference_size,
            self.reference_nonzero,
            b1,
            b64,
            1.0,
            1.0,
            self.reference_accuracy,
            0.0,
            int(self.source.version),
            False,
            f"source, models:/{self.source.name}/{self.source.version}",
        )

    def _latency(self, variant) -> tuple[float, float, float, float]:
        """(float32 b1, float32 b64, variant/float32 at b1, at b64), paired calls."""
        ref1, _, ratio1 = paired_latency(self.reference, variant, self.test.x[:1])
        ref64, _, ratio64 = paired_latency(self.reference, variant, self.test.x[:64])
        return ref1, ref64, ratio1, ratio64

    def _row(self, name: str, model: bundle.Bundle, net, extra: dict) -> tuple[Row, dict]:
        """Measure ``net`` (loaded from ``model``, as the registry will serve it)."""
        acc = accuracy(net, self.test)
        ref1, ref64, ratio1, ratio64 = self._latency(net)
        if self.reference_latency is None:
            self.reference_latency = (ref1, ref64)
        nonzero = nonzero_params(model.arrays())
        delta = acc - self.reference_accuracy
        row = Row(
            name,
            model.size_bytes(),
            nonzero,
            ref1 * ratio1,
            ref64 * ratio64,
            ratio1,
            ratio64,
            acc,
            delta,
        )
        metrics = {
            "test_accuracy": acc,
            "accuracy_delta": delta,
            "source_test_accuracy": self.reference_accuracy,
            "size_bytes": row.size_bytes,
            "size_ratio": row.size_bytes / self.reference_size,
            "nonzero_params": nonzero,
            "source_nonzero_params": self.reference_nonzero,
            "latency_b1_ms": row.latency_b1_s * 1e3,
            "latency_b64_ms": row.latency_b64_s * 1e3,
            "latency_ratio_b1": ratio1,
            "latency_ratio_b64": ratio64,
            **extra,
        }
        return row, metrics

    def _record(self, row: Row, model, metrics, params, tags, description, documents) -> Row:
        promote = row.delta >= -self.request.max_drop
        if not promote:
            description += (
                f" Its accuracy fell by more than --max-drop {self.request.max_drop:g}: "
                "registered without the alias."
            )
        variant = Variant(
            name=row.variant,
            model=model,
            metrics=metrics,
            params={"source": self.source.uri, "source_run": self.source.run_id, **params},
            tags={
                TAG_SOURCE_RUN: self.source.run_id,
                TAG_ACCURACY_DELTA: f"{row.delta:+.4f}",
                **tags,
            },
            description=description,
            promote=promote,
            documents=documents,
        )
        recorded = record_variant(self.uri, self.source, variant, self.test.x[:5])
        return dataclasses.replace(
            row, version=recorded.version, promoted=recorded.promoted, note=description
        )

    def int8(self) -> Row:
        request = self.request
        self.progress(
            f"int8: calibrating on {request.calibration_rows:,} training rows"
            + (f", keeping {', '.join(request.exclude)} in float32" if request.exclude else "")
        )
        calibration = read_split(
            self.info, "train", self.source.cfg.s3, limit=request.calibration_rows
        )
        # A copy of its own: quantizing re-hybridizes the network it is given, and the
        # reference must stay as it is timed.
        quantized = quantize_classifier(self.source.bundle.load(), calibration.x, request.exclude)
        quantized(_nd(self.test.x[:2]))  # export needs one call
        model = bundle.write(self.tmp / "int8", quantized, self.source.bundle.meta)
        model = bundle.pack_int8(model, *int8_storage(model))
        row, metrics = self._row("int8", model, _ready(model.load()), {})
        description = (
            f"INT8 variant of {self.source.name} version {self.source.version}: weights and "
            f"activations int8 (MXNet oneDNN, calibrated on {len(calibration.y):,} training "
            f"rows, min/max), float32 layers: {', '.join(request.exclude) or 'none'}; "
            "convolution weights stored as int8, batch norm folded into them as oneDNN does "
            "when the model first runs. Weights "
            f"{row.size_bytes:,} bytes ({metrics['size_ratio']:.2f}x), CPU latency "
            f"{row.ratio_b64:.2f}x at batch 64 and {row.ratio_b1:.2f}x at batch 1, test "
            f"accuracy {row.accuracy:.4f} ({row.delta:+.4f})."
        )
        return self._record(
            row,
            model,
            metrics,
            {
                "dtype": "int8",
                "calibration_rows": str(len(calibration.y)),
                "exclude": ",".join(request.exclude),
            },
            {TAG_DTYPE: "int8"},
            description,
            {},
        )

    def pruned(self) -> Row:
        from pipeline.launch import run_job, verified_checkpoint

        request, source = self.request, self.source
        sparsity = float(request.prune or 0.0)
        arrays = self.reference_arrays
        masked = apply_masks(arrays, global_magnitude_masks(arrays, sparsity))
        start = bundle.write_arrays(self.tmp / "pruned-start", source.bundle, masked, False)
        start_uri = self._upload(start)
        before = accuracy(_ready(start.load()), self.test)
        cfg = self._finetune_config(start_uri)
        self.progress(
            f"pruned: {sparsity:.0%} of conv/dense weights zeroed (test_accuracy {before:.4f} "
            f"before fine-tuning); fine-tuning {cfg.optim.epochs} epochs on "
            f"{cfg.scaling.num_workers} workers with the zeros held"
        )
        try:
            # A run nested under the source model's run: the fine-tuning's curve in the UI.
            tags = {
                TAG_PARENT_RUN: source.run_id,
                TAG_FINETUNE_OF: f"models:/{source.name}/{source.version} pruned {sparsity:g}",
            }
            result = run_job(cfg, progress=self.progress, run_tags=tags)
            with verified_checkpoint(result.checkpoint) as ckpt:
                model = bundle.read(ckpt).copy_to(self.tmp / "pruned")
        finally:
            self._delete(start_uri)
        tuned = model.arrays()
        layers = sparsity_by_layer(tuned)
        if layers["all"] < sparsity - 1e-3:
            raise TrainingError(
                f"fine-tuning lost the mask: {layers['all']:.4f} of the weights are zero, "
                f"{sparsity:.4f} were pruned"
            )
        self.progress(
            "pruned: zeros per layer after fine-tuning: "
            + ", ".join(f"{n.split(':', 1)[-1]} {v:.2f}" for n, v in layers.items() if n != "all")
        )
        bundle.compress_params(model.directory)
        extra = {f"finetune_{k}": v for k, v in result.metrics.items() if k in _FINETUNE_METRICS}
        extra["sparsity"] = layers["all"]
        extra["test_accuracy_before_finetune"] = before
        row, metrics = self._row("pruned", model, _ready(model.load()), extra)
        description = (
            f"Pruned variant of {source.name} version {source.version}: {layers['all']:.1%} of "
            f"the conv and dense weights are zero (global magnitude pruning), fine-tuned "
            f"{cfg.optim.epochs} epochs with the zeros held. Weights stored gzip-compressed: "
            f"{row.size_bytes:,} bytes ({metrics['size_ratio']:.2f}x). MXNet's dense kernels "
            f"do not skip zeros: CPU latency {row.ratio_b64:.2f}x at batch 64. Test accuracy "
            f"{row.accuracy:.4f} ({row.delta:+.4f}; {before:.4f} before fine-tuning)."
        )
        return self._record(
            row,
            model,
            metrics,
            {
                "dtype": "float32",
                "sparsity": f"{sparsity:g}",
                "finetune_epochs": str(cfg.optim.epochs),
                "finetune_learning_rate": f"{cfg.optim.learning_rate:g}",
                "finetune_workers": str(cfg.scaling.num_workers),
                "finetune_run_id": result.run_id,
            },
            {TAG_DTYPE: "float32", TAG_SPARSITY: f"{layers['all']:.4f}"},
            description,
            {"sparsity.json": layers},
        )

    def _finetune_config(self, start_uri: str):
        request, cfg = self.request, self.source.cfg
        optim = dataclasses.replace(
            cfg.optim,
            epochs=request.finetune_epochs,
            warmup_epochs=0,
            learning_rate=request.finetune_lr or cfg.optim.learning_rate / 10,
        )
        scaling = cfg.scaling
        if request.workers:
            scaling = dataclasses.replace(scaling, num_workers=request.workers, min_workers=0)
        return dataclasses.replace(
            cfg,
            init=InitConfig(weights=start_uri, hold_zeros=True),
            optim=optim,
            scaling=scaling,
            # Tracked as a run of its own (nested under the source's, in its experiment and
            # store) that registers nothing and makes no variants of its own.
            tracking=dataclasses.replace(
                cfg.tracking,
                enabled=True,
                register=False,
                uri=self.uri,
                experiment=self._experiment_name(),
                artifact_uri="",
            ),
            compress=CompressConfig(),
            storage=dataclasses.replace(cfg.storage, path=self._storage()),
        )

    def _experiment_name(self) -> str:
        return client_for(self.uri).get_experiment(self.source.experiment_id).name

    def _storage(self) -> str:
        return self.request.storage or self.source.cfg.storage.resolved_path()

    def _upload(self, model: bundle.Bundle) -> str:
        """The pruned starting bundle where every worker can read it (the storage)."""
        location = resolve(self._storage(), self.source.cfg.s3)
        name = f"compress-{self.source.name}-v{self.source.version}-{uuid.uuid4().hex[:8]}"
        folder = location.join(name)
        location.filesystem.create_dir(folder, recursive=True)
        for file in model.files:
            with location.filesystem.open_output_stream(f"{folder}/{file}") as out:
                out.write(Path(model.path(file)).read_bytes())
        return location.uri_of(folder)

    def _delete(self, uri: str) -> None:
        location = resolve(uri, self.source.cfg.s3)
        location.filesystem.delete_dir(location.path)


_FINETUNE_METRICS = ("test_accuracy", "val_accuracy", "train_loss", "samples_per_sec")


def _nd(x):
    import mxnet as mx

    return mx.nd.array(x)


def _ready(net):
    """A loaded SymbolBlock as it is timed and served: hybridized with static memory."""
    net.hybridize(static_alloc=True)
    return net
