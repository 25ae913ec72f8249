"""Horovod collectives on a network's parameters, with the work-arounds they need.

Two problems of the pinned stack are handled here, so that no other module has to know them:

* MXNet's MKL-DNN (oneDNN) kernels may keep parameters in a blocked memory layout that Horovod
  cannot read ("We can't generate TBlob for MKLDNN data"; seen as crashed or mismatched
  collectives). Collectives on parameters therefore run on plain copies; gradients are
  unaffected.
* Horovod 0.28.1's MXNet ``broadcast_`` has a use-after-free (see :func:`broadcast_from_root`),
  so "rank 0's values to every rank" is an allreduce.
"""

from __future__ import annotations

import numpy as np


def _plain_copy(array):
    import mxnet as mx

    return mx.nd.array(array.asnumpy(), ctx=array.context, dtype=array.dtype)


def _collective_on_copies(params: list, collective) -> None:
    """Run an in-place Horovod collective on plain copies of ``params``' data, then copy back.

    Every copy stays referenced until all collectives have finished (``waitall``) and only
    then is read: a copy freed or read early crashed ``set_data`` after a collective."""
    import mxnet as mx

    copies = [_plain_copy(p.data()) for p in params]
    for i, copy in enumerate(copies):
        collective(copy, i)
    mx.nd.waitall()
    for p, copy in zip(params, copies, strict=True):
        p.set_data(copy)
    mx.nd.waitall()


def broadcast_from_root(hvd, params, prefix: str) -> None:
    """Every rank starts from rank 0's parameters (``params``: a Gluon ParameterDict).

    Built from an allreduce (rank 0 contributes its values, the others zeros: x + 0 is exact)
    rather than ``hvd.broadcast_``. Horovod 0.28.1's MXNet broadcast reads the op's name after
    queueing it, and by then a finished op has freed that name: a use-after-free that crashed
    a process in about one of a few thousand broadcasts (SIGSEGV or SIGABRT). Its allreduce
    logs before queueing and is safe. ``tests/unit/test_collectives.py`` runs thousands."""
    ordered = [p for _, p in sorted(params.items())]
    is_root = hvd.rank() == 0

    def from_root(copy, i: int) -> None:
        if not is_root:
            copy[:] = 0
        hvd.allreduce_(copy, op=hvd.Sum, name=f"{prefix}.init.{i}")

    _collective_on_copies(ordered, from_root)


def average_running_stats(hvd, params, name: str) -> None:
    """Batch-norm running means/variances are per rank (they are not gradients, so the
    DistributedTrainer never syncs them); average them so the replicas agree."""
    stats = [p for p in params.values() if p.grad_req == "null"]
    _collective_on_copies(stats, lambda a, i: hvd.allreduce_(a, average=True, name=f"{name}.{i}"))


def allreduce_sum(hvd, values: list[float], name: str) -> np.ndarray:
    """Host numbers summed over all ranks, in float64 (counts stay exact)."""
    import mxnet as mx

    return hvd.allreduce(mx.nd.array(values, dtype="float64"), average=False, name=name).asnumpy()


def allreduce_max(hvd, value: float, name: str) -> float:
    """The largest of one host number over all ranks (e.g. the peak memory of any worker)."""
    import mxnet as mx

    out = hvd.allreduce(mx.nd.array([value], dtype="float64"), op=hvd.Max, name=name)
    return float(out.asscalar())
