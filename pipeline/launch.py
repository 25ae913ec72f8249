"""The driver: from a JobConfig to a finished, tracked and registered run.

preflight (pipeline/preflight.py: data contract, storage)
  -> Ray starts (local, or the cluster at RAY_ADDRESS)
  -> Ray Train v2 DataParallelTrainer + our Horovod backend, each worker reads its planned shard;
     meanwhile (a thread) the model's fit to the data is checked, a new MLflow run opened,
     and its id handed to the workers (pipeline/distributed/handoff.py)
  -> model logged from the final checkpoint, registered, alias moved (in a thread) while a
     local Ray shuts down
  -> run FINISHED (FAILED on any error, nothing registered)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import JobConfig
from pipeline.data.contract import DatasetInfo
from pipeline.data.examples import input_example
from pipeline.distributed.failures import user_error
from pipeline.distributed.handoff import RunIdHandoff
from pipeline.distributed.kv_channel import Receiver
from pipeline.distributed.ray_runtime import RECEIVED_SIGNALS, ray_runtime, stop_on_sigterm
from pipeline.distributed.threads import yield_cores
from pipeline.errors import ConfigError, JobStopped, PipelineError, TrainingError
from pipeline.preflight import check_model_fits, describe_data, preflight
from pipeline.redact import redact
from pipeline.storage import endpoint_url, resolve
from pipeline.tracking import mlflow_run, outage, registry, summary
from pipeline.tracking.client import client_for
from pipeline.tracking.names import TAG_GATE, TAG_NOTE, TAG_RELAY, TAG_TRAIN_RUN
from pipeline.tracking.registry import Registration
from pipeline.tracking.relay import DriverRelay
from pipeline.tracking.run_logger import RunLogger
from pipeline.train import checkpoint, trace
from pipeline.train.best_epoch import SCORE
from pipeline.train.loop import WorkerPayload

Progress = Callable[[str], None]


@dataclass(frozen=True)
class JobResult:
    run_id: str
    experiment: str
    #: Empty when tracking is off (tracking.enabled=false).
    tracking_uri: str
    metrics: dict
    #: None when registration or tracking is off.
    registration: Registration | None
    alias: str
    seconds: float
    #: The final checkpoint (a ``ray.train.Checkpoint``; read it with
    #: :func:`verified_checkpoint`): what a job that builds on the trained weights reads.
    checkpoint: Any = None


def ray_session(cfg: JobConfig, progress: Progress) -> contextlib.AbstractContextManager[bool]:
    """A local Ray for the job's workers, started and ended here, or a connection to the
    cluster at RAY_ADDRESS; yields whether the Ray ends with the job."""
    return ray_runtime(
        cfg.scaling.num_workers * cfg.scaling.cpus_per_worker,
        cfg.scaling.threads_per_worker,
        progress,
        env=outage.FAST_FAILING,  # our MLflow calls retry by themselves (tracking/outage.py)
    )


def run_name(cfg: JobConfig, key: str) -> str:
    """Ray Train's name for a job (its checkpoints live under <storage>/<name>/): the recipe
    and 8 hex digits of ``key``, a random one for a new run (the run's TAG_TRAIN_RUN keeps
    the name), an untracked job's own id, or the MLflow run's id for a run from before the
    tag."""
    return f"{cfg.recipe}-{key[:8]}"


def trainer_for(
    cfg: JobConfig,
    info: DatasetInfo,
    run: RunIdHandoff,
    name: str,
    relay: str,
    callbacks: Sequence[Any] = (),
    ray_ends_with_job: bool = False,
    driver_ends_with_job: bool = False,
):
    """The job's Ray Train trainer, named ``name``; ``run``: where the workers find the
    MLflow run's id; ``relay``: the channel of their MLflow calls to the driver (empty:
    untracked). ``ray_ends_with_job``: the job started this Ray and shuts it down;
    ``driver_ends_with_job``: this process ends when the training does
    (pipeline/distributed/trainer.py)."""
    import ray.train

    from pipeline.distributed import early_imports
    from pipeline.distributed.horovod_backend import HorovodConfig
    from pipeline.distributed.trainer import OwnDataTrainer
    from pipeline.train.loop import train_worker

    # (min, max): Ray Train v2 starts as many workers as fit and grows the group when it can;
    # every start resumes from the newest checkpoint (loop._resume).
    workers: Any = cfg.scaling.num_workers
    if cfg.scaling.elastic:
        workers = (cfg.scaling.min_workers, cfg.scaling.num_workers)  # stubs know only v1's int
    storage = resolve(cfg.storage.resolved_path(), cfg.s3)
    payload = WorkerPayload(cfg, info, run, relay, name)
    return OwnDataTrainer(
        lambda config: train_worker(config["payload"]),
        train_loop_config={"payload": payload},
        backend_config=HorovodConfig.from_scaling(cfg.scaling),
        scaling_config=ray.train.ScalingConfig(  # type: ignore[call-arg]  # v2; stubs see v1
            num_workers=workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
            elastic_resize_monitor_interval_s=cfg.scaling.elastic_resize_interval_s,
        ),
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]  # v2 RunConfig; stubs see v1
            name=payload.run_name,
            storage_path=storage.path,
            storage_filesystem=storage.filesystem,
            checkpoint_config=_checkpoint_config(cfg),
            # A failed worker group restarts from the newest valid checkpoint (loop._resume).
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            # Train logs a failed worker's traceback at INFO; run_job turns it into one line
            # (the full text stays in the Ray session's log files).
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
            # The workers import MXNet while Ray Train sets them up (early_imports.py).
            worker_runtime_env={"env_vars": early_imports.runtime_env_vars()},
        ),
        ray_ends_with_job=ray_ends_with_job,
        driver_ends_with_job=driver_ends_with_job,
    )


def fit(trainer):
    """Run the distributed training; return Ray Train's Result."""
    from pipeline.distributed.failures import stop_on_user_errors

    trace.driver_event("fit")
    with stop_on_user_errors():
        return trainer.fit()


