"""Numeric precision: the dtype networks compute in, what the optimizer keeps, how the loss is
scaled and how gradients travel between ranks.

Three modes (``optim.precision``):

* ``float32``: everything in float32.
* ``float16``: parameters and compute in float16; the optimizer keeps float32 master weights
  (``multi_precision``) so that updates smaller than float16's resolution still accumulate;
  the loss is multiplied by a static scale before the backward pass, and the update divides it
  out again (through the trainer's batch-size rescale: exact for a power of two).
* ``amp``: MXNet's automatic mixed precision casts each op to float16 where its lists say it
  is safe; parameters stay float32; a dynamic loss scale backs off and skips the update when a
  gradient overflows.

``scaling.fp16_allreduce`` sends gradients as float16 (Horovod ``Compression.fp16``): half
the bytes on the wire, rounding of the sums to float16.

MXNet has float16 GEMMs on GPUs only, so ``float16`` and ``amp`` are refused on a CPU
(:meth:`Precision.check_device`). Everything here that does not need a GPU kernel (the loss
scaling arithmetic, the master weights, the optimizer state in checkpoints, the compressed
allreduce) is tested on the CPU; the float16 forward and backward passes never ran here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    mode: str = "float32"
    loss_scale: float = 1.0
    fp16_allreduce: bool = False

    @classmethod
    def from_config(cls, cfg) -> Precision:
        return cls(cfg.optim.precision, cfg.optim.loss_scale, cfg.scaling.fp16_allreduce)

    def check_device(self, ctx) -> None:
        if self.mode != "float32" and ctx.device_type != "gpu":
            raise ConfigError(
                f"optim.precision={self.mode} needs GPUs (scaling.use_gpu=true): MXNet has no "
                "float16 matrix products on the CPU; use optim.precision=float32 there"
            )

    def start(self) -> None:
        """Once per process, before any network is built: AMP rewrites MXNet's op functions."""
        if self.mode == "amp":
            from mxnet.contrib import amp

            amp.init(target_dtype="float16")

    @property
    def skips_overflow(self) -> bool:
        """Whether a step checks its gradients and skips the update when the scaled ones
        overflowed (the static float16 scale; AMP's trainer does it itself)."""
        return self.mode == "float16"

    @property
    def param_dtype(self) -> str:
        return "float16" if self.mode == "float16" else "float32"

    def optimizer_params(self) -> dict[str, Any]:
        return {"multi_precision": True} if self.mode == "float16" else {}

    def compression(self, hvd):
        return hvd.Compression.fp16 if self.fp16_allreduce else hvd.Compression.none

    def prepare(self, trainer) -> None:
        """Once the trainer exists: AMP hooks its dynamic loss scale into it."""
        if self.mode == "amp":
            from mxnet.contrib import amp

            amp.init_trainer(trainer)

    def cast_network(self, net) -> None:
        """Before the parameters are created: Gluon keeps batch-norm statistics in float32."""
        if self.mode == "float16":
            net.cast("float16")

    def inputs(self, x):
        return x.astype("float16", copy=False) if self.mode == "float16" else x

    def outputs(self, y):
        """Losses are computed in float32 (a float16 sum over a batch overflows easily)."""
        return y.astype("float32", copy=False) if self.mode == "float16" else y

    def backward(self, loss, trainer) -> None:
        """The scaling is recorded too: the backward pass starts from the scaled loss."""
        from mxnet import autograd

        if self.mode == "float32":
            loss.backward()
            return
        with autograd.record():
            if self.mode == "float16":
                scaled = loss * self.loss_scale
            else:
                from mxnet.contrib import amp

                with amp.scale_loss(loss, trainer) as scaled:
                    pass
        autograd.backward(scaled)

    def update_divisor(self, batch_size: int) -> float:
        """What ``trainer.update`` divides the summed gradients by: the static scale is divided
        out there. AMP's trainer divides out its dynamic scale itself."""
        return batch_size * (self.loss_scale if self.mode == "float16" else 1.0)

    def gradient_scale(self, trainer) -> float:
        """How much larger than the true gradients the ones after backward are."""
        if self.mode == "float16":
            return self.loss_scale
        if self.mode == "amp":
            return float(trainer._amp_loss_scaler.loss_scale)
        return 1.0
