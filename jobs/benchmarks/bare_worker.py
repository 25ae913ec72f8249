"""A bare Gluon training loop in its own process (no Horovod, no Ray, no reader), printing
``BARE {"samples_per_s": ...}``: run alone and two side by side, it shows what sharing the
cores costs before any communication (the scaling figure's ceiling)."""

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
    cfg = load_job_config(recipe, [f"data.batch_size={batch}"])
    net = build_model(cfg.model.name, cfg.model.arch, (1, 8, 8), 10)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize(static_alloc=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(0)
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
    print("BARE " + json.dumps({"samples_per_s": steps * batch / (time.perf_counter() - start)}))


if __name__ == "__main__":
    main()
