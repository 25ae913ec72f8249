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
