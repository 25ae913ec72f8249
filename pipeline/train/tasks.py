"""Training objectives: what one step does, what an evaluation measures, what gets exported.

The loop (pipeline/train/loop.py) owns epochs, shards, logging and checkpoints; a task owns
its networks (each a :class:`~pipeline.train.network.DistributedNetwork`) and the objective:

* :class:`ClassificationTask` - one network, cross-entropy on labels (FCN, CNN, RNN, attention);
* :class:`AdversarialTask` - a conditional GAN: generator and discriminator trained against
  each other, plus a judge classifier trained on real data that scores the generated samples.

Adding an objective means adding a class here with the same methods; :func:`make_task` picks
one from the model family.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.ingest import Batch, ShardReader, to_ndarray
from pipeline.distributed.collectives import allreduce_sum, average_running_stats
from pipeline.errors import ModelMisfitError
from pipeline.model import bundle
from pipeline.model.diagnostics import ErrorReport
from pipeline.train.context import WorkerContext
from pipeline.train.network import DistributedNetwork, stacked_to_host


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


def on_device(batch: Batch, device) -> Batch:
    """The batch with its NDArrays: as the reader made them, or copied now."""
    return batch if batch.x is not None else batch.on_device(device)


def _confusion(
    context: WorkerContext, net, reader: ShardReader, name: str, examples: bool = False
) -> ErrorReport:
    """The confusion matrix over a whole split (each rank scores its shard, the counts are
    summed); with ``examples``, this rank's first misclassified rows too."""
    k = context.info.num_classes
    counts = np.zeros((k, k), dtype=np.int64)
    report = ErrorReport(counts)
    for batch in reader.batches(
        epoch=0, batch_size=context.cfg.data.eval_batch_size, device=context.device
    ):
        pred = net(batch.x).argmax(axis=1).asnumpy().astype(np.int64)
        keep = batch.labels >= 0
        true = batch.labels[keep].astype(np.int64)
        np.add.at(counts, (true, pred[keep]), 1)
        if examples and not report.full:
            wrong = np.flatnonzero(keep & (pred != batch.labels))
            report.add_misclassified(
                batch.float_features()[wrong], batch.labels[wrong], pred[wrong], batch.ids[wrong]
            )
    summed = allreduce_sum(context.hvd, counts.ravel().tolist(), name)
    report.matrix = np.rint(summed).astype(np.int64).reshape(k, k)
    return report


def _accuracy(context: WorkerContext, net, reader: ShardReader, name: str) -> float:
    """Accuracy over a whole split."""
    return _confusion(context, net, reader, name).accuracy


# -- the tasks ----------------------------------------------------------------------------------


class ClassificationTask:
    """Cross-entropy on labels; padding rows have weight 0."""

    kind = "classifier"
    metric = "accuracy"

    def __init__(self, context: WorkerContext):
        import mxnet as mx
        from mxnet import gluon

        from models import build_model

        self.context = context
        info = context.info
        try:
            net = build_model(
                context.cfg.model.name, context.cfg.model.arch, info.feature_shape, info.num_classes
            )
        except ValueError as exc:  # not retried: the driver's check ran beside the start
            raise ModelMisfitError.of(context.cfg.model.name, context.cfg.data.uri, exc) from None
        rows = mx.nd.zeros((2, info.num_features), ctx=context.device)
        init = context.cfg.init
        self.model = DistributedNetwork(
            context, net, "net", [rows], start_from=init.weights, hold_zeros=init.hold_zeros
        )
        self.loss_fn = masked_loss_sum(gluon.loss.SoftmaxCrossEntropyLoss())
        self._losses: list = []  # per step, on the device; summed at the end of the epoch
        self._real = 0
        self._errors: ErrorReport | None = None

    @property
    def params(self):
        return self.model.params

    def num_params(self) -> int:
        from models import count_params

        return count_params(self.model.net)

    def networks(self) -> dict[str, DistributedNetwork]:
        """What a checkpoint holds: each network with its trainer, by prefix."""
        return {self.model.prefix: self.model}

    def start_epoch(self, epoch: int) -> None:
        pass

    def train_step(self, batch: Batch, lr: float):
        """One step; returns an NDArray that is ready once the step's forward pass ran."""
        from mxnet import autograd

        batch = on_device(batch, self.context.device)
        with autograd.record():
            loss = self.loss_fn(self.model(batch.x), batch.y)
        self.model.backward(loss)
        self.model.step(len(batch.labels), lr)
        self._losses.append(loss)
        self._real += batch.num_real
        return loss

    def end_epoch(self, epoch: int) -> dict[str, float]:
        average_running_stats(self.context.hvd, self.model.params, f"bn{epoch}")
        loss_sum = float(stacked_to_host(self._losses).sum()) if self._losses else 0.0
        totals = allreduce_sum(self.context.hvd, [loss_sum, self._real], f"tl{epoch}")
        self._losses = []
        self._real = 0
        metrics = {
            "train_loss": totals[0] / max(totals[1], 1),
            "grad_norm": self.model.epoch_grad_norm(),
            "_samples": totals[1],
        }
        clipped = self.model.epoch_clipped_fraction()
        if clipped is not None:
            metrics["grad_clipped_fraction"] = clipped
        if self.model.precision.skips_overflow:
            metrics["overflow_skipped_steps"] = self.model.overflow_skips
        return metrics

    def evaluate(self, reader: ShardReader, split: str, tag: str) -> dict[str, float]:
        """``<split>_accuracy``; on the test split also the error report (:meth:`errors`)."""
        test = split == "test"
        report = _confusion(self.context, self.model, reader, tag, examples=test)
        if test:
            self._errors = report
        return {f"{split}_accuracy": report.accuracy}

    def errors(self) -> ErrorReport | None:
        """How the model erred on the test split, once it was evaluated."""
        return self._errors

    def export(self, directory: str, epoch: int) -> None:
        """The classifier as a model bundle (the registry's format) in ``directory``."""
        meta = bundle.BundleMeta.for_data(self.kind, epoch, self.context.info)
        bundle.write(directory, self.model.net, meta)

    def sample_images(self) -> np.ndarray | None:
        return None


