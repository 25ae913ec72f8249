"""What the bare Horovod baselines (train_step's, tta_worker's) share: the recipe's model and
optimizer set up the way Horovod's own MXNet example does, with none of our loop."""

from __future__ import annotations


def bare_network(cfg, shape: tuple[int, ...], classes: int):
    """(net, trainer): ``cfg``'s model, Xavier-initialised and hybridised, every rank starting
    from rank 0's weights, and an ``hvd.DistributedTrainer`` with the recipe's optimizer."""
    import horovod.mxnet as hvd
    import mxnet as mx
    import numpy as np

    from models import build_model
    from pipeline.distributed.collectives import broadcast_from_root

    net = build_model(cfg.model.name, cfg.model.arch, shape, classes)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize(static_alloc=True)
    net(mx.nd.zeros((2, int(np.prod(shape)))))
    params = net.collect_params()
    # Horovod's own hvd.broadcast_parameters crashes on this stack (oneDNN layouts, a
    # use-after-free: pipeline/distributed/collectives.py); the baseline gets our work-around.
    broadcast_from_root(hvd, params, "bare")
    o = cfg.optim
    kwargs = {"learning_rate": o.learning_rate, "wd": o.weight_decay}
    kwargs["momentum" if o.optimizer in ("sgd", "nag") else "beta1"] = o.momentum
    return net, hvd.DistributedTrainer(params, o.optimizer, kwargs, prefix="bare")
