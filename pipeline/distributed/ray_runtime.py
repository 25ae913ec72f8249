"""The Ray a driver works in: a local one started and ended here, or the cluster at
RAY_ADDRESS; and SIGTERM turned into the Ctrl-C that unwinds a driver cleanly."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pipeline.distributed.threads import thread_env
from pipeline.process_env import environment
from pipeline.secret_files import ensure_private

Progress = Callable[[str], None]


@contextlib.contextmanager
def ray_runtime(
    cpus: float,
    threads: int,
    progress: Progress,
    env: Mapping[str, str] | None = None,
    dashboard: bool = False,
) -> Iterator[bool]:
    """A local Ray with room for ``cpus`` CPUs of work, its processes set to ``threads``
    compute threads each, started and ended here; or a connection to the cluster at
    RAY_ADDRESS. ``env``: more variables every Ray process gets (a training job's MLflow
    retry settings, say). ``dashboard``: a local Ray runs the dashboard's APIs (State, Jobs)
    too; a Ray that outlives one Ray Train run needs them (see the call in
    pipeline/tune/search.py). Yields whether the Ray was started here (and ends here)."""
    import ray

    every = {
        **thread_env(threads),
        "PYTHONWARNINGS": "ignore",
        # A worker killed by a signal (an MXNet crash, say) leaves its Python stack in its log.
        "PYTHONFAULTHANDLER": "1",
        # Ray Train re-routes print() through its logger, which shows every line twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        # How often Train's controller collects the workers' reports. A worker holds one
        # uncollected report; the next ray.train.report blocks until the controller's poll
        # takes it. At Ray's default of 2 s every mid-epoch checkpoint (checkpoint.every_steps)
        # cost 1.35 s of training (make bench, checkpoint_stall); at 0.2 s about 0.02 s.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get(
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"
        ),
        # Ray Train watches for node drains (spot preemption) with an actor of its own, one
        # more process per worker group, started beside the train function's start, whose
        # only use is ray.train.get_preemption_info(): our train function never asks (a
        # lost node is a lost worker group, resumed from its checkpoint). Warm start on a
        # one-machine cluster: about 1.1 s of one core taken from the workers' start. Its
        # constructor arguments also live in the object store, with an error-level line on
        # a local Ray's shutdown (github.com/ray-project/ray/issues/53727).
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get(
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"
        ),
        # pyarrow's allocator (mimalloc) keeps freed pages for a while before it gives them
        # back; a streaming reader frees a row group's buffers every few milliseconds, from
        # dozens of threads, so a worker held up to 170 MB it no longer used. At 0 they go
        # back when freed: digits-fcn streaming 640,000 rows from SeaweedFS, the workers'
        # peak RSS 609/678 and 623/628 MB -> 560/509 and 573/565 MB, samples/s within
        # the machine's swing (2 alternated pairs).
        "MIMALLOC_PURGE_DELAY": os.environ.get("MIMALLOC_PURGE_DELAY", "0"),
    }
    for name in ("MXTRAIN_TRACE_DIR", "MLFLOW_S3_ENDPOINT_URL"):
        if name in os.environ:
            every[name] = os.environ[name]
    every.update(env or {})
    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():  # an embedding program (or a test) owns Ray
        yield False
        return
    forget_ray_token()
    if address:
        progress(f"connecting to the Ray cluster at {address}")
        # Inside a submitted job, the job's runtime env already set some of these; Ray
        # refuses the same key twice, so only what differs is passed again. A driver run by
        # hand against the cluster has no job env: everything is passed (its own shell's
        # variables never reach the cluster's workers otherwise).
        inherited = _submitted_job_env_vars()
        runtime_env = {"env_vars": {k: v for k, v in every.items() if inherited.get(k) != v}}
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        private_ray_token()
        # Ray Train gives its controller this variable in a runtime env of its own; a local
        # Ray's processes have it from the start (below), and the controller none
        # (pipeline/distributed/trainer.py).
        every.setdefault(
            "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC",
            os.environ.get("RAY_WARN_BLOCKING_GET_INSIDE_ASYNC", "0"),
        )
        # The workers may ask for more CPUs than the machine has (2 x 1 on a 1-core laptop):
        # logical CPUs are slots, not cores.
        num_cpus = max(os.cpu_count() or 1, int(cpus + 0.999))
        progress(f"starting a local Ray ({num_cpus} logical CPUs); set RAY_ADDRESS for a cluster")
        # The variables go into the environment the local Ray's processes start with, not
        # into a runtime env for the job: the raylet hands its environment to every worker
        # it starts, while a worker whose task or actor has a runtime env starts through
        # Ray's setup_worker, one more Python start and `import ray` (about 0.45 s of one
        # core) before the worker proper. Ray Train's controller and its synchronization
        # actor now start without one: fashion-cnn, 2 workers, launch to the first step
        # 9.96 -> 8.58 s (medians of 3 alternated runs); and the training workers too
        # (pipeline/distributed/local_workers.py): 8.36 -> 7.75 s (4 pairs).
        with environment(every):
            ray.init(
                num_cpus=num_cpus,
                # Without the dashboard unless asked: its head starts nine Python processes
                # (State, Jobs, Serve, Data, Metrics... APIs) that a Ray ending with one job never
                # serves, and on 2 cores their start-up is taken from the job's: digits-cnn, 2
                # workers, launch to the first step 21.3 s instead of 23.5 s (medians of 3
                # alternated runs). Ray still runs its dashboard process for usage stats only,
                # bound to loopback.
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                logging_level=logging.WARNING,
                configure_logging=True,
                # Ray starts its workers at nice 15 so that its own processes stay responsive on
                # a busy cluster node. On a machine where the workers are the job, that lets every
                # wake-up of a Ray process (raylet, GCS, dashboard, Train's controller) preempt a
                # worker, and the other worker then waits in the allreduce. At 0 they share the
                # cores fairly: fashion-cnn, 2 workers on 2 cores, epoch 2 of 3 alternated pairs:
                # +2.2%, +6.6%, +4.5% samples/s.
                # Nor does Ray start a worker per CPU ahead for the first driver: when every
                # actor of the job had a runtime env, none of them could serve it, and their
                # start took CPU from the job's own: launch to first step 19.6 s instead of
                # 20.8 s (digits-cnn, medians of 3 alternated runs). Now that the controller
                # has none, one of them would serve it: 3 alternated pairs (fashion-cnn) moved
                # the controller's start 0.3 s sooner and ray.init by as much either way.
                # Nor does it collect metrics: every Ray process records and the dashboard agent
                # exports them for a Prometheus that a Ray ending with one job never has.
                _system_config={
                    "worker_niceness": 0,
                    "prestart_worker_first_driver": False,
                    "enable_metrics_collection": False,
                },
            )
    stop_on_sigterm()
    try:
        yield not address
    finally:
        if not address:
            _kill_autoscaler_monitor()
        ray.shutdown()


def _kill_autoscaler_monitor() -> None:
    """End a local Ray's autoscaler monitor at once, before ``ray.shutdown`` ends the rest.

    A Ray started by ``ray.init`` has no autoscaler, and its monitor nothing to save; on the
    SIGTERM that ``ray.shutdown`` sends it, after the GCS is gone, it tries to tell the
    drivers through the GCS that the autoscaler failed, and ``ray.shutdown`` waits a second
    for it before it kills it: the end of every job on a local Ray took 1.37 s, 0.46-0.50 s
    now (ray.shutdown after one task, 2 runs each). Ray keeps its processes' handles in
    private state: a Ray without them is shut down as before."""
    import ray
    from ray._private import ray_constants

    node = getattr(ray._private.worker, "_global_node", None)
    for info in getattr(node, "all_processes", {}).get(ray_constants.PROCESS_TYPE_MONITOR, []):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            info.process.kill()
            info.process.wait(timeout=5)


def forget_ray_token() -> None:
    """Make the next ``ray.init`` read the token of the environment as it is now. Ray's core
    worker reads the token once a process and caches it (``AuthenticationTokenLoader``), so a
    process that ran a job on one Ray and then joins another (make bench's groups, a
    notebook, Ray Tune after a local job) presented the first Ray's token: InvalidAuthToken.
    Ray's own tests reset it the same way (ray._private.authentication_test_utils)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]
    except ImportError:  # a Ray without token auth: nothing is cached
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def private_ray_token() -> None:
    """The token a local Ray's token auth uses, readable by its owner only. ``ray.init``
    writes ``~/.ray/auth_token`` with the umask's mode (0644: every local user could then
    use the dashboard's Jobs API as us) and through any link planted there; so it is made,
    or tightened, here first, and Ray reads it (RAY_AUTH_TOKEN_PATH when set)."""
    # Token auth, as Ray turns it on for a new local Ray anyway, but said explicitly: Ray
    # then starts without a warning line in every job's output that tells how to opt out. A
    # user's own RAY_AUTH_MODE stands.
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        forget_ray_token()  # Ray's config holds the mode it read while the variable was unset
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    default = Path.home() / ".ray" / "auth_token"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or default)
    ensure_private(path, lambda: secrets.token_hex(32))


def _submitted_job_env_vars() -> dict[str, str]:
    """The env_vars of the runtime env of the submitted job this driver runs in (Ray's job
    supervisor hands the job's config to its entrypoint in RAY_JOB_CONFIG_JSON_ENV_VAR); {} for
    a driver started by hand."""
    import json

    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        env_vars = (config.get("runtime_env") or {}).get("env_vars") or {}
    except (ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in env_vars.items()}


#: Signals received by :func:`stop`, newest last.
RECEIVED_SIGNALS: list[int] = []


def stop(signum: int, _frame) -> None:
    """SIGTERM unwinds the driver as Ctrl-C does. It must be a KeyboardInterrupt: Ray's
    ``ray.get`` lets that one through and mangles other exceptions raised in a handler."""
    RECEIVED_SIGNALS.append(signum)
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM stops the job in the main thread (see :func:`stop`). Called again after
    ``ray.init``, which installs handlers of its own (a Python one, and a native one that
    aborts the process)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
