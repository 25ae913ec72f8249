"""Training-loop figures, in this process with a 1-rank Horovod:

* step_overhead_<model>: samples/s of our loop (the shard reader over a data set held in
  memory, as with data.cache=memory: shuffled windows, one device copy per window; then the
  task's train_step: masked loss, DistributedTrainer, gradient-norm tally, update) against a
  bare Gluon loop (same model, batch and optimizer) on NDArrays already in memory.

(tracking_overhead is a whole-job figure: whole_jobs.py.)
"""

from __future__ import annotations

import tempfile

from jobs.benchmarks.harness import Figure, paired_times, ratio_figure
from pipeline.config import load_job_config


def _setup(recipe: str, steps: int, batch_size: int, tmp: str):
    """A 1-rank task and a reader over a synthetic data set held in memory, as the loop has."""
    import horovod.mxnet as hvd
    import mxnet as mx

    from pipeline.data.contract import inspect_dataset
    from pipeline.data.datasets import synthetic_splits
    from pipeline.data.ingest import ShardReader, open_source
    from pipeline.data.prepare import write_dataset
    from pipeline.train.context import WorkerContext
    from pipeline.train.tasks import make_task

    hvd.init()
    rows = steps * batch_size
    dataset = synthetic_splits(rows * 10 // 8 + 3, (1, 8, 8), 10, seed=0)
    write_dataset(tmp, dataset, rows_per_file=rows, row_group_size=1024)
    info = inspect_dataset(tmp, splits=("train",))
    cfg = load_job_config(recipe, [f"data.batch_size={batch_size}", f"data.uri={tmp}"])
    reader = ShardReader(
        open_source(info, "train", memory=True),
        info.splits["train"],
        info.num_features,
        0,
        1,
        cfg.seed,
    )
    mx.random.seed(0)
    task = make_task(WorkerContext(cfg, info, mx.cpu(), hvd, hvd.size(), hvd.rank()))
    return cfg, reader, task


def _bare(cfg, reader):
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
    data = [
        (mx.nd.array(b.features), mx.nd.array(b.labels))
        for b in reader.batches(0, cfg.data.batch_size)
    ]

    def run():
        for x, y in data:
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
        mx.nd.waitall()

    return run


def _ours(task, reader, cfg):
    """An epoch as the loop runs it: the reader's shuffled batches (one device copy per
    window) into the task's train_step, with the loop's bound on steps queued ahead."""
    import mxnet as mx

    from pipeline.train.loop import EngineThrottle

    def run():
        throttle = EngineThrottle("")
        batches = reader.batches(
            0, cfg.data.batch_size, shuffle_rows=cfg.data.shuffle_buffer, ctx=mx.cpu()
        )
        for step, b in enumerate(batches):
            throttle.add(task.train_step(b, cfg.optim.learning_rate), 0, step)
        throttle.drain()
        mx.nd.waitall()

    return run


def figures(steps: int, batch_size: int, reps: int) -> tuple[list[Figure], dict]:
    out, extra = [], {}
    for recipe, label in (("digits-cnn", "cnn"), ("digits-fcn", "mlp")):
        with tempfile.TemporaryDirectory() as tmp:
            cfg, reader, task = _setup(recipe, steps, batch_size, tmp)
        samples = reader.split.rows
        t_ours, t_bare = paired_times(_ours(task, reader, cfg), _bare(cfg, reader), reps)
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
        extra[f"step_seconds_{label}"] = t_ours / reader.steps(batch_size)
        extra[f"params_{label}"] = task.num_params()
    return out, extra
