"""Training-loop figures, in this process with a 1-rank Horovod:

* step_overhead_<model>: samples/s of our loop (the task's train_step: host batch -> NDArray,
  DistributedTrainer with allreduce + gradient-norm tally + update) against a bare Gluon loop
  (same model, batch and optimizer) on NDArrays already in memory;
* tracking_overhead: an epoch of our loop with rank 0's MLflow logging (one log_batch per
  epoch, sqlite store) against the same epoch without it.
"""

from __future__ import annotations

import tempfile

import numpy as np

from jobs.benchmarks.harness import Figure, median_time, ratio_figure
from pipeline.config import load_job_config
from pipeline.data.contract import DatasetInfo, SplitInfo
from pipeline.data.ingest import Batch


def _setup(recipe: str, steps: int, batch_size: int):
    import horovod.mxnet as hvd
    import mxnet as mx

    from pipeline.train.tasks import Env, make_task

    hvd.init()
    cfg = load_job_config(recipe, [f"data.batch_size={batch_size}"])
    info = DatasetInfo("memory://", (1, 8, 8), 10, {"train": SplitInfo((), steps * batch_size)})
    rng = np.random.default_rng(0)
    batches = [
        Batch(
            rng.random((batch_size, 64), dtype=np.float32),
            rng.integers(0, 10, batch_size, dtype=np.int64),
            np.arange(batch_size, dtype=np.int64),
        )
        for _ in range(steps)
    ]
    mx.random.seed(0)
    task = make_task(Env(cfg, info, mx.cpu(), hvd, hvd.size(), hvd.rank()))
    return cfg, info, batches, task


def _bare(cfg, batches):
    import mxnet as mx
    from mxnet import autograd, gluon

    from models import build_model

    net = build_model(cfg.model.name, cfg.model.arch, (1, 8, 8), 10)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize(static_alloc=True)
    net(mx.nd.zeros((2, 64)))
    o = cfg.optim
    kwargs = {"learning_rate": o.learning_rate, "wd": o.weight_decay}
    kwargs["momentum" if o.optimizer in ("sgd", "nag") else "beta1"] = o.momentum
    trainer = gluon.Trainer(net.collect_params(), o.optimizer, kwargs)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    data = [(mx.nd.array(b.features), mx.nd.array(b.labels)) for b in batches]

    def run():
        for x, y in data:
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
        mx.nd.waitall()

    return run


def _ours(task, batches, lr: float):
    import mxnet as mx

    def run():
        for b in batches:
            task.train_step(b, lr)
        mx.nd.waitall()

    return run


def figures(steps: int, batch_size: int, reps: int) -> tuple[list[Figure], dict]:
    out, extra = [], {}
    for recipe, label in (("digits-cnn", "cnn"), ("digits-fcn", "mlp")):
        cfg, _info, batches, task = _setup(recipe, steps, batch_size)
        samples = steps * batch_size
        t_ours = median_time(_ours(task, batches, cfg.optim.learning_rate), reps)
        t_bare = median_time(_bare(cfg, batches), reps)
        out.append(
            ratio_figure(
                f"step_overhead_{label}",
                samples / t_ours,
                samples / t_bare,
                ">= 0.95",
                "samples/s",
                f"{recipe} model, batch {batch_size}, 1 thread",
            )
        )
        extra[f"step_seconds_{label}"] = t_ours / steps
        extra[f"params_{label}"] = task.num_params()
        if label == "cnn":
            out.append(_tracking(task, batches, cfg, reps))
    return out, extra


def _tracking(task, batches, cfg, reps: int) -> Figure:
    from mlflow import MlflowClient

    from pipeline.tracking.mlflow_run import RunLogger

    plain = _ours(task, batches, cfg.optim.learning_rate)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/bench.db"
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("bench")).info.run_id
        logger = RunLogger(uri, run_id)
        epoch = iter(range(10_000))

        def logged():
            plain()
            logger.log_metrics(
                {"train_loss": 0.5, "val_accuracy": 0.9, "grad_norm": 1.0}, step=next(epoch)
            )

        t_logged = median_time(logged, reps)
        t_plain = median_time(plain, reps)
        logger.close()
    return ratio_figure(
        "tracking_overhead",
        t_logged,
        t_plain,
        "<= 1.01",
        "s/epoch",
        f"{len(batches)} steps per epoch; one MLflow log_batch per epoch (sqlite)",
    )
