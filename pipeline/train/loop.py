"""The per-worker training loop: one readable function run by every Horovod rank.

Each rank reads its shard of every split and trains a replica through a task
(pipeline/train/tasks.py) whose Horovod trainers average the gradients. Rank 0 alone logs to
MLflow and writes checkpoints (the ``is_chief`` flag gates both).
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.config import JobConfig
from pipeline.config.stop_rule import StopRule
from pipeline.data.augment import Augmenter
from pipeline.data.contract import DatasetInfo
from pipeline.data.epoch_plan import Resize
from pipeline.data.ingest import ShardReader, open_source, should_cache
from pipeline.distributed import early_imports
from pipeline.distributed.collectives import allreduce_max
from pipeline.distributed.handoff import RunIdHandoff
from pipeline.distributed.kv_channel import Sender
from pipeline.errors import ConfigError, DivergedError
from pipeline.model import diagnostics
from pipeline.model.diagnostics import ErrorReport
from pipeline.model.pictures import write_grid_png
from pipeline.mxnet_import import UNUSED_BY_MXNET
from pipeline.peak_memory import peak_rss_mb
from pipeline.progress import ProgressBar
from pipeline.tracking import system_metrics
from pipeline.tracking.names import BEST_EPOCH, BEST_PREFIX
from pipeline.tracking.relay import RelayLogger, Untracked
from pipeline.train import rank_timing, trace
from pipeline.train.best_epoch import SCORE, BestEpoch
from pipeline.train.schedule import lr_at


class EngineThrottle:
    """Keeps Python a bounded number of steps ahead of MXNet's engine, and stops a run whose
    loss is no longer finite.

    MXNet runs ops asynchronously and nothing in a step waits for them: unchecked, Python
    queues steps (and their input windows) ever further ahead of the engine, and a worker's
    memory grew with the epoch's length (make bench, rss_growth: 1.18 before, 1.02 after).
    So every ``every`` steps Python waits for the step ``every`` steps back: at most
    ``2 * every`` steps are ever in flight. Waiting once per step instead (for the step 3
    back) cost 8-15% of a small model's steps on 2 cores (one wake-up of the Python thread
    per step, competing with the engine's and Horovod's threads for the rank's core;
    measured against the bare Horovod loop, which never waits); once per 16 steps costs
    nothing measurable.
    The wait is also the moment those steps' losses are ready, so each is read then (a few
    bytes, no extra wait): a NaN or infinite loss raises
    :class:`~pipeline.errors.DivergedError` at most ``2 * every`` steps after it appeared.
    Once one rank's gradients are NaN, the allreduce makes every rank's weights NaN, so every
    rank stops within those steps.
    """

    def __init__(self, hint: str, every: int = 16):
        self.hint = hint
        self.every = every
        self._pending: deque = deque()
        #: Seconds spent waiting for the engine (rank_timing's engine wait).
        self.waited = 0.0

    @property
    def in_flight(self) -> int:
        """Steps queued whose losses were not read yet."""
        return len(self._pending)

    def add(self, step_output, epoch: int, step: int) -> None:
        """``step_output``: the step's loss(es) as an NDArray, ready once that step has run."""
        self._pending.append((step_output, epoch, step))
        if len(self._pending) >= 2 * self.every:
            self._check(self.every)

    def drain(self) -> None:
        """Wait for (and check) every step still in flight."""
        self._check(len(self._pending))

    def _check(self, count: int) -> None:
        """Wait for the ``count`` oldest steps (the newest of them is the last to finish)
        and check their losses."""
        if count <= 0:
            return
        start = time.perf_counter()
        self._pending[count - 1][0].wait_to_read()
        self.waited += time.perf_counter() - start
        for _ in range(count):
            step_output, epoch, step = self._pending.popleft()
            values = step_output.asnumpy()
            if not np.isfinite(values).all():
                bad = values[~np.isfinite(values)].flat[0]
                raise DivergedError(
                    f"training diverged: the loss is {bad} at epoch {epoch + 1}, step "
                    f"{step + 1}; nothing is registered. {self.hint}"
                )


#: How long a worker waits at least for the driver to open the MLflow run: the driver's MLflow
#: store may be slow to answer its first request (a database waking up).
RUN_ID_WAIT_S = 300.0

#: Rank 0 asks its MLflow logger every this many steps whether the server refused it (an
#: attribute read): its first calls go out while training starts.
CHECK_EVERY_STEPS = 50


