"""Training objectives: what one step does, what an evaluation measures, what gets exported.

The loop (pipeline/train/loop.py) owns epochs, shards, logging and checkpoints; a task owns
the networks and their Horovod trainers:

* :class:`ClassificationTask` - one network, cross-entropy on labels (FCN, CNN, RNN, attention);
* :class:`AdversarialTask` - a conditional GAN: generator and discriminator trained against
  each other, plus a judge classifier trained on real data that scores the generated samples.

Each trainer is a ``hvd.DistributedTrainer`` with its own prefix, so the allreduce tensor names
of different trainers never collide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import JobConfig
from pipeline.data.contract import DatasetInfo
from pipeline.data.ingest import Batch, ShardReader, to_ndarray
from pipeline.train.precision import Precision


@dataclass
class Env:
    """What every task needs from the worker: config, data shape, device and Horovod."""

    cfg: JobConfig
    info: DatasetInfo
    ctx: Any
    hvd: Any
    world: int
    rank: int

    @property
    def precision(self) -> Precision:
        return Precision.from_config(self.cfg)


# -- helpers shared by the tasks ----------------------------------------------------------------


def _plain_copy(array):
    import mxnet as mx

    return mx.nd.array(array.asnumpy(), ctx=array.context, dtype=array.dtype)


# MXNet's MKL-DNN kernels may keep parameters in a blocked memory layout that Horovod cannot
# read ("We can't generate TBlob for MKLDNN data"; seen as crashed or mismatched collectives).
# The collectives on parameters therefore go through plain copies; gradients are unaffected.


def _stacked(arrays: list, chunk: int = 256) -> np.ndarray:
    """Small same-shape NDArrays gathered to the host with one copy per ``chunk`` of them."""
    import mxnet as mx

    return np.concatenate(
        [mx.nd.stack(*arrays[i : i + chunk]).asnumpy() for i in range(0, len(arrays), chunk)]
    )


def masked_loss_sum(loss):
    """The sum over the batch of ``loss(pred, label)``, padding rows (label -1) weighted 0, as
    one hybridized graph: the imperative loss, a mask copy and the tally cost several op
    dispatches per step. Its gradient equals that of the per-row losses."""
    from mxnet import gluon

    class Masked(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            self.loss = loss

        def hybrid_forward(self, F, pred, label):
            return F.sum(self.loss(pred, F.relu(label)) * (label >= 0))

    block = Masked()
    block.hybridize(static_alloc=True)
    return block


def _collective_on_copies(params: list, collective) -> None:
    """Run an in-place Horovod collective on plain copies of ``params``' data, then copy back.

    Every copy stays referenced until all collectives have finished (``waitall``) and only
    then is read."""
    import mxnet as mx

    copies = [_plain_copy(p.data()) for p in params]
    for i, copy in enumerate(copies):
        collective(copy, i)
    mx.nd.waitall()
    for p, copy in zip(params, copies, strict=True):
        p.set_data(copy)
    mx.nd.waitall()


def broadcast_from_root(hvd, params, prefix: str) -> None:
    """Every rank starts from rank 0's parameters.

    Built from an allreduce (rank 0 contributes its values, the others zeros: x + 0 is exact)
    rather than ``hvd.broadcast_``. Horovod 0.28.1's MXNet broadcast reads the op's name after
    queueing it, and by then a finished op has freed that name: a use-after-free that crashed
    a process in about one of a few thousand broadcasts (SIGSEGV or SIGABRT). Its allreduce
    logs before queueing and is safe. ``tests/unit/test_collectives.py`` runs both."""
    ordered = [p for _, p in sorted(params.items())]
    is_root = hvd.rank() == 0

    def from_root(copy, i: int) -> None:
        if not is_root:
            copy[:] = 0
        hvd.allreduce_(copy, op=hvd.Sum, name=f"{prefix}.init.{i}")

    _collective_on_copies(ordered, from_root)


def average_running_stats(hvd, params, name: str) -> None:
    """Batch-norm running means/variances are per rank; average them so replicas agree."""
    stats = [p for p in params.values() if p.grad_req == "null"]
    _collective_on_copies(stats, lambda a, i: hvd.allreduce_(a, average=True, name=f"{name}.{i}"))


def allreduce_sum(hvd, values: list[float], name: str) -> np.ndarray:
    import mxnet as mx

    return hvd.allreduce(mx.nd.array(values, dtype="float64"), average=False, name=name).asnumpy()


#: Without clipping, the gradient norm is a metric only: sampled every this many steps (its
#: kernel cost ~5% of a small MLP's step when run on every step).
GRAD_NORM_EVERY = 4


class Optimised:
    """A network with its DistributedTrainer; ``step`` applies clipping and tracks the global
    gradient norm of the mean loss (the vanishing/exploding-gradient signal)."""

    def __init__(self, env: Env, net, prefix: str, sample_inputs: list):
        import mxnet as mx

        cfg = env.cfg
        self.env = env
        self.net = net
        self.prefix = prefix
        self.precision = precision = env.precision
        net.initialize(mx.init.Xavier(magnitude=2.0), ctx=env.ctx)
        precision.cast_network(net)
        net.hybridize(static_alloc=True)
        net(*(precision.inputs(x) for x in sample_inputs))  # resolve deferred shapes
        self.params = net.collect_params()
        broadcast_from_root(env.hvd, self.params, prefix)
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
        self.trainer = env.hvd.DistributedTrainer(
            self.params,
            mx.optimizer.create(optim.optimizer, **kwargs),
            compression=precision.compression(env.hvd),
            prefix=prefix,
        )
        precision.prepare(self.trainer)
        self._sq_sums: list = []  # per sampled step: each gradient's sum of squares
        self._sq_scales: list[float] = []
        self._steps = 0

    def __call__(self, *inputs):
        """The network's output, in float32 whatever it computes in."""
        return self.precision.outputs(self.net(*(self.precision.inputs(x) for x in inputs)))

    def backward(self, loss) -> None:
        """The loss's backward pass, scaled as the precision mode needs."""
        self.precision.backward(loss, self.trainer)

    def step(self, batch_size: int, lr: float) -> None:
        clip = self.env.cfg.optim.grad_clip_norm
        self.trainer.set_learning_rate(lr)
        self.trainer.allreduce_grads()
        self._steps += 1
        if clip > 0 or self._steps % GRAD_NORM_EVERY == 1:
            scale = self.precision.gradient_scale(self.trainer)
            self._tally_grad_norm(batch_size * scale, clip)
        self.trainer.update(self.precision.update_divisor(batch_size))

    def _tally_grad_norm(self, batch_size: float, clip: float) -> None:
        """After the allreduce every rank holds the same summed gradients; scaled like the
        update, their norm is the global gradient norm of the mean loss. One fused kernel,
        summed on the host at the end of the epoch: no sync unless clipping needs it."""
        import mxnet as mx

        grads = [p.grad(self.env.ctx) for p in self.trainable]
        sq = mx.nd.multi_sum_sq(*grads, num_arrays=len(grads))
        scale = 1.0 / (self.env.world * batch_size)
        self._sq_sums.append(sq)
        self._sq_scales.append(scale**2)
        if clip > 0:
            norm = float(np.sqrt(sq.asnumpy().sum())) * scale
            if norm > clip:
                for p in self.trainable:
                    p.grad(self.env.ctx)[:] *= clip / norm

    def epoch_grad_norm(self) -> float:
        """RMS of the global gradient norm over the epoch's sampled steps; resets the tally."""
        if not self._sq_sums:
            return 0.0
        sums = _stacked(self._sq_sums).sum(axis=1)
        value = float(np.sqrt(np.mean(sums * np.asarray(self._sq_scales))))
        self._sq_sums, self._sq_scales = [], []
        return value

    def export(self, directory: str, name: str) -> None:
        self.net.export(os.path.join(directory, name), epoch=0)


