"""Thread settings: those every worker process needs before MXNet is imported, and a lower
priority for a driver's thread whose work is off the way to the first step."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

#: The niceness a background thread of the driver adds to its own (see :func:`yield_cores`).
BACKGROUND_NICENESS = 10


def thread_env(threads: int) -> dict[str, str]:
    """Environment for ``threads`` compute threads per process (OMP and MXNet's engine).

    With one thread each, N workers share N cores without oversubscription. MXNet's engine
    is its default, ThreadedEnginePerDevice; naming it in MXNET_ENGINE_TYPE would only make
    every worker print a line saying so when it starts.
    """
    n = str(threads)
    return {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MXNET_CPU_WORKER_NTHREADS": n,
        "MXNET_CPU_PRIORITY_NTHREADS": n,
    }


def yield_cores() -> None:
    """Lower the calling thread's scheduling priority (niceness +10), so that on a machine
    whose cores are all busy the processes on the way to the first step run first (Ray
    Train's controller and workers, starting while the driver opens the MLflow run: warm
    start of digits-cnn on 2 cores, launch to first step lower in 4 of 6 alternated pairs,
    median 11.5 -> 10.0 s). Linux only, where a thread has a niceness of its own; elsewhere,
    and where the system refuses, nothing changes."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICENESS
        )