@dataclass(frozen=True)
class WorkerPayload:
    """Everything the driver hands to each worker (pickled once by Ray)."""

    config: JobConfig
    info: DatasetInfo
    #: Where the MLflow run's id comes from: a new run is opened while the workers start.
    run: RunIdHandoff
    #: The channel through which rank 0 and the system metrics samplers hand their MLflow
    #: calls to the driver (pipeline/tracking/relay.py): no worker holds the tracking URI.
    relay: str
    #: Ray Train's name for the run: its checkpoints are under <storage>/<run_name>/.
    run_name: str

    @cached_property
    def run_id(self) -> str:
        """The MLflow run's id (waiting for the driver to open the run, if need be)."""
        return self.run.wait(max(RUN_ID_WAIT_S, self.config.tracking.outage_wait_s))


def _quiet_ray_train() -> None:
    """Ray Train logs every report and checkpoint at INFO; our epoch line says it all.
    (One of its loggers is named by file path, hence the second test.)"""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("ray.train", "ray.data")) or "/ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)
    # Train logs the traceback of every exception that ends the train function. A
    # PipelineError is a user's mistake (a corrupt file, say): the driver reports it in one
    # line, so its traceback is dropped here.
    logging.getLogger("ray.train.v2._internal.util").addFilter(_not_a_user_error)


def _not_a_user_error(record: logging.LogRecord) -> bool:
    lines = str(record.getMessage()).rstrip().splitlines()
    return not (lines and lines[-1].startswith("pipeline.errors."))


def _epoch_line(epoch: int, epochs: int, metrics: dict, samples_per_s: float) -> str:
    hidden = (
        "learning_rate", "samples_per_sec", "epoch_time_s", "peak_rss_mb", "world_size",
        "epochs_trained",
    )  # fmt: skip
    shown = [
        k
        for k in metrics
        if not k.startswith(("_", rank_timing.PREFIX, BEST_PREFIX))
        and k not in hidden
        and k != rank_timing.SLOWEST
    ]
    parts = [f"{k} {metrics[k]:.4f}" for k in shown]
    rate = f"  {samples_per_s:,.0f} samples/s"
    return f"epoch {epoch + 1:>3}/{epochs}  " + "  ".join(parts) + rate


def train_worker(payload: WorkerPayload) -> None:
    entered = time.time()
    import horovod.mxnet as hvd
    import mxnet as mx

    from pipeline.distributed.device import worker_device

    cfg = payload.config
    _quiet_ray_train()
    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    tracer = trace.Tracer.from_env(rank)
    if tracer:  # the start-up's phases (make bench: startup), from the process's birth
        tracer.event("worker_process", t=trace.process_start_time())
        # When this process began importing MXNet (early_imports.py): before ``entered``.
        tracer.event("train_function", t=entered, imports_started=early_imports.started_at())
        # Which of the modules MXNet's import leaves out (pipeline/mxnet_import.py) are here.
        tracer.event(
            "horovod_ready", unused_modules=[m for m in UNUSED_BY_MXNET if m in sys.modules]
        )
    is_chief = rank == 0
    device = worker_device(mx, cfg.scaling.use_gpu, hvd.local_rank())
    np.random.seed(cfg.seed)
    logger: RelayLogger | Untracked | None = None
    if is_chief and not cfg.tracking.enabled:
        logger = Untracked()
    elif is_chief:
        # The driver opens the run while this worker starts, and logs what rank 0 sends it.
        # Rank 0 still waits for the run here (0.2 s of a cold start, none warm): a run that
        # cannot be opened stops the job before training, with the driver's one line, and
        # the driver's run opening (MLflow's import, the store) stays out of training, where
        # on busy cores every rank would pay for it at each allreduce.
        asked = time.time()
        payload.run_id  # noqa: B018 - waits for the driver, raises if it could not open it
        if tracer:
            tracer.event("run_id_known", waited_s=round(time.time() - asked, 3))
        logger = RelayLogger(Sender(payload.relay))
        # A restarted group is counted before any rank can fail again (the others wait for
        # rank 0 at the weights' broadcast); the first group's count is waited for only
        # before its first checkpoint is reported (wait_counted).
        logger.count_attempt(cfg.scaling.max_failures, world, at_once=_restarted_group())
    sampler = None
    if cfg.tracking.enabled and cfg.tracking.system_metrics and hvd.local_rank() == 0:
        # One sampler per node (its first local rank), each named by its node's index when
        # the job spans several.
        nodes = hvd.cross_size()
        sampler = system_metrics.start(
            logger if isinstance(logger, RelayLogger) else RelayLogger(Sender(payload.relay)),
            cfg.tracking.system_metrics_every_s,
            node_id=f"node{hvd.cross_rank()}" if nodes > 1 else None,
        )

    def first_step_done() -> None:
        # The sampler's first reading (its psutil import) waits until now.
        if sampler:
            sampler.go()

    try:
        _train(payload, hvd, device, rank, world, logger, tracer, first_step_done)
    finally:
        system_metrics.finish(sampler)
        if logger:
            logger.close()
    # Every rank gets here after the same last collective. Horovod's background loop is
    # stopped now, on all of them, rather than left to Ray Train's teardown, which ends the
    # worker processes one by one: a rank still running found its peer's connection gone
    # and logged an error line ("Horovod background loop uncaught exception: ... Connection
    # reset by peer") at the end of a job that succeeded.
    hvd.shutdown()


