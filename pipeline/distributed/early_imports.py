"""A training worker starts importing MXNet and Horovod the moment Ray starts its process.

Between a worker process's birth and the call of the train function, Ray Train sets the
worker up: the actor's class arrives and is imported (Ray Train, pandas, Ray Data), the
controller initializes the worker group in several round trips, the workers meet at a
barrier. Only then did the train function import MXNet and Horovod (about 0.7 s of one core,
most of it MXNet's operator registration), with the first step waiting on it. Started in a
thread by Ray's worker-process setup hook, the import fills the gaps of that set-up instead:
warm start of digits-cnn on 2 cores, launch to the first step 7.70 -> 6.95 s (medians of 4
alternated pairs, lower in 3 of them).

Only the training workers get the hook (through Ray Train's ``worker_runtime_env``); Train's
controller and its helper actors never import MXNet. On a Ray the job started, the workers
have no runtime env, and Ray's construction of the worker actor starts the imports instead
(pipeline/distributed/local_workers.py).
"""

from __future__ import annotations

import contextlib
import threading
import time

#: When this process's import thread started (``time.time()``); None: not started here.
_started_at: float | None = None


def runtime_env_vars() -> dict[str, str]:
    """The variables that make Ray call :func:`start` in each process started with them.

    Ray's public ``worker_process_setup_hook`` is a job-wide setting (every process of the
    job: Train's controller and helper actors too); per actor, Ray reads the hook from this
    variable, which is what its job-wide setting turns into. A Ray without it: {} (the
    workers then import MXNet in the train function, as before).
    """
    try:
        from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    except ImportError:
        return {}
    return {WORKER_PROCESS_SETUP_HOOK_ENV_VAR: f"{__name__}.start"}


def start() -> None:
    """Import MXNet and Horovod's MXNet module in a daemon thread (Ray's setup hook: it must
    return for the worker to start serving). The train function's own imports then find
    them done, or wait for the thread's to finish (Python's per-module import locks)."""
    global _started_at
    if _started_at is None:
        _started_at = time.time()
        threading.Thread(target=_import, name="early-imports", daemon=True).start()


def started_at() -> float | None:
    """When :func:`start` began the imports in this process; None if it did not."""
    return _started_at


def _import() -> None:
    # ``import pipeline`` came first (this module's package): MXNet's import is the lean one
    # (pipeline/mxnet_import.py). A failure here is left to the train function's own import,
    # which raises it where the job reports errors.
    with contextlib.suppress(Exception):
        import horovod.mxnet  # noqa: F401  # imports mxnet first
