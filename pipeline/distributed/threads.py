"""Thread settings every worker process needs before MXNet is imported."""

from __future__ import annotations


def thread_env(threads: int) -> dict[str, str]:
    """Environment for ``threads`` compute threads per process (OMP and MXNet's engine).

    With one thread each, N workers share N cores without oversubscription.
    """
    n = str(threads)
    return {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MXNET_CPU_WORKER_NTHREADS": n,
        "MXNET_CPU_PRIORITY_NTHREADS": n,
        "MXNET_ENGINE_TYPE": "ThreadedEnginePerDevice",
    }