def _restarted_group() -> bool:
    """Whether Ray Train hands this group a checkpoint, as it does to a group that replaces
    a failed or resized one (a run's first group gets none). No storage is read."""
    import ray.train

    try:
        return ray.train.get_checkpoint() is not None
    except Exception:  # not inside a Ray Train worker
        return False


def _train(
    payload: WorkerPayload,
    hvd,
    device,
    rank: int,
    world: int,
    logger: RelayLogger | Untracked | None,
    tracer: trace.Tracer | None,
    first_step_done: Callable[[], None],
) -> None:
    import mxnet as mx

    from pipeline.train.context import WorkerContext
    from pipeline.train.tasks import make_task

    cfg, info = payload.config, payload.info
    is_chief = rank == 0
    task = make_task(WorkerContext(cfg, info, device, hvd, world, rank))
    if tracer:
        tracer.event("task_ready")
    if logger:
        logger.log_params({"model.num_params": task.num_params()})

    optim = cfg.optim
    train_rows = info.splits["train"].rows
    memory = should_cache(info, cfg.data.cache, cfg.data.cache_max_mb)
    augment = Augmenter(cfg.augment, info.feature_shape, cfg.seed) if cfg.augment.active else None
    readers = {
        split: ShardReader(
            open_source(info, split, memory, cfg.s3, cfg.data.read_ahead_mb),
            info.splits[split],
            info.num_features,
            rank,
            world,
            cfg.seed,
            info.feature_scale,
            transform=augment if split == "train" else None,
        )
        for split in ("train", "val", "test")
    }
    steps = readers["train"].steps(cfg.data.batch_size)
    best = BestEpoch.from_config(cfg)
    start_epoch, skip, history, restored, resized = _resume(
        payload, task, device, world, is_chief, best
    )
    if logger and history:
        # Metrics that an earlier group logged while the tracking server was unreachable died
        # with that group's buffer; the checkpoint kept them. (Exact repeats are not stored
        # twice: same key, value, timestamp and step.)
        logger.replay(history)
    if tracer:
        tracer.event("data_ready")
        tracer.topology(hvd)
    train_time = 0.0
    train_samples = 0
    if is_chief:
        print(
            f"training {cfg.recipe} ({cfg.model.name}, {task.num_params():,} parameters): "
            f"{world} workers, {train_rows} train rows, {steps} steps per epoch per worker, "
            f"{optim.epochs} epochs, data from {'memory' if memory else 'storage'}",
            flush=True,
        )
    every = cfg.checkpoint.every_steps
    stop = StopRule.parse(optim.stop_at)
    drawing: threading.Thread | None = None
    end = optim.epochs
    if (
        stop
        and restored
        and not skip
        and start_epoch
        and stop.met(_epoch_metrics(history, start_epoch - 1))
    ):
        end = start_epoch  # the run had stopped there (optim.stop_at) before it was resumed
    for epoch in range(start_epoch, end):
        # Random draws (dropout, GAN noise) follow (seed, epoch, rank), so a run resumed at
        # an epoch start trains exactly as the uninterrupted run did.
        mx.random.seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank)
        task.start_epoch(epoch)
        start = time.perf_counter()
        first = skip if epoch == start_epoch else 0
        n_steps = first
        # An epoch resumed with another world size deals what the earlier worlds left.
        resizes = resized if epoch == start_epoch else []
        epoch_steps = readers["train"].steps(
            cfg.data.batch_size,
            readers["train"].remaining(
                epoch, cfg.data.batch_size, cfg.data.shuffle_buffer, resizes
            ),
        )
        done_before = steps - epoch_steps  # the schedule goes on where the others stopped
        seen: list[np.ndarray] = []
        batches = readers["train"].batches(
            epoch,
            cfg.data.batch_size,
            shuffle_rows=cfg.data.shuffle_buffer,
            skip_steps=first,
            device=device,
            resizes=resizes,
        )
        throttle = EngineThrottle(_divergence_hint(cfg))
        bar = _epoch_bar(cfg, epoch, epoch_steps, first, world) if is_chief else None
        clock = rank_timing.DataClock()
        for batch in clock.timed(batches):
            throttle.add(
                task.train_step(
                    batch,
                    lr_at(optim, world, epoch * steps + max(0, done_before + n_steps), steps),
                ),
                epoch,
                n_steps,
            )
            if n_steps == first and epoch == start_epoch:
                if tracer:
                    mx.nd.waitall()
                    tracer.event("first_step")
                    tracer.rendezvous_listeners()
                first_step_done()
            n_steps += 1
            if bar:
                bar.update(1)
            if logger and n_steps % CHECK_EVERY_STEPS == 0:
                logger.check()  # a refused rank 0 stops now, not at the end of the epoch
            if tracer:
                seen.append(batch.ids[batch.labels >= 0])
            if every and n_steps % every == 0 and n_steps < epoch_steps:
                if tracer:
                    tracer.checkpoint(epoch, n_steps, np.concatenate(seen))
                if logger:  # a group that leaves a checkpoint to resume from is counted
                    logger.wait_counted()
                _report(
                    payload,
                    task,
                    world,
                    is_chief,
                    {"epoch": epoch, "step": n_steps, **({SCORE: -math.inf} if best else {})},
                    (epoch, n_steps),
                    history,
                    best,
                    resizes,
                )
        throttle.drain()
        if tracer:
            tracer.event("epoch_trained", epoch=epoch)
        if n_steps != epoch_steps:
            raise RuntimeError(f"rank {rank}: shard gave {n_steps} batches, expected {epoch_steps}")
        metrics = task.end_epoch(epoch)
        epoch_time = time.perf_counter() - start
        train_time += epoch_time
        samples = metrics.pop("_samples")
        train_samples += int(samples)
        metrics.update(
            rank_timing.gather(
                hvd,
                (n_steps - first) * cfg.data.batch_size,
                epoch_time,
                clock.waited,
                throttle.waited,
                n_steps - first,
                hvd.cross_rank(),
                f"rank_timing{epoch}",
            )
        )
        metrics.update(task.evaluate(readers["val"], "val", f"val{epoch}"))
        score = best.observe(epoch, metrics, task.networks()) if best else None
        metrics["learning_rate"] = lr_at(optim, world, (epoch + 1) * steps - 1, steps)
        metrics["peak_rss_mb"] = allreduce_max(hvd, peak_rss_mb(), f"rss{epoch}")
        metrics["epoch_time_s"] = epoch_time
        metrics["world_size"] = world
        last = epoch == optim.epochs - 1
        if stop and not last and stop.met(metrics):
            last = True
            if is_chief:
                print(
                    f"optim.stop_at {stop} reached at epoch {epoch + 1}/{optim.epochs} "
                    f"({stop.metric} {metrics[stop.metric]:.4f}): this epoch is the last",
                    flush=True,
                )
        if last:
            metrics["epochs_trained"] = epoch + 1
            if best:
                _use_best(best, epoch, task, metrics, is_chief)
            metrics.update(task.evaluate(readers["test"], "test", "test"))
            metrics["samples_per_sec"] = train_samples / train_time
            if tracer:
                tracer.event("test_done")
        if tracer:
            ids = np.concatenate(seen) if seen else np.array([])
            tracer.epoch(epoch, n_steps - first, ids, task.params, start_step=first)
        if logger:
            logger.check()
            history += logger.log_metrics(metrics, step=epoch)
            print(_epoch_line(epoch, optim.epochs, metrics, samples / epoch_time), flush=True)
            errors = task.errors() if last and isinstance(logger, RelayLogger) else None
            if errors is not None:
                report = diagnostics.per_class(errors.matrix, info.class_names)
                history += logger.log_metrics(diagnostics.per_class_metrics(report), step=epoch)
                # Drawn while this rank exports, checkpoints and reports (the other ranks
                # wait at the report), not before. (matplotlib's import is part of it: made
                # during training, it took CPU from a rank there, and the other rank waited
                # for it at every allreduce.)
                drawing = threading.Thread(
                    target=_log_error_pictures,
                    args=(logger, errors, report, info),
                    name="error-pictures",
                    daemon=True,
                )
                drawing.start()
            images = task.sample_images()
            if images is not None:
                with tempfile.TemporaryDirectory() as pictures:  # not in the checkpoint
                    png = str(Path(pictures) / "samples.png")
                    write_grid_png(images, png)
                    logger.log_artifact(png, f"samples/epoch_{epoch:03d}")
        reported = {**metrics, "epoch": epoch, **({SCORE: score} if best else {})}
        if logger:
            logger.wait_counted()
        _report(payload, task, world, is_chief, reported, (epoch + 1, 0), history, best)
        if tracer:
            tracer.event("epoch_reported", epoch=epoch)
        if last:
            break
    if drawing is not None:
        drawing.join()
    if restored and start_epoch >= end:
        _report_finished(payload, is_chief, restored, history, end - 1, best)
    for reader in readers.values():
        reader.source.close()