def _checkpoint_config(cfg: JobConfig):
    """The keep_last newest checkpoints; with checkpoint.keep_best, the best N by the score
    each epoch reports (pipeline/train/best_epoch.py), Ray Train keeping the newest besides."""
    import ray.train

    keep = cfg.checkpoint
    if not keep.keep_best:
        return ray.train.CheckpointConfig(num_to_keep=keep.keep_last)
    return ray.train.CheckpointConfig(
        num_to_keep=keep.keep_best, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
    )


def _worker_error(exc: BaseException) -> str:
    """The last meaningful line of a worker's error, for a one-line message."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text = str(cause) or text
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or [type(exc).__name__])[-1][:500]


def run_job(
    cfg: JobConfig,
    progress: Progress = print,
    resume: str | None = None,
    run_tags: Mapping[str, str] | None = None,
    callbacks: Sequence[Any] = (),
    driver_ends_with_job: bool = False,
) -> JobResult:
    """Train, track and register one job. Raises PipelineError for anything a user can fix.

    ``resume``: the MLflow run id of an interrupted job (its driver died or was stopped) to
    continue, under the same run, from that run's newest valid checkpoint.

    ``run_tags`` are added to a new MLflow run (a search's trial: ``mlflow.parentRunId``);
    ``callbacks`` go to Ray Train's RunConfig (a search's trial reports to Ray Tune).

    ``driver_ends_with_job``: the calling process ends when this job does (``python -m
    jobs.train``), so Ray frees the training's placement group should the training end
    badly; Ray Train's actor that would otherwise watch for that is left out.

    With ``tracking.enabled=false`` nothing goes to MLflow: the job trains and checkpoints
    under a run id of its own, and the result carries no registration."""
    start = time.perf_counter()
    tracked = cfg.tracking.enabled
    if resume and not tracked:
        raise ConfigError(
            "--resume continues an MLflow run, and tracking.enabled=false records none; "
            "resume with tracking on, or start a new run"
        )
    trace.driver_event("driver_process", t=trace.process_start_time())
    trace.driver_event("run_job")
    # The model's fit to the data (an MXNet import: most of the preflight's time) is checked
    # while Ray starts the workers, before the run is opened (_open_run); a worker refuses a
    # misfit too, so an untracked job checks it there.
    info = preflight(cfg, model_fit=False)
    trace.driver_event("preflight_done")
    for line in describe_data(cfg, info):
        progress(line)
    uri = cfg.tracking.resolved_uri()
    if endpoint_url(cfg.s3):
        # MLflow's S3 artifact store takes its endpoint from this variable only (rank 0 logs
        # sample images; ray_session passes it on to the workers).
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint_url(cfg.s3))
    previous = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm()
    with outage.fast_failing():  # our retries, not MLflow's minutes-long ones
        opening: Callable[[], tuple[str, str, mlflow_run.Heartbeat]] | None = None
        run_id: str | None = None
        heartbeat = None
        status = "FAILED"
        registration = None
        registering: Callable[[], Any] | None = None
        metrics: dict = {}
        error = ""
        # The workers' MLflow calls, logged by this process (pipeline/tracking/relay.py).
        relay = DriverRelay(Receiver(f"relay-{uuid.uuid4().hex}")) if tracked else None
        try:
            with ray_session(cfg, progress) as ray_ends_with_job:
                trace.driver_event("ray_ready")
                if not tracked:
                    run_id = uuid.uuid4().hex
                    name, handoff = run_name(cfg, run_id), RunIdHandoff.of(run_id)
                    progress(
                        f"run {run_id}: tracking off (tracking.enabled=false), nothing goes to"
                        " MLflow"
                    )
                elif resume:  # where the run's checkpoints are is known first
                    run_id, name, heartbeat = _reopen_run(cfg, uri, resume, progress)
                    handoff = RunIdHandoff.of(run_id)
                    assert relay is not None
                    _attach(relay, cfg, uri, run_id, resumed=True)
                else:
                    # A new run is opened (its parameters, data sets, tags: seconds of one
                    # core) while Ray Train starts the workers, and its id handed to them
                    # through Ray (pipeline/distributed/handoff.py); so Ray Train's name for
                    # it is chosen here, before the run exists, and the run is tagged with it
                    # (TAG_TRAIN_RUN: where --resume finds its checkpoints).
                    name, handoff = run_name(cfg, uuid.uuid4().hex), RunIdHandoff.pending()
                # Ray Train's modules are imported first: the MLflow thread's imports would
                # take turns with them at the GIL, on the way to the workers' start.
                trainer = trainer_for(
                    cfg,
                    info,
                    handoff,
                    name,
                    relay.receiver.channel if relay else "",
                    callbacks,
                    ray_ends_with_job=ray_ends_with_job,
                    driver_ends_with_job=driver_ends_with_job,
                )
                if tracked and not resume:
                    opening = _in_background(
                        "open-mlflow-run",
                        lambda: _open_run(
                            cfg, info, uri, progress, run_tags or {}, name, handoff, relay
                        ),
                    )
                try:
                    result = _train(cfg, trainer)
                except Exception:
                    if opening is not None:
                        opening()  # a run that could not be opened stopped the workers: say why
                    raise
                finally:
                    if opening is not None:
                        # However the training ended (Ctrl-C, SIGTERM included), the run, if
                        # it opened, is known from here on: it is ended and its heartbeat
                        # stopped below.
                        with contextlib.suppress(Exception):
                            run_id, _, heartbeat = opening()
                        with contextlib.suppress(Exception):
                            handoff.withdraw()
                    if relay is not None:
                        # The workers have returned: what they sent is taken while this
                        # process is still connected to the Ray, and sent on below. On a Ray
                        # that outlives the job (a cluster, a search's trials) it first lands,
                        # so that a driver killed now leaves nothing unsent in the channel; a
                        # local Ray's channel ends with it, and its last calls land meanwhile
                        # (0.03-0.24 s at the end of a digits-cnn job).
                        with contextlib.suppress(Exception):
                            relay.stop_receiving(flush=not ray_ends_with_job)
                if opening is not None:
                    run_id, _, heartbeat = opening()  # raises if the run could not be opened
                opened = run_id
                assert opened is not None
                trace.driver_event("fit_done")
                metrics = {
                    k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)
                }
                # The model is logged and registered while the local Ray shuts down: neither
                # needs the other (the checkpoint is in storage), and each takes seconds.
                registering = (
                    _in_background(
                        "register-model",
                        lambda: _register(cfg, info, opened, uri, result, metrics, progress),
                    )
                    if tracked
                    else None
                )
            trace.driver_event("ray_down")
            registration = registering() if registering else None
            trace.driver_event("registered")
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit) as exc:
            # SIGTERM (`ray job stop`, an eviction) or Ctrl-C.
            status = "KILLED"
            number = RECEIVED_SIGNALS[-1] if RECEIVED_SIGNALS else signal.SIGINT
            if isinstance(exc, SystemExit):  # another library's SIGTERM handler
                number = signal.SIGTERM
            how = (
                f"MLflow run {run_id} is KILLED; continue it from its last checkpoint with the"
                f" same arguments and --resume {run_id}"
                if tracked
                else f"run {run_id} (not tracked) stopped"
            )
            error = f"stopped by {signal.Signals(number).name}"
            raise JobStopped(f"stopped by {signal.Signals(number).name}: {how}", number) from None
        except Exception as exc:
            error = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            raise
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)
            if heartbeat is not None:
                heartbeat.stop()
            if status != "FINISHED" and registering is not None and run_id is not None:
                # Stopped while the model was being registered: let that finish (it is bounded
                # by tracking.outage_wait_s), so that nothing lands after the withdrawal.
                with contextlib.suppress(Exception):
                    registering()
                registry.withdraw_versions(uri, run_id)
            if relay is not None:
                relay.close()  # before the run's description, which reads its metrics
            if tracked and run_id is not None:
                _describe_run(cfg, uri, run_id, status, metrics, registration, error)
                mlflow_run.end_run(uri, run_id, status, cfg.tracking.outage_wait_s, progress)
            trace.driver_event("run_ended")
    return JobResult(
        run_id=opened,
        experiment=cfg.tracking.experiment,
        tracking_uri=uri if tracked else "",
        metrics=metrics,
        registration=registration,
        alias=cfg.tracking.alias,
        seconds=time.perf_counter() - start,
        checkpoint=result.checkpoint,
    )


def _in_background(name: str, work: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``work`` in a thread called ``name``; the function returned waits for it and
    returns its result or raises its exception. The thread is a daemon: a stopped job does
    not wait for it."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # handed to the caller, who decides
            box["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def wait() -> Any:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return wait


def _open_run(
    cfg: JobConfig,
    info: DatasetInfo,
    uri: str,
    progress: Progress,
    tags: Mapping[str, str],
    name: str,
    handoff: RunIdHandoff,
    relay: DriverRelay | None,
) -> tuple[str, str, mlflow_run.Heartbeat]:
    """Check the model's fit to the data, open a new run, Ray Train's ``name`` among its
    tags, and hand its id to the workers (or tell them that it could not be opened); then,
    if the model will be registered, import what its logging needs. Its id, name and the
    driver's heartbeat."""
    yield_cores()  # the workers' start comes first (their rank 0 needs the id seconds later)
    try:
        check_model_fits(cfg, info)  # no run for a job that cannot train
        relayed = {TAG_RELAY: relay.receiver.channel} if relay is not None else {}
        run_id = mlflow_run.start_run(cfg, info, {**tags, TAG_TRAIN_RUN: name, **relayed})
    except BaseException:
        with contextlib.suppress(Exception):  # the error that matters is the one raised
            handoff.fail()
        raise
    handoff.publish(run_id)
    if relay is not None:
        _attach(relay, cfg, uri, run_id)
    trace.driver_event("run_open")
    progress(f"MLflow run {run_id} {_where(cfg, uri)}")
    heartbeat = mlflow_run.Heartbeat(uri, run_id)
    if cfg.tracking.register:
        # What logging the model at the job's end imports (MLflow's pyfunc flavour and its
        # loaders: 0.3 s of one core) is imported now, while the workers train, and not
        # between the last epoch and the job's exit.
        import mlflow.pyfunc  # noqa: F401
    return run_id, name, heartbeat


