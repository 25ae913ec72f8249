"""Mixed precision and compressed gradients, the parts a CPU can run: config checks, the
device check, the loss-scaling arithmetic, float32 master weights, and the wiring into the
trainer. The float16 forward and backward passes need a GPU (MXNet has no float16 GEMM on
the CPU) and never ran here."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_job_config
from pipeline.errors import ConfigError
from pipeline.train.precision import Precision

mx = pytest.importorskip("mxnet")


def test_float16_and_amp_need_gpus_at_config_time():
    for mode in ("float16", "amp"):
        with pytest.raises(ConfigError, match=f"optim.precision: {mode} needs scaling.use_gpu"):
            load_job_config("digits-cnn", [f"optim.precision={mode}"])
        cfg = load_job_config("digits-cnn", [f"optim.precision={mode}", "scaling.use_gpu=true"])
        assert Precision.from_config(cfg).mode == mode
    with pytest.raises(ConfigError, match=r"optim\.loss_scale"):
        load_job_config("digits-cnn", ["optim.loss_scale=0"])
    with pytest.raises(ConfigError, match=r"optim\.precision"):
        load_job_config("digits-cnn", ["optim.precision=bfloat16"])


def test_device_check_refuses_the_cpu_for_float16_only():
    Precision("float32").check_device(mx.cpu())
    for mode in ("float16", "amp"):
        with pytest.raises(ConfigError, match="needs GPUs"):
            Precision(mode).check_device(mx.cpu())
        Precision(mode).check_device(mx.gpu(0))  # a context object; no GPU is touched


def test_what_each_mode_asks_of_the_optimizer_and_the_allreduce():
    import horovod.mxnet as hvd

    assert Precision("float16").optimizer_params() == {"multi_precision": True}
    assert Precision("amp").optimizer_params() == {}  # AMP keeps float32 parameters
    assert Precision("float32").optimizer_params() == {}
    assert Precision(fp16_allreduce=True).compression(hvd) is hvd.Compression.fp16
    assert Precision().compression(hvd) is hvd.Compression.none
    assert Precision("float16").param_dtype == "float16"
    assert Precision("amp").param_dtype == "float32"


def _train(precision: Precision, steps: int = 5, scales: list | None = None) -> np.ndarray:
    """A float32 network trained with ``precision``'s loss scaling: the scale goes into the
    backward pass and comes out in the update."""
    from mxnet import autograd, gluon

    scales = [] if scales is None else scales
    mx.random.seed(3)
    net = gluon.nn.Dense(4, in_units=8)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    precision.prepare(trainer)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = mx.nd.array(rng.standard_normal((16, 8)))
        with autograd.record():
            loss = (net(x) ** 2).sum()
        precision.backward(loss, trainer)
        trainer.update(precision.update_divisor(16))
        scales.append(precision.gradient_scale(trainer))
    return net.weight.data().asnumpy()


def test_static_loss_scale_divides_out_exactly():
    plain = _train(Precision("float32"))
    scaled = _train(Precision("float16", loss_scale=1024.0))  # the arithmetic only, in float32
    np.testing.assert_array_equal(scaled, plain)
    assert Precision("float16", loss_scale=1024.0).gradient_scale(None) == 1024.0
    assert not np.array_equal(_train(Precision("float32"), steps=6), plain)  # it does train


AMP_SCRIPT = """
import numpy as np
from mxnet.contrib import amp

# AMP's machinery with no op cast to float16 (the CPU has no float16 GEMM): the dynamic loss
# scale, its trainer hook and our use of both.
amp.init(target_dtype="float16", target_precision_ops=[], conditional_fp32_ops=[], fp32_ops=[])
from pipeline.train.precision import Precision
from tests.unit.test_precision import _train

scales = []
same = np.array_equal(_train(Precision("amp"), scales=scales), _train(Precision("float32")))
print("AMP", same, scales[0])
"""


def test_amp_dynamic_loss_scale_divides_out_exactly():
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-c", AMP_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("AMP ")]
    _, same, scale = line.split()
    assert same == "True" and float(scale) > 1  # scaled by thousands, and divided out again


def _tiny_updates(multi_precision: bool) -> np.ndarray:
    """100 SGD steps of 1e-5 on a float16 weight of 1.0: each is below float16's resolution
    there (about 5e-4)."""
    from mxnet import autograd, gluon

    p = gluon.Parameter("w", shape=(4,), dtype="float16", init=mx.init.One())
    p.initialize(ctx=mx.cpu())
    params = {"learning_rate": 1e-5, "momentum": 0.0, "multi_precision": multi_precision}
    trainer = gluon.Trainer([p], "sgd", params)
    for _ in range(100):
        with autograd.record():
            loss = (p.data() * 1).sum()
        loss.backward()
        trainer.step(1)
    return p.data().asnumpy()


def test_float32_master_weights_keep_updates_that_float16_loses():
    assert np.all(_tiny_updates(multi_precision=False) == 1.0)  # every update rounded away
    kept = _tiny_updates(multi_precision=Precision("float16").optimizer_params()["multi_precision"])
    np.testing.assert_allclose(kept, 1.0 - 100 * 1e-5, atol=5e-4)
    assert np.all(kept < 1.0)


def test_fp16_allreduce_reaches_the_distributed_trainer(hvd):
    from tests.conftest import one_rank_task

    compressed = one_rank_task(hvd, "digits-fcn", seed=0, overrides=["scaling.fp16_allreduce=true"])
    assert compressed.model.trainer._compression is hvd.Compression.fp16
    plain = one_rank_task(hvd, "digits-fcn", seed=0)
    assert plain.model.trainer._compression is hvd.Compression.none