def on_device(batch: Batch, ctx) -> Batch:
    """The batch with its NDArrays: as the reader made them, or copied now."""
    return batch if batch.x is not None else batch.on_device(ctx)


def _accuracy(env: Env, net, reader: ShardReader, name: str) -> float:
    """Accuracy over a whole split: each rank scores its shard, the counts are summed."""

    correct = total = 0
    for batch in reader.batches(epoch=0, batch_size=env.cfg.data.eval_batch_size, ctx=env.ctx):
        pred = net(batch.x).argmax(axis=1).asnumpy()
        keep = batch.labels >= 0
        correct += int(np.count_nonzero(pred[keep] == batch.labels[keep]))
        total += int(np.count_nonzero(keep))
    summed = allreduce_sum(env.hvd, [correct, total], name)
    return float(summed[0] / max(summed[1], 1))


# -- the tasks ----------------------------------------------------------------------------------


class ClassificationTask:
    """Cross-entropy on labels; padding rows have weight 0."""

    kind = "classifier"
    metric = "accuracy"

    def __init__(self, env: Env):
        import mxnet as mx
        from mxnet import gluon

        from models import build_model

        self.env = env
        info = env.info
        net = build_model(
            env.cfg.model.name, env.cfg.model.arch, info.feature_shape, info.num_classes
        )
        self.model = Optimised(env, net, "net", [mx.nd.zeros((2, info.num_features), ctx=env.ctx)])
        self.loss_fn = masked_loss_sum(gluon.loss.SoftmaxCrossEntropyLoss())
        self._losses: list = []  # per step, on the device; summed at the end of the epoch
        self._real = 0

    @property
    def params(self):
        return self.model.params

    def num_params(self) -> int:
        from models import count_params

        return count_params(self.model.net)

    def networks(self) -> dict[str, Optimised]:
        """What a checkpoint holds: each network with its trainer, by prefix."""
        return {self.model.prefix: self.model}

    def start_epoch(self, epoch: int) -> None:
        pass

    def train_step(self, batch: Batch, lr: float):
        """One step; returns an NDArray that is ready once the step's forward pass ran."""
        from mxnet import autograd

        batch = on_device(batch, self.env.ctx)
        with autograd.record():
            loss = self.loss_fn(self.model(batch.x), batch.y)
        self.model.backward(loss)
        self.model.step(len(batch.labels), lr)
        self._losses.append(loss)
        self._real += batch.num_real
        return loss

    def end_epoch(self, epoch: int) -> dict[str, float]:

        average_running_stats(self.env.hvd, self.model.params, f"bn{epoch}")
        loss_sum = float(_stacked(self._losses).sum()) if self._losses else 0.0
        totals = allreduce_sum(self.env.hvd, [loss_sum, self._real], f"tl{epoch}")
        self._losses = []
        self._real = 0
        return {
            "train_loss": totals[0] / max(totals[1], 1),
            "grad_norm": self.model.epoch_grad_norm(),
            "_samples": totals[1],
        }

    def evaluate(self, reader: ShardReader, split: str, tag: str) -> dict[str, float]:
        return {f"{split}_accuracy": _accuracy(self.env, self.model, reader, tag)}

    def export(self, directory: str) -> dict:
        self.model.export(directory, "model")
        return {"kind": self.kind}

    def samples_png(self, path: str) -> bool:
        return False