class AdversarialTask:
    """Conditional GAN: D learns real vs generated given the label, G learns to fool D, and a
    judge CNN learns the labels of real data. ``generated_accuracy`` is the share of generated
    samples the judge assigns the label they were generated for."""

    kind = "generator"
    metric = "generated_accuracy"
    #: Generated samples per class for each generated_accuracy estimate (split over ranks).
    samples_per_class = 100

    def __init__(self, context: WorkerContext):
        import mxnet as mx
        from mxnet import gluon

        from models import build_gan

        self.context = context
        info, arch = context.info, context.cfg.model.arch
        self.latent = arch.latent_dim
        self.classes = info.num_classes
        try:
            g, d, judge = build_gan(arch, info.feature_shape, info.num_classes)
        except ValueError as exc:  # not retried: the driver's check ran beside the start
            raise ModelMisfitError.of(context.cfg.model.name, context.cfg.data.uri, exc) from None
        z = mx.nd.zeros((2, self.latent), ctx=context.device)
        onehot = mx.nd.zeros((2, self.classes), ctx=context.device)
        rows = mx.nd.zeros((2, info.num_features), ctx=context.device)
        self.g = DistributedNetwork(context, g, "gen", [z, onehot])
        self.d = DistributedNetwork(context, d, "disc", [rows, onehot])
        self.judge = DistributedNetwork(context, judge, "judge", [rows])
        self.bce = gluon.loss.SigmoidBinaryCrossEntropyLoss()
        self.ce = gluon.loss.SoftmaxCrossEntropyLoss()
        self._sums = mx.nd.zeros((3,), ctx=context.device)
        self._real = 0
        # Per-rank noise stream: ranks draw different samples, reproducibly.
        self._rng = np.random.default_rng(context.cfg.seed * 1000 + context.rank)

    @property
    def params(self):
        merged = {}
        for prefix, part in (("gen", self.g), ("disc", self.d), ("judge", self.judge)):
            merged.update({f"{prefix}/{k}": v for k, v in part.params.items()})
        return merged

    def num_params(self) -> int:
        from models import count_params

        return count_params(self.g.net) + count_params(self.d.net)

    def networks(self) -> dict[str, DistributedNetwork]:
        return {o.prefix: o for o in (self.g, self.d, self.judge)}

    def start_epoch(self, epoch: int) -> None:
        """Noise drawn from (seed, epoch, rank): a run resumed at an epoch start draws what
        the uninterrupted run drew."""
        self._rng = np.random.default_rng([self.context.cfg.seed, epoch, self.context.rank])

    def _noise(self, n: int):
        return to_ndarray(
            self._rng.standard_normal((n, self.latent)).astype(np.float32), self.context.device
        )

    def train_step(self, batch: Batch, lr: float):
        import mxnet as mx
        from mxnet import autograd

        device, n = self.context.device, len(batch.labels)
        batch = on_device(batch, device)
        x = batch.x
        onehot = mx.nd.one_hot(batch.y, self.classes)  # padding rows (label -1) -> all zeros
        w = to_ndarray(batch.mask, device).reshape((-1, 1))
        ones, zeros = mx.nd.ones((n, 1), ctx=device), mx.nd.zeros((n, 1), ctx=device)

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

        losses = mx.nd.concat(d_loss.sum(), g_loss.sum(), j_loss.sum(), dim=0)
        self._sums += losses
        self._real += batch.num_real
        return losses

    def end_epoch(self, epoch: int) -> dict[str, float]:
        import mxnet as mx

        hvd = self.context.hvd
        for part in (self.g, self.d, self.judge):
            average_running_stats(hvd, part.params, f"bn{epoch}.{part.prefix}")
        sums = self._sums.asnumpy().tolist()
        totals = allreduce_sum(hvd, [*sums, self._real], f"tl{epoch}")
        real = max(totals[3], 1)
        self._sums = mx.nd.zeros((3,), ctx=self.context.device)
        self._real = 0
        metrics = {
            "d_loss": totals[0] / real,
            "g_loss": totals[1] / real,
            "judge_loss": totals[2] / real,
            "train_loss": (totals[0] + totals[1]) / real,
            "g_grad_norm": self.g.epoch_grad_norm(),
            "d_grad_norm": self.d.epoch_grad_norm(),
            "grad_norm": self.judge.epoch_grad_norm(),
            "_samples": totals[3],
        }
        for name, part in (("g_", self.g), ("d_", self.d), ("", self.judge)):
            clipped = part.epoch_clipped_fraction()
            if clipped is not None:
                metrics[f"{name}grad_clipped_fraction"] = clipped
        return metrics

    def generated_accuracy(self, tag: str) -> float:
        """Share of generated samples that the judge labels as requested (all ranks)."""
        import mxnet as mx

        world, rank = self.context.world, self.context.rank
        labels = np.repeat(np.arange(self.classes), self.samples_per_class)[rank::world]
        correct = 0
        for start in range(0, len(labels), 500):
            part = labels[start : start + 500]
            onehot = mx.nd.one_hot(mx.nd.array(part, ctx=self.context.device), self.classes)
            images = self.g(self._noise(len(part)), onehot)
            pred = self.judge(images).argmax(axis=1).asnumpy()
            correct += int(np.count_nonzero(pred == part))
        summed = allreduce_sum(self.context.hvd, [correct, len(labels)], tag)
        return float(summed[0] / max(summed[1], 1))

    def evaluate(self, reader: ShardReader, split: str, tag: str) -> dict[str, float]:
        judge_acc = _accuracy(self.context, self.judge, reader, f"{tag}.judge")
        key = "generated_accuracy" if split == "test" else f"{split}_generated_accuracy"
        return {key: self.generated_accuracy(f"{tag}.gen"), f"judge_{split}_accuracy": judge_acc}

    def export(self, directory: str, epoch: int) -> None:
        """The generator (noise, one-hot label -> image row) as a model bundle."""
        meta = bundle.BundleMeta.for_data(
            self.kind, epoch, self.context.info, latent_dim=self.latent
        )
        bundle.write(directory, self.g.net, meta)

    def errors(self) -> ErrorReport | None:
        """None: a generator's errors are seen in its sample grids."""
        return None

    def sample_images(self) -> np.ndarray | None:
        """Generated samples with fixed noise, (classes, 10, height, width): one row per class
        (first channel), so epoch after epoch shows the same draws improving."""
        import mxnet as mx

        c, h, w = self.context.info.feature_shape
        per_row = 10
        labels = np.repeat(np.arange(self.classes), per_row)
        z = np.random.default_rng(12345).standard_normal((len(labels), self.latent))
        onehot = mx.nd.one_hot(mx.nd.array(labels, ctx=self.context.device), self.classes)
        images = self.g(mx.nd.array(z, ctx=self.context.device), onehot).asnumpy()
        return images.reshape(self.classes, per_row, c, h, w)[:, :, 0]


def make_task(context: WorkerContext):
    from models import ADVERSARIAL

    context.precision.check_device(context.device)
    context.precision.start()
    if context.cfg.model.name in ADVERSARIAL:
        return AdversarialTask(context)
    return ClassificationTask(context)