def _use_best(best: BestEpoch, epoch: int, task, metrics: dict, is_chief: bool) -> None:
    """The end of training with checkpoint.keep_best: the best epoch's parameters go back
    into the networks for the test pass and the export; the epoch is logged (1-based)."""
    assert best.epoch is not None and best.value is not None
    swapped = best.use_best(epoch, task.networks())
    metrics[BEST_EPOCH] = best.epoch + 1
    metrics[BEST_PREFIX + best.metric] = best.value
    if is_chief:
        which = f"epoch {best.epoch + 1}" + (" (not the last)" if swapped else " (the last)")
        print(
            f"checkpoint.keep_best: {which} scored best, {best.metric} {best.value:.4f}; its"
            " model is tested, logged and registered",
            flush=True,
        )


def _log_error_pictures(logger, errors: ErrorReport, report: dict, info: DatasetInfo) -> None:
    """The test split's per-class scores, confusion matrix and misclassified images as the
    run's artifacts (``errors/``). Pictures that cannot be drawn are a warning: the model
    trained, and is registered."""
    try:
        with tempfile.TemporaryDirectory() as tmp:  # not in the checkpoint
            folder = Path(tmp)
            scores, matrix, picture = (
                str(folder / name)
                for name in ("per_class.json", "confusion_matrix.png", "misclassified.png")
            )
            diagnostics.write_json(report, scores)
            logger.log_artifact(scores, "errors")
            diagnostics.confusion_png(errors.matrix, info.class_names, matrix)
            logger.log_artifact(matrix, "errors")
            if diagnostics.misclassified_png(errors, info.class_names, info.feature_shape, picture):
                logger.log_artifact(picture, "errors")
    except Exception as exc:
        print(f"warning: the test split's error pictures were not drawn: {exc}", flush=True)