class AdversarialTask:
    """Conditional GAN: D learns real vs generated given the label, G learns to fool D, and a
    judge CNN learns the labels of real data. ``generated_accuracy`` is the share of generated
    samples the judge assigns the label they were generated for."""

    kind = "generator"
    metric = "generated_accuracy"
    #: Generated samples per class for each generated_accuracy estimate (split over ranks).
    samples_per_class = 100

    def __init__(self, env: Env):
        import mxnet as mx
        from mxnet import gluon

        from models import build_gan

        self.env = env
        info, arch = env.info, env.cfg.model.arch
        self.latent = arch.latent_dim
        self.classes = info.num_classes
        g, d, judge = build_gan(arch, info.feature_shape, info.num_classes)
        z = mx.nd.zeros((2, self.latent), ctx=env.ctx)
        onehot = mx.nd.zeros((2, self.classes), ctx=env.ctx)
        rows = mx.nd.zeros((2, info.num_features), ctx=env.ctx)
        self.g = Optimised(env, g, "gen", [z, onehot])
        self.d = Optimised(env, d, "disc", [rows, onehot])
        self.judge = Optimised(env, judge, "judge", [rows])
        self.bce = gluon.loss.SigmoidBinaryCrossEntropyLoss()
        self.ce = gluon.loss.SoftmaxCrossEntropyLoss()
        self._sums = mx.nd.zeros((3,), ctx=env.ctx)
        self._real = 0
        # Per-rank noise stream: ranks draw different samples, reproducibly.
        self._rng = np.random.default_rng(env.cfg.seed * 1000 + env.rank)

    @property
    def params(self):
        merged = {}
        for prefix, part in (("gen", self.g), ("disc", self.d), ("judge", self.judge)):
            merged.update({f"{prefix}/{k}": v for k, v in part.params.items()})
        return merged

    def num_params(self) -> int:
        from models import count_params

        return count_params(self.g.net) + count_params(self.d.net)

    def networks(self) -> dict[str, Optimised]:
        return {o.prefix: o for o in (self.g, self.d, self.judge)}

    def start_epoch(self, epoch: int) -> None:
        """Noise drawn from (seed, epoch, rank): a run resumed at an epoch start draws what
        the uninterrupted run drew."""
        self._rng = np.random.default_rng([self.env.cfg.seed, epoch, self.env.rank])

    def _noise(self, n: int):

        return to_ndarray(
            self._rng.standard_normal((n, self.latent)).astype(np.float32), self.env.ctx
        )

    def train_step(self, batch: Batch, lr: float):
        import mxnet as mx
        from mxnet import autograd

        ctx, n = self.env.ctx, len(batch.labels)
        batch = on_device(batch, ctx)
        x = batch.x
        onehot = mx.nd.one_hot(batch.y, self.classes)  # padding rows (label -1) -> all zeros
        w = to_ndarray(batch.mask, ctx).reshape((-1, 1))
        ones, zeros = mx.nd.ones((n, 1), ctx=ctx), mx.nd.zeros((n, 1), ctx=ctx)

        fake = self.g(self._noise(n), onehot)
        with autograd.record():  # discriminator: real -> 0.9 (one-sided smoothing), fake -> 0
            d_loss = self.bce(self.d(x, onehot), ones * 0.9, w) + self.bce(
                self.d(fake.detach(), onehot), zeros, w
            )
        self.d.backward(d_loss)
        self.d.step(n, lr)

        with autograd.record():  # generator: make the discriminator say "real"
            g_loss = self.bce(self.d(self.g(self._noise(n), onehot), onehot), ones, w)
        self.g.backward(g_loss)
        self.g.step(n, lr)

        with autograd.record():  # judge: an ordinary classifier on real data
            j_loss = self.ce(self.judge(x), batch.y, w)
        self.judge.backward(j_loss)
        self.judge.step(n, lr)

        self._sums += mx.nd.concat(d_loss.sum(), g_loss.sum(), j_loss.sum(), dim=0)
        self._real += batch.num_real
        return j_loss

    def end_epoch(self, epoch: int) -> dict[str, float]:
        import mxnet as mx

        hvd = self.env.hvd
        for part in (self.g, self.d, self.judge):
            average_running_stats(hvd, part.params, f"bn{epoch}.{part.prefix}")
        sums = self._sums.asnumpy().tolist()
        totals = allreduce_sum(hvd, [*sums, self._real], f"tl{epoch}")
        real = max(totals[3], 1)
        self._sums = mx.nd.zeros((3,), ctx=self.env.ctx)
        self._real = 0
        return {
            "d_loss": totals[0] / real,
            "g_loss": totals[1] / real,
            "judge_loss": totals[2] / real,
            "train_loss": (totals[0] + totals[1]) / real,
            "g_grad_norm": self.g.epoch_grad_norm(),
            "d_grad_norm": self.d.epoch_grad_norm(),
            "grad_norm": self.judge.epoch_grad_norm(),
            "_samples": totals[3],
        }

    def generated_accuracy(self, tag: str) -> float:
        """Share of generated samples that the judge labels as requested (all ranks)."""
        import mxnet as mx

        world, rank = self.env.world, self.env.rank
        labels = np.repeat(np.arange(self.classes), self.samples_per_class)[rank::world]
        correct = 0
        for start in range(0, len(labels), 500):
            part = labels[start : start + 500]
            onehot = mx.nd.one_hot(mx.nd.array(part, ctx=self.env.ctx), self.classes)
            images = self.g(self._noise(len(part)), onehot)
            pred = self.judge(images).argmax(axis=1).asnumpy()
            correct += int(np.count_nonzero(pred == part))
        summed = allreduce_sum(self.env.hvd, [correct, len(labels)], tag)
        return float(summed[0] / max(summed[1], 1))

    def evaluate(self, reader: ShardReader, split: str, tag: str) -> dict[str, float]:
        judge_acc = _accuracy(self.env, self.judge, reader, f"{tag}.judge")
        key = "generated_accuracy" if split == "test" else f"{split}_generated_accuracy"
        return {key: self.generated_accuracy(f"{tag}.gen"), f"judge_{split}_accuracy": judge_acc}

    def export(self, directory: str) -> dict:
        self.g.export(directory, "model")
        return {"kind": self.kind, "latent_dim": self.latent}

    def samples_png(self, path: str) -> bool:
        """A grid of generated samples, one row per class, with fixed noise (rank 0 only)."""
        import mxnet as mx
        from PIL import Image

        c, h, w = self.env.info.feature_shape
        per_row = 10
        labels = np.repeat(np.arange(self.classes), per_row)
        z = np.random.default_rng(12345).standard_normal((len(labels), self.latent))
        onehot = mx.nd.one_hot(mx.nd.array(labels, ctx=self.env.ctx), self.classes)
        images = self.g(mx.nd.array(z, ctx=self.env.ctx), onehot).asnumpy()
        images = images.reshape(self.classes, per_row, c, h, w)[:, :, 0]  # first channel
        grid = images.transpose(0, 2, 1, 3).reshape(self.classes * h, per_row * w)
        pixels = (np.clip(grid, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize(
            (per_row * w * 4, self.classes * h * 4), Image.Resampling.NEAREST
        ).save(path)
        return True


def make_task(env: Env):
    from models import ADVERSARIAL

    env.precision.check_device(env.ctx)
    env.precision.start()
    return AdversarialTask(env) if env.cfg.model.name in ADVERSARIAL else ClassificationTask(env)