def _attach(relay: DriverRelay, cfg: JobConfig, uri: str, run_id: str, resumed: bool = False):
    """The workers' MLflow calls go to the run from now on."""
    relay.attach(RunLogger(uri, run_id, cfg.tracking.outage_wait_s), resumed=resumed)
    if resumed:  # a new run has the tag from its start
        mlflow_run.set_tags(uri, run_id, {TAG_RELAY: relay.receiver.channel})


def _where(cfg: JobConfig, uri: str) -> str:
    return f"(experiment {cfg.tracking.experiment!r}, {redact(uri)})"


def _reopen_run(
    cfg: JobConfig, uri: str, resume: str, progress: Progress
) -> tuple[str, str, mlflow_run.Heartbeat]:
    """Reopen the run ``resume``: its id, Ray Train's name it trained under, and the driver's
    heartbeat in it."""
    tags = mlflow_run.reopen_run(cfg, resume)
    name = tags.get(TAG_TRAIN_RUN) or run_name(cfg, resume)
    # A version its stopped driver registered but never promoted goes; the job registers anew.
    registry.withdraw_versions(uri, resume)
    storage = resolve(cfg.storage.resolved_path(), cfg.s3)
    if checkpoint.drop_torn_train_snapshot(storage.filesystem, storage.join(name)):
        progress(f"Ray Train's snapshot of run {resume} was cut off by its stopped driver; removed")
    trace.driver_event("run_open")
    progress(f"resuming MLflow run {resume} {_where(cfg, uri)}")
    return resume, name, mlflow_run.Heartbeat(uri, resume)


