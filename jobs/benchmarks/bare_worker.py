"""A bare Gluon training loop in its own process (no Ray, no reader), printing
``BARE {"samples_per_s": ...}``.

* ``python -m jobs.benchmarks.bare_worker RECIPE STEPS BATCH``: no Horovod; run alone and two
  side by side, it shows what sharing the cores costs before any communication.
* ``horovodrun -np N ... bare_worker RECIPE STEPS BATCH hvd``: the loop Horovod's MXNet example
  writes (``hvd.DistributedTrainer``); rank 0 prints the summed rate of all ranks. Run with 1
  and 2 ranks, it shows how Horovod itself scales on this machine, with none of our code.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from models import build_model
    from pipeline.config import load_job_config

    recipe, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    horovod = sys.argv[4:] == ["hvd"]
    cfg = load_job_config(recipe, [f"data.batch_size={batch}"])
    world, rank = 1, 0
    if horovod:
        import horovod.mxnet as hvd

        from jobs.benchmarks.bare_gluon import bare_network

        hvd.init()
        world, rank = hvd.size(), hvd.rank()
        net, trainer = bare_network(cfg, (1, 8, 8), 10)
    else:
        net = build_model(cfg.model.name, cfg.model.arch, (1, 8, 8), 10)
        net.initialize(mx.init.Xavier(magnitude=2.0))
        net.hybridize(static_alloc=True)
        trainer = gluon.Trainer(
            net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9}
        )
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(rank)
    x = mx.nd.array(rng.random((batch, 64), dtype=np.float32))
    y = mx.nd.array(rng.integers(0, 10, batch))

    def run(n: int) -> None:
        for _ in range(n):
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(batch)
        mx.nd.waitall()

    run(10)
    start = time.perf_counter()
    run(steps)
    # The ranks step in lockstep (each step's allreduce waits for all), so rank 0's time is
    # the group's.
    rate = world * steps * batch / (time.perf_counter() - start)
    if rank == 0:
        print("BARE " + json.dumps({"samples_per_s": rate, "ranks": world}))


if __name__ == "__main__":
    main()
