"""The one place that decides which device a worker computes on.

A GPU worker uses the GPU matching its Horovod local rank (Ray gives each worker one GPU and
Horovod's local rank orders the workers of a node). Nothing here has a GPU: this function is
unit-tested on the CPU with a stand-in for ``mxnet``.
"""

from __future__ import annotations

from typing import Any


def worker_context(mx: Any, use_gpu: bool, local_rank: int) -> Any:
    """``mx.gpu(local_rank)`` for GPU workers, else ``mx.cpu()``.

    Raises RuntimeError when a GPU is asked for but this MXNet build sees none.
    """
    if not use_gpu:
        return mx.cpu()
    available = mx.context.num_gpus()
    if local_rank >= available:
        raise RuntimeError(
            f"scaling.use_gpu is set but MXNet sees {available} GPU(s) for local rank "
            f"{local_rank}; install a CUDA build (mxnet-cu11x) or set scaling.use_gpu=false"
        )
    return mx.gpu(local_rank)
