"""EngineThrottle: how far Python may run ahead of MXNet's engine, and the divergence check
it makes on the losses it waits for."""

from __future__ import annotations

import mxnet as mx
import pytest

from pipeline.errors import DivergedError
from pipeline.train.loop import EngineThrottle


def _loss(value: float):
    return mx.nd.array([value])


def test_steps_in_flight_stay_below_twice_the_chunk():
    throttle = EngineThrottle("hint", every=4)
    most = 0
    for step in range(50):
        throttle.add(_loss(1.0), 0, step)
        most = max(most, throttle.in_flight)
    assert most == 7  # 2 * every - 1: the 8th step queued makes it wait for the oldest 4
    throttle.drain()
    assert throttle.in_flight == 0


def test_a_nan_loss_raises_within_two_chunks_naming_its_step():
    throttle = EngineThrottle("Lower optim.learning_rate.", every=4)
    with pytest.raises(DivergedError, match=r"loss is nan at epoch 2, step 6;.*learning_rate"):
        for step in range(20):
            throttle.add(_loss(float("nan") if step == 5 else 1.0), 1, step)
            assert step < 5 + 2 * 4  # found within 2 * every steps of the bad one


def test_drain_checks_the_last_steps():
    throttle = EngineThrottle("", every=16)
    throttle.add(_loss(1.0), 0, 0)
    throttle.add(mx.nd.array([1.0, float("inf")]), 0, 1)
    with pytest.raises(DivergedError, match="loss is inf at epoch 1, step 2"):
        throttle.drain()
