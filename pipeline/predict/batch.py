"""``python -m jobs.predict``'s work: a registered model scores Parquet with Ray Data.

    files' row groups --(read tasks: decode, ids)--> rows
        --(actor pool: one pyfunc load per actor)--> predictions
        --(driver: parts, then the manifest)--> --out

Ray Data streams: the read tasks and the actors run ahead of the driver only as far as the
object store's budget lets them, so memory stays flat however many rows there are. The
driver writes the output itself (the predictions are a few numbers per row), which gives it
the progress, the exact row counts and every part's checksum for the manifest without
reading anything back.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pyarrow as pa

from pipeline.config import S3Config, TrackingConfig
from pipeline.distributed.ray_runtime import ray_runtime
from pipeline.errors import ConfigError, PipelineError
from pipeline.predict.inputs import OUT_LABEL, Piece, RowReader, ScoringInput, inspect_scoring_input
from pipeline.predict.output import PredictionWriter
from pipeline.predict.scorer import PREDICTION, Scorer, model_files
from pipeline.progress import ProgressBar
from pipeline.redact import redact
from pipeline.tracking.lineage import log_dataset
from pipeline.tracking.model_source import SourceModel, fetch_source_model
from pipeline.tracking.predict_run import PredictRun

Progress = Callable[[str], None]

#: Logical CPUs a read task holds (decoding is light next to the model, and the actors hold
#: the cores).
READ_CPUS = 0.5


@dataclass(frozen=True)
class PredictRequest:
    """What ``jobs.predict`` was asked for."""

    model: str
    data: str
    out: str
    overwrite: bool = False
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    #: Rows per call of the model.
    batch_size: int = 1024
    #: Object store memory the job may hold in flight (read rows and predictions), MB.
    buffer_mb: int = 512
    #: The scoring data's id column; None = the one the model was trained with, "" = none
    #: (ids derived from file and row).
    id_column: str | None = None
    #: Noise seed of a generator model.
    seed: int = 0
    experiment: str = "mxtrain-predict"
    #: "" = MLFLOW_TRACKING_URI or the repository's sqlite store.
    tracking_uri: str = ""
    #: Record the job as an MLflow run.
    track: bool = True

    def check(self) -> None:
        if self.actors < 1:
            raise ConfigError(f"--actors {self.actors}: at least one actor scores")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ConfigError("--cpus-per-actor must be > 0 and --gpus-per-actor >= 0")
        if self.buffer_mb < 16:
            raise ConfigError(f"--buffer-mb {self.buffer_mb}: at least 16 (MB in flight)")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be at least 1")
        if _overlap(self.data, self.out):
            raise ConfigError(
                f"--out {self.out} and --data {self.data} overlap; write the predictions "
                "outside the data scored"
            )


def _overlap(a: str, b: str) -> bool:
    """Whether one location lies inside the other (or they are the same)."""

    def normal(uri: str) -> str:
        if "://" in uri and not uri.startswith("file://"):
            return uri.rstrip("/")
        return str(Path(uri.removeprefix("file://")).expanduser().resolve())

    x, y = normal(a), normal(b)
    return x == y or x.startswith(y + "/") or y.startswith(x + "/")


@dataclass(frozen=True)
class PredictSummary:
    model: str
    rows: int
    files_in: int
    files_out: int
    seconds: float
    out: str
    #: Share of labelled rows predicted right; None when the data has no labels.
    accuracy: float | None
    #: The job's MLflow run ("" when not tracked).
    run_id: str
    manifest: dict

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        lines = [
            f"scored {self.rows:,} rows from {self.files_in} files in {self.seconds:.1f} s "
            f"({self.rows_per_s:,.0f} rows/s) with {self.model}",
            f"wrote {self.files_out} Parquet files and _manifest.json to {self.out}",
        ]
        if self.accuracy is not None:
            lines.append(f"accuracy on the labelled rows: {self.accuracy:.4f}")
        if self.run_id:
            lines.append(f"MLflow run {self.run_id} (experiment of the predictions)")
        return lines


def predict(
    request: PredictRequest, progress: Progress = print, bar_out: TextIO | None = None
) -> PredictSummary:
    """Score ``request.data`` with ``request.model``; write ``request.out``. Everything a user
    can get wrong is checked before Ray starts; a failure deletes the parts written."""
    request.check()
    s3 = S3Config()
    uri = request.tracking_uri or TrackingConfig().resolved_uri()
    with tempfile.TemporaryDirectory(prefix="mxtrain-predict-") as tmp:
        source = fetch_source_model(request.model, uri, tmp)
        # The bundle's files as this package rewrote them; the registry's MLmodel and code
        # stay behind (never run).
        files = model_files(source.plain.directory)
    meta = source.bundle.meta
    trained_id = source.cfg.data.id_column
    scoring = inspect_scoring_input(
        request.data,
        meta,
        source.cfg.data,
        s3,
        id_column=trained_id if request.id_column is None else request.id_column,
    )
    if meta.kind == "generator":
        what = f"generator: label -> {meta.num_features} values"
    else:
        what = f"classifier: {meta.num_features} features -> {meta.num_classes} classes"
    progress(f"model {request.model} = {source.uri} ({what}; run {source.run_id})")
    progress(f"data  {redact(scoring.describe())}")
    writer = PredictionWriter(request.out, s3, request.overwrite)
    writer.prepare()
    run = _open_run(request, uri, source, scoring) if request.track else None
    start = time.perf_counter()
    try:
        cpus = request.actors * request.cpus_per_actor + READ_CPUS
        threads = max(1, int(request.cpus_per_actor))
        tally = _Tally()
        with ray_runtime(cpus, threads, progress):
            _check_resources(request)
            progress(
                f"scoring with {request.actors} actors ({request.cpus_per_actor:g} CPU"
                f"{f', {request.gpus_per_actor:g} GPU' if request.gpus_per_actor else ''} each),"
                f" {request.batch_size} rows per call"
            )
            bar = ProgressBar(scoring.rows, "scoring", out=bar_out)
            for table in _scored(request, scoring, source, files):
                writer.write(table)
                tally.add(table)
                bar.update(table.num_rows)
            bar.close()
        seconds = time.perf_counter() - start
        if writer.rows != scoring.rows:
            raise PipelineError(
                f"scored {writer.rows} rows of {scoring.rows}: rows were lost on the way; "
                "nothing was kept, run again"
            )
        manifest = writer.finish(
            {
                "model": source.uri,
                "model_run_id": source.run_id,
                "data": redact(request.data),
                "data_digest": scoring.digest,
                "seconds": round(seconds, 3),
            }
        )
    except BaseException:
        writer.abort()
        if run is not None:
            run.fail()
        raise
    summary = PredictSummary(
        model=source.uri,
        rows=writer.rows,
        files_in=len(scoring.files),
        files_out=len(writer.parts),
        seconds=seconds,
        out=redact(request.out),
        accuracy=tally.accuracy,
        run_id=run.run_id if run else "",
        manifest=manifest,
    )
    if run is not None:
        metrics = {
            "rows": summary.rows,
            "files": summary.files_in,
            "seconds": summary.seconds,
            "rows_per_s": summary.rows_per_s,
        }
        if summary.accuracy is not None:
            metrics["accuracy"] = summary.accuracy
        run.finish(metrics, manifest)
    return summary


def _check_resources(request: PredictRequest) -> None:
    """The actors and a read task fit the cluster (else Ray Data would wait for them
    forever: actors holding every CPU leave none for the reads that feed them)."""
    import ray

    have = ray.cluster_resources()
    for kind, per_actor, flag, reads in (
        ("CPU", request.cpus_per_actor, "--cpus-per-actor", READ_CPUS),
        ("GPU", request.gpus_per_actor, "--gpus-per-actor", 0.0),
    ):
        need = request.actors * per_actor + reads
        if need > have.get(kind, 0.0) + 1e-9:
            also = f" (and {reads:g} for a read task)" if reads else ""
            raise ConfigError(
                f"{request.actors} actors x {flag} {per_actor:g}{also} need {need:g} {kind}s;"
                f" the Ray cluster has {have.get(kind, 0.0):g}: use fewer actors or less per"
                " actor"
            )


def _open_run(
    request: PredictRequest, uri: str, source: SourceModel, scoring: ScoringInput
) -> PredictRun:
    params = {
        "model_uri": request.model,
        "model_version": source.version,
        "model_run_id": source.run_id,
        "data_uri": request.data,
        "data_digest": scoring.digest,
        "data_files": str(len(scoring.files)),
        "data_rows": str(scoring.rows),
        "out_uri": request.out,
        "actors": str(request.actors),
        "cpus_per_actor": str(request.cpus_per_actor),
        "gpus_per_actor": str(request.gpus_per_actor),
        "batch_size": str(request.batch_size),
    }
    run = PredictRun.open(uri, request.experiment, source, params, scoring.digest)
    name = request.data.rstrip("/").rsplit("/", 1)[-1]
    try:
        log_dataset(uri, run.run_id, request.data, name, scoring.digest, scoring.rows, "scoring")
    except Exception:
        run.fail()
        raise
    return run


class _Tally:
    """Right predictions among labelled rows, as the driver writes them."""

    def __init__(self) -> None:
        self.right = 0
        self.labelled = 0

    def add(self, table: pa.Table) -> None:
        if OUT_LABEL not in table.column_names or PREDICTION not in table.column_names:
            return
        labels = table.column(OUT_LABEL)
        known = labels.is_valid().to_numpy(zero_copy_only=False)
        truth = labels.fill_null(-1).to_numpy()
        predicted = table.column(PREDICTION).to_numpy()
        self.labelled += int(known.sum())
        self.right += int((truth[known] == predicted[known]).sum())

    @property
    def accuracy(self) -> float | None:
        return self.right / self.labelled if self.labelled else None


def _read_pieces(batch: pa.Table, reader: RowReader) -> Iterator[pa.Table]:
    """A Ray Data read step: each input row names a piece; yields its decoded rows."""
    for row in batch.to_pylist():
        piece = Piece(**{**row, "groups": tuple(row["groups"])})
        yield reader.read(piece)


def _scored(
    request: PredictRequest, scoring: ScoringInput, source: SourceModel, files: dict[str, bytes]
) -> Iterator[pa.Table]:
    import ray.data
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # ours counts the rows written
    context.print_on_execution_start = False
    # Bounded memory: Ray Data holds at most this much in flight in the object store (its
    # default is a share of the whole store: gigabytes, filled whenever reading outruns the
    # actors, so memory grew with the data set).
    limits = context.execution_options.resource_limits
    context.execution_options.resource_limits = limits.copy(
        object_store_memory=request.buffer_mb * 2**20
    )
    # Ray Data's INFO lines (execution started, finished) and the warning that its bars
    # are off would interleave with our bar.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    meta = source.bundle.meta
    pieces = [dataclasses.asdict(p) for p in scoring.pieces]
    items = ray.data.from_items(pieces, override_num_blocks=len(pieces))
    ds = items.map_batches(
        _read_pieces,  # type: ignore[arg-type]  # a generator of tables
        fn_kwargs={"reader": scoring.reader},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=READ_CPUS,
    )
    ds = ds.map_batches(
        Scorer,
        fn_constructor_kwargs={
            # By reference, inside a list: Ray passes it to each actor without putting the
            # constructor's arguments in the object store itself (which it warns about).
            "files": [ray.put(files)],
            "kind": meta.kind,
            "num_features": meta.num_features,
            "scale": scoring.reader.scale,
            "class_names": meta.class_names,
            "seed": request.seed,
        },
        batch_size=request.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=request.actors),
        num_cpus=request.cpus_per_actor,
        num_gpus=request.gpus_per_actor or None,
    )
    try:
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=2)
    except Exception as exc:
        error = _user_error(exc)
        if error is not None and error is not exc:
            raise error from None
        raise


def _user_error(exc: BaseException) -> PipelineError | None:
    """A PipelineError raised in a read task or actor, wherever Ray wrapped it."""
    from ray.exceptions import RayError

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        # Ray re-raises a task's exception as a subclass of its type whose text is the
        # whole remote traceback; the original (its ``cause``) has the one line.
        if isinstance(item, PipelineError) and not isinstance(item, RayError):
            return item
        todo += [item.__cause__, item.__context__, getattr(item, "cause", None)]
    return None