def _epoch_bar(cfg: JobConfig, epoch: int, steps: int, first: int, world: int):
    """Rank 0's progress through an epoch, a line every ``tracking.progress_every_s``.

    Lines, not a bar redrawn in place: a worker's output reaches the driver's terminal
    through Ray's log stream, one line at a time, whatever the terminal is. An epoch shorter
    than the interval prints nothing but its end-of-epoch line."""
    if not cfg.tracking.progress_every_s:
        return None
    return ProgressBar(
        steps - first,
        f"epoch {epoch + 1:>3}/{cfg.optim.epochs}",
        unit="steps",
        out=sys.stdout,
        every_s=cfg.tracking.progress_every_s,
        rate_unit="samples",
        per_unit=cfg.data.batch_size * world,
    )


def _divergence_hint(cfg: JobConfig) -> str:
    clip = cfg.optim.grad_clip_norm
    return (
        f"Lower optim.learning_rate (now {cfg.optim.learning_rate:g})"
        + (f" or optim.grad_clip_norm (now {clip:g})" if clip else ", set optim.grad_clip_norm")
        + " or lengthen optim.warmup_epochs, and start a new run"
    )


def _report(
    payload: WorkerPayload,
    task,
    world: int,
    is_chief: bool,
    metrics: dict,
    position: tuple[int, int],
    history: list,
    best: BestEpoch | None,
    resizes: Sequence[Resize] = (),
) -> None:
    """Every rank reports (Ray Train waits for all); rank 0 attaches the checkpoint: the
    exported model at epoch ends, plus what resuming at ``position`` (next epoch, next step)
    needs: the metrics logged so far (``history``) and, mid-epoch, the earlier worlds of an
    epoch resumed with another world size (``resizes``)."""
    next_epoch, next_step = position
    import ray.train

    from pipeline.train import checkpoint

    if not is_chief:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if next_step == 0:  # the registry logs the model of the final epoch's checkpoint
            task.export(tmp, next_epoch - 1)
        state = {
            "next_epoch": next_epoch,
            "next_step": next_step,
            "world_size": world,
            "seed": payload.config.seed,
            "resume_key": payload.config.resume_key(),
            "run_id": payload.run_id,
            "metrics_log": history,
            "resizes": [[r.world, r.steps] for r in resizes] if next_step else [],
            "best": best.state() if best else None,
        }
        carried = best.for_checkpoint(None if next_step else next_epoch - 1) if best else None
        checkpoint.write(tmp, task.networks(), state, carried)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _report_finished(
    payload: WorkerPayload,
    is_chief: bool,
    path: str,
    history: list,
    epoch: int,
    best: BestEpoch | None,
) -> None:
    """Report the run's final checkpoint (``path``) again, with the last epoch's metrics.

    Training had ended before the previous driver died (while it registered the model, or
    while its workers outlived it for a moment): without this report the resumed job would
    train nothing, get no checkpoint from Ray, and have nothing to register."""
    import ray.train

    from pipeline.storage import resolve
    from pipeline.train import checkpoint

    metrics = _epoch_metrics(history, epoch)
    metrics["epoch"] = epoch
    if best:
        metrics[SCORE] = best.score(metrics.get(best.metric, math.nan))
    if not is_chief:
        ray.train.report(metrics)
        return
    loc = resolve(payload.config.storage.resolved_path(), payload.config.s3)
    with checkpoint.local_copy(loc.filesystem, path) as directory:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _epoch_metrics(history: list, epoch: int) -> dict[str, float]:
    """The metrics logged at ``epoch``, from a checkpoint's history of (key, value, time, step)."""
    return {key: value for key, value, _, step in history if int(step) == epoch}


