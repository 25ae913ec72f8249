"""DistributedNetwork's gradient clipping in one process: the update's size is bounded by
``optim.grad_clip_norm``, and ``grad_clipped_fraction`` counts the steps it acted on."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import one_rank_task, random_batches

mx = pytest.importorskip("mxnet")

# Plain SGD: the update is exactly lr x (the mean loss's gradient, clipped).
SGD = ["optim.optimizer=sgd", "optim.momentum=0", "optim.weight_decay=0", "model.dropout=0"]


def _one_step(hvd, clip: float):
    """(size of the parameter update, pre-clip gradient norm, clipped fraction) of one step
    of lr 1 from the same weights on the same batch."""
    task = one_rank_task(
        hvd, "digits-fcn", seed=0, overrides=[*SGD, f"optim.grad_clip_norm={clip}"]
    )
    net = task.model
    before = [p.data().asnumpy().copy() for p in net.trainable]
    task.train_step(random_batches(1, 0)[0], 1.0)
    after = [p.data().asnumpy() for p in net.trainable]
    update = float(np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before, strict=True))))
    metrics = task.end_epoch(0)
    return update, metrics["grad_norm"], metrics["grad_clipped_fraction"]


def test_clipping_bounds_the_update_and_is_counted(hvd):
    free, norm, clipped = _one_step(hvd, clip=1e6)
    assert clipped == 0.0
    assert free == pytest.approx(norm, rel=1e-4)  # lr 1: the update is the gradient

    bound = norm / 4
    update, norm_again, clipped = _one_step(hvd, clip=bound)
    assert norm_again == pytest.approx(norm, rel=1e-6)  # the metric is the norm before clipping
    assert clipped == 1.0
    assert update == pytest.approx(bound, rel=1e-4)


def test_without_clipping_no_fraction_is_reported(hvd):
    task = one_rank_task(hvd, "digits-fcn", seed=0, overrides=SGD)
    task.train_step(random_batches(1, 0)[0], 0.1)
    assert "grad_clipped_fraction" not in task.end_epoch(0)


def test_an_overflowing_static_loss_scale_skips_the_update(hvd, monkeypatch):
    """float16's static scale: gradients that overflow are not applied (as AMP does) and are
    counted. The float16 kernels need a GPU, so the scaling runs in float32 here with a scale
    (1e38) that overflows float32 just as 1024 can overflow float16."""
    from pipeline.train.context import WorkerContext
    from pipeline.train.precision import Precision

    class Float16Scaling(Precision):
        def check_device(self, ctx) -> None:  # the arithmetic only: no float16 kernel runs
            pass

        def cast_network(self, net) -> None:  # keep float32 parameters on the CPU
            pass

        def inputs(self, x):
            return x

        def outputs(self, y):
            return y

    scaling = Float16Scaling("float16", loss_scale=1e38)
    monkeypatch.setattr(WorkerContext, "precision", property(lambda _self: scaling))
    task = one_rank_task(hvd, "digits-fcn", seed=0, overrides=SGD)
    before = [p.data().asnumpy().copy() for p in task.model.trainable]
    task.train_step(random_batches(1, 0)[0], 1.0)
    after = [p.data().asnumpy() for p in task.model.trainable]
    assert all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    assert task.end_epoch(0)["overflow_skipped_steps"] == 1

    scaling = Float16Scaling("float16", loss_scale=1024.0)  # fits: the step is applied
    monkeypatch.setattr(WorkerContext, "precision", property(lambda _self: scaling))
    task = one_rank_task(hvd, "digits-fcn", seed=0, overrides=SGD)
    before = [p.data().asnumpy().copy() for p in task.model.trainable]
    task.train_step(random_batches(1, 0)[0], 1.0)
    after = [p.data().asnumpy() for p in task.model.trainable]
    assert not all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    assert task.end_epoch(0)["overflow_skipped_steps"] == 0