def _train(cfg: JobConfig, trainer):
    """Ray Train's result; a worker's user error as itself, any other failure explained."""
    try:
        return fit(trainer)
    except PipelineError:
        raise
    except Exception as exc:
        import ray.train

        if isinstance(exc, ray.train.TrainingFailedError):
            found = user_error(exc)
            if found is not None:  # bad data found by a worker: exit code 2
                raise found from None
            raise TrainingError(
                f"training failed (scaling.max_failures={cfg.scaling.max_failures} "
                f"restarts allowed): {_worker_error(exc)}"
            ) from exc
        raise


def _describe_run(
    cfg: JobConfig,
    uri: str,
    run_id: str,
    status: str,
    metrics: dict,
    registration: Registration | None,
    error: str,
) -> None:
    """Replace the run's description with how it ended; never raises (the run's status
    matters more than its note)."""
    registered = ""
    if registration is not None:
        alias = f" @{cfg.tracking.alias}" if registration.promoted else " (alias not moved)"
        registered = f"models:/{registration.name}/{registration.version}{alias}"
    with contextlib.suppress(Exception):
        client = client_for(uri)
        tags = client.get_run(run_id).data.tags
        note = summary.run_description(
            cfg,
            tags,
            metrics,
            status,
            registered=registered,
            verdict=registration.verdict if registration is not None else "",
            error=error,
        )
        client.set_tag(run_id, TAG_NOTE, note)


