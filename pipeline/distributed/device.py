"""The one place that decides which device a worker computes on.

A GPU worker uses the GPU matching its Horovod local rank (Ray gives each worker one GPU and
Horovod's local rank orders the workers of a node). Nothing here has a GPU: this function is
unit-tested on the CPU with a stand-in for ``mxnet``.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError


def worker_device(mx: Any, use_gpu: bool, local_rank: int) -> Any:
    """``mx.gpu(local_rank)`` for GPU workers, else ``mx.cpu()``.

    Raises ConfigError when a GPU is asked for but this MXNet build sees none.
    """
    if not use_gpu:
        return mx.cpu()
    available = mx.context.num_gpus()
    if local_rank >= available:
        raise ConfigError(
            f"scaling.use_gpu=true but MXNet sees {available} GPU(s) for local rank "
            f"{local_rank}: run on nodes with a GPU per worker and a CUDA build of MXNet "
            "(mxnet-cu112..cu117, see infra/docker), or set scaling.use_gpu=false"
        )
    return mx.gpu(local_rank)
