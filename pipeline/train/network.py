"""One network as the tasks train it: :class:`DistributedNetwork`.

It puts together what every trained network needs, whatever the objective: initialisation,
the precision mode, hybridization, the same starting weights on every rank, a Horovod
``DistributedTrainer`` with its own prefix (so the allreduce names of different networks never
collide), gradient clipping and the global gradient norm; optionally the starting weights
of a bundle, with its zeros held (``pipeline/train/init_weights.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.distributed.collectives import broadcast_from_root
from pipeline.train.context import WorkerContext
from pipeline.train.init_weights import ZeroMask, load_weights, read_bundle

#: Without clipping, the gradient norm is a metric only: sampled every this many steps (its
#: kernel cost ~5% of a small MLP's step when run on every step).
GRAD_NORM_EVERY = 4


def stacked_to_host(arrays: list, chunk: int = 256) -> np.ndarray:
    """Small same-shape NDArrays gathered to the host with one copy per ``chunk`` of them."""
    import mxnet as mx

    return np.concatenate(
        [mx.nd.stack(*arrays[i : i + chunk]).asnumpy() for i in range(0, len(arrays), chunk)]
    )


class DistributedNetwork:
    """A network with its DistributedTrainer; ``step`` applies clipping and tracks the global
    gradient norm of the mean loss (the vanishing/exploding-gradient signal)."""

    def __init__(
        self,
        context: WorkerContext,
        net,
        prefix: str,
        sample_inputs: list,
        start_from: str = "",
        hold_zeros: bool = False,
    ):
        """``start_from``: a model bundle's URI whose weights replace the random ones;
        ``hold_zeros``: its zero conv/dense weights stay zero (a pruned model's mask)."""
        import mxnet as mx

        cfg = context.cfg
        self.context = context
        self.net = net
        self.prefix = prefix
        self.precision = precision = context.precision
        net.initialize(mx.init.Xavier(magnitude=2.0), ctx=context.device)
        precision.cast_network(net)
        net.hybridize(static_alloc=True)
        net(*(precision.inputs(x) for x in sample_inputs))  # resolve deferred shapes
        self.params = net.collect_params()
        if start_from and context.rank == 0:  # the others get rank 0's weights just below
            _, arrays = read_bundle(start_from, cfg.s3)
            load_weights(self.params, arrays, start_from)
        broadcast_from_root(context.hvd, self.params, prefix)
        self.zero_mask = ZeroMask(self.params) if hold_zeros else None
        self.trainable = [p for p in self.params.values() if p.grad_req != "null"]
        optim = cfg.optim
        kwargs: dict[str, Any] = {
            "learning_rate": optim.learning_rate,
            "wd": optim.weight_decay,
            **precision.optimizer_params(),
        }
        if optim.optimizer in ("sgd", "nag"):
            kwargs["momentum"] = optim.momentum
        else:
            kwargs["beta1"] = optim.momentum
        self.trainer = context.hvd.DistributedTrainer(
            self.params,
            mx.optimizer.create(optim.optimizer, **kwargs),
            compression=precision.compression(context.hvd),
            prefix=prefix,
        )
        precision.prepare(self.trainer)
        self._sq_sums: list = []  # per sampled step: each gradient's sum of squares
        self._sq_scales: list[float] = []
        self._clipped: list = []  # per step with clipping on: 1 if it clipped, else 0
        self._steps = 0
        #: Steps whose update was skipped because the scaled gradients overflowed (float16).
        self.overflow_skips = 0

    def __call__(self, *inputs):
        """The network's output, in float32 whatever it computes in."""
        return self.precision.outputs(self.net(*(self.precision.inputs(x) for x in inputs)))

    def backward(self, loss) -> None:
        """The loss's backward pass, scaled as the precision mode needs."""
        self.precision.backward(loss, self.trainer)

    def step(self, batch_size: int, lr: float) -> None:
        clip = self.context.cfg.optim.grad_clip_norm
        self.trainer.set_learning_rate(lr)
        self.trainer.allreduce_grads()
        self._steps += 1
        if self.precision.skips_overflow and not self._gradients_finite():
            # A static loss scale that overflowed: skip the update, as AMP's dynamic scale
            # does (every rank decides alike: the gradients were summed). Not counted as
            # divergence; the loss itself is still checked by the loop.
            self.overflow_skips += 1
            return
        if clip > 0 or self._steps % GRAD_NORM_EVERY == 1:
            scale = self.precision.gradient_scale(self.trainer)
            self._tally_grad_norm(batch_size * scale, clip)
        self.trainer.update(self.precision.update_divisor(batch_size))
        if self.zero_mask is not None:
            self.zero_mask.apply()

    def _gradients_finite(self) -> bool:
        """One fused kernel and a host sync per step: what AMP pays for the same check."""
        import mxnet as mx

        grads = [p.grad(self.context.device) for p in self.trainable]
        sq = mx.nd.multi_sum_sq(*grads, num_arrays=len(grads))
        return bool(np.isfinite(sq.sum().asscalar()))

    def _tally_grad_norm(self, batch_size: float, clip: float) -> None:
        """After the allreduce every rank holds the same summed gradients; scaled like the
        update, their norm is the global gradient norm of the mean loss (before clipping).
        One fused kernel, summed on the host at the end of the epoch; clipping scales the
        gradients on the device, so it never waits for the host either."""
        import mxnet as mx

        device = self.context.device
        grads = [p.grad(device) for p in self.trainable]
        sq = mx.nd.multi_sum_sq(*grads, num_arrays=len(grads))
        scale = 1.0 / (self.context.world * batch_size)
        self._sq_sums.append(sq)
        self._sq_scales.append(scale**2)
        if clip > 0:
            norm = mx.nd.sqrt(sq.sum()) * scale
            over = norm > clip
            factor = mx.nd.where(over, clip / mx.nd.maximum(norm, 1e-30), mx.nd.ones_like(norm))
            self._clipped.append(over)
            for g in grads:
                mx.nd.broadcast_mul(g, factor.astype(g.dtype).reshape((1,) * g.ndim), out=g)

    def epoch_grad_norm(self) -> float:
        """RMS of the global gradient norm over the epoch's sampled steps; resets the tally."""
        if not self._sq_sums:
            return 0.0
        sums = stacked_to_host(self._sq_sums).sum(axis=1)
        value = float(np.sqrt(np.mean(sums * np.asarray(self._sq_scales))))
        self._sq_sums, self._sq_scales = [], []
        return value

    def epoch_clipped_fraction(self) -> float | None:
        """Share of the epoch's steps whose gradients were clipped (None without clipping);
        resets the tally. Every rank computes the same value: the gradients were summed."""
        if not self._clipped:
            return None
        value = float(stacked_to_host(self._clipped).mean())
        self._clipped = []
        return value