def _register(cfg, info, run_id: str, uri: str, result, metrics: dict, progress: Progress):
    """Log the final checkpoint's model, register it, move the alias if it passed its gate;
    an unreachable tracking server is waited for (tracking.outage_wait_s)."""
    if result.checkpoint is None:
        raise TrainingError("training ended without a checkpoint; nothing to register")
    with verified_checkpoint(result.checkpoint) as ckpt:
        example = input_example(info, cfg.s3)
        registration = outage.retry_while_unreachable(
            lambda: registry.log_and_register_model(cfg, run_id, ckpt, example, metrics),
            uri,
            "registering the model",
            cfg.tracking.outage_wait_s,
            progress,
        )
    if registration is not None:
        outage.retry_while_unreachable(
            lambda: mlflow_run.set_tags(uri, run_id, {TAG_GATE: registration.verdict}),
            uri,
            "tagging the run",
            cfg.tracking.outage_wait_s,
            progress,
        )
    return registration


@contextlib.contextmanager
def verified_checkpoint(final) -> Iterator[str]:
    """The final checkpoint (a ``ray.train.Checkpoint``) as a local folder, fetched file by
    file from its manifest and verified before its model is registered: storage may have
    been written by someone else since the worker wrote it."""
    name = final.path.rstrip("/").rsplit("/", 1)[-1]
    try:
        with checkpoint.local_copy(final.filesystem, final.path) as directory:
            checkpoint.verify(directory)
            yield directory
    except checkpoint.CheckpointError as exc:
        raise TrainingError(
            f"the final checkpoint {name} does not verify ({exc}); nothing was registered"
        ) from None