def _resume(
    payload: WorkerPayload, task, device, world: int, is_chief: bool, best: BestEpoch | None
) -> tuple[int, int, list, str | None, list[Resize]]:
    """(epoch, step) to start from, after the newest valid checkpoint of this run if any, the
    metrics logged up to that checkpoint, its path, and the worlds that trained part of that
    epoch before (the last one the checkpoint's, when it had another world size). ``best``
    takes up the checkpoint's record of the best epoch so far."""
    from pipeline.storage import resolve
    from pipeline.train import checkpoint

    def warn(message: str) -> None:
        if is_chief:
            print(f"warning: {message}", flush=True)

    cfg = payload.config
    loc = resolve(cfg.storage.resolved_path(), cfg.s3)
    run_dir = loc.join(payload.run_name)
    state = checkpoint.resume(loc.filesystem, run_dir, task.networks(), device, warn)
    if state is None:
        return 0, 0, [], None, []
    name = state["checkpoint"].rstrip("/").rsplit("/", 1)[-1]
    if state.get("resume_key") != cfg.resume_key():
        raise ConfigError(
            f"checkpoint {name} was made with another model, data set, batch size, shuffle "
            "buffer or seed; resume with the run's original settings or start a new run"
        )
    if best:
        best.resume(state, task.networks())
    epoch, step = int(state["next_epoch"]), int(state["next_step"])
    resizes = [Resize(int(w), int(n)) for w, n in state.get("resizes", [])] if step else []
    before = int(state["world_size"])
    if step and before != world:
        # Every row once: this world deals among its ranks what the other one left.
        resizes.append(Resize(before, step))
        if is_chief:
            print(
                f"checkpoint {name} is from step {step} of epoch {epoch + 1} with {before} "
                f"workers; the rows they had not trained yet are dealt to {world}",
                flush=True,
            )
        step = 0
    if is_chief and epoch >= cfg.optim.epochs:
        print(
            f"resuming from checkpoint {name}: training had finished; registering its model",
            flush=True,
        )
    elif is_chief:
        print(f"resuming from checkpoint {name}: epoch {epoch + 1}, step {step}", flush=True)
    return epoch, step, list(state.get("metrics_log", [])), state["checkpoint"], resizes
