"""The per-worker training loop: one readable function run by every Horovod rank.

Each rank reads its shard of every split, trains a replica of the model, and lets
``hvd.DistributedTrainer`` average gradients. Rank 0 alone logs to MLflow and writes
checkpoints (the ``is_chief`` flag gates both).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import JobConfig
from pipeline.data.contract import DatasetInfo
from pipeline.data.ingest import arrow_to_batch, steps_per_epoch
from pipeline.train import trace
from pipeline.train.schedule import lr_at


@dataclass(frozen=True)
class WorkerPayload:
    """Everything the driver hands to each worker (pickled once by Ray)."""

    config: JobConfig
    info: DatasetInfo
    run_id: str
    tracking_uri: str


def train_worker(payload: WorkerPayload) -> None:
    import horovod.mxnet as hvd
    import mxnet as mx
    import ray.train
    from mxnet import autograd, gluon

    from models import build_model, count_params
    from pipeline.distributed.device import worker_context
    from pipeline.tracking.mlflow_run import META_FILE, RunLogger

    cfg, info = payload.config, payload.info
    # Ray Train logs every report and checkpoint at INFO; our own epoch line says it all.
    # (One of its loggers is named by file path, hence the second test.)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("ray.train", "ray.data")) or "/ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)
    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    is_chief = rank == 0
    ctx = worker_context(mx, cfg.scaling.use_gpu, hvd.local_rank())
    mx.random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    logger = RunLogger(payload.tracking_uri, payload.run_id) if is_chief else None

    net = build_model(cfg.model.name, cfg.model.arch, info.feature_shape, info.num_classes)
    net.initialize(mx.init.Xavier(magnitude=2.0), ctx=ctx)
    net.hybridize(static_alloc=True)
    net(mx.nd.zeros((2, info.num_features), ctx=ctx))  # resolve deferred shapes
    params = net.collect_params()
    _broadcast_from_root(hvd, params)
    trainable = [p for p in params.values() if p.grad_req != "null"]
    running_stats = [p for p in params.values() if p.grad_req == "null"]
    if logger:
        logger.log_params({"model.num_params": count_params(net)})

    train_rows = info.splits["train"].rows
    steps = steps_per_epoch(train_rows, world, cfg.data.batch_size)
    optim = cfg.optim
    opt_kwargs: dict[str, Any] = {
        "learning_rate": lr_at(optim, world, 0, steps),
        "wd": optim.weight_decay,
    }
    if optim.optimizer in ("sgd", "nag"):
        opt_kwargs["momentum"] = optim.momentum
    else:
        opt_kwargs["beta1"] = optim.momentum
    trainer = hvd.DistributedTrainer(params, mx.optimizer.create(optim.optimizer, **opt_kwargs))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    shards = {s: ray.train.get_dataset_shard(s) for s in ("train", "val", "test")}
    tracer = trace.Tracer.from_env(rank)
    train_time = 0.0
    train_samples = 0
    if is_chief:
        print(
            f"training {cfg.recipe}: {world} workers, {train_rows} train rows, {steps} steps "
            f"per epoch per worker, {optim.epochs} epochs",
            flush=True,
        )
    for epoch in range(optim.epochs):
        start = time.perf_counter()
        loss_sum = mx.nd.zeros((1,), ctx=ctx)
        sq_norm_sum = mx.nd.zeros((1,), ctx=ctx)
        real = 0
        n_steps = 0
        seen: list[np.ndarray] = []
        batches = shards["train"].iter_batches(
            batch_size=cfg.data.batch_size,
            batch_format="pyarrow",
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            local_shuffle_seed=(cfg.seed * 100_003 + epoch * 101 + rank)
            if cfg.data.shuffle_buffer
            else None,
            prefetch_batches=2,
        )
        for table in batches:
            if n_steps == steps:  # never more steps than the other ranks
                raise RuntimeError(f"rank {rank}: shard has more than {steps} batches")
            batch = arrow_to_batch(table, info.num_features)
            x = mx.nd.array(batch.features, ctx=ctx)
            y = mx.nd.array(batch.labels, ctx=ctx, dtype="float32")
            w = mx.nd.array(batch.mask, ctx=ctx)
            trainer.set_learning_rate(lr_at(optim, world, epoch * steps + n_steps, steps))
            with autograd.record():
                loss = loss_fn(net(x), y, w.reshape((-1, 1)))
            loss.backward()
            trainer.allreduce_grads()
            # After the allreduce every rank holds the same summed gradients; their norm,
            # scaled like the update, is the global gradient norm of the mean loss.
            scale = 1.0 / (world * len(batch.labels))
            sq = mx.nd.add_n(*[mx.nd.square(p.grad(ctx)).sum() for p in trainable])
            sq_norm_sum = sq_norm_sum + sq * scale**2  # stays on the device: no sync
            if optim.grad_clip_norm > 0:
                grad_norm = float(np.sqrt(sq.asscalar())) * scale
                if grad_norm > optim.grad_clip_norm:
                    for p in trainable:
                        p.grad(ctx)[:] *= optim.grad_clip_norm / grad_norm
            trainer.update(len(batch.labels))
            loss_sum += loss.sum()
            real += batch.num_real
            n_steps += 1
            if tracer:
                seen.append(batch.ids[batch.labels >= 0])
        if n_steps != steps:
            raise RuntimeError(f"rank {rank}: shard gave {n_steps} batches, expected {steps}")
        _average_running_stats(hvd, running_stats, epoch)
        epoch_time = time.perf_counter() - start
        train_time += epoch_time
        totals = _allreduce_sum(hvd, [loss_sum.asscalar(), real], f"train{epoch}")
        train_loss = totals[0] / max(totals[1], 1)
        train_samples += int(totals[1])
        val_acc = evaluate(net, shards["val"], info, cfg, ctx, hvd, f"val{epoch}")
        metrics = {
            "train_loss": train_loss,
            "val_accuracy": val_acc,
            "grad_norm": float(np.sqrt(sq_norm_sum.asscalar() / max(n_steps, 1))),
            "learning_rate": trainer.learning_rate,
            "epoch_time_s": epoch_time,
        }
        last = epoch == optim.epochs - 1
        if last:
            metrics["test_accuracy"] = evaluate(net, shards["test"], info, cfg, ctx, hvd, "test")
            metrics["samples_per_sec"] = train_samples / train_time
        if tracer:
            tracer.epoch(epoch, n_steps, np.concatenate(seen) if seen else np.array([]), params)
        if logger:
            logger.log_metrics(metrics, step=epoch)
            extra = "".join(f"  {k} {metrics[k]:.4f}" for k in ("test_accuracy",) if k in metrics)
            print(
                f"epoch {epoch + 1:>3}/{optim.epochs}  train_loss {train_loss:.4f}  "
                f"val_accuracy {val_acc:.4f}  grad_norm {metrics['grad_norm']:.3f}  "
                f"{totals[1] / epoch_time:,.0f} samples/s{extra}",
                flush=True,
            )
        report = {**metrics, "epoch": epoch}
        if is_chief:
            with tempfile.TemporaryDirectory() as tmp:
                _export(net, tmp, info, META_FILE, epoch)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(report)


def _allreduce_sum(hvd, values: list[float], name: str) -> np.ndarray:
    import mxnet as mx

    summed = hvd.allreduce(mx.nd.array(values, dtype="float64"), average=False, name=name)
    return summed.asnumpy()


# MXNet's MKL-DNN kernels may keep parameters in a blocked memory layout that Horovod cannot
# read ("We can't generate TBlob for MKLDNN data"; seen as crashed or mismatched collectives).
# The two collectives on parameters therefore go through plain copies; gradients are unaffected.


def _plain_copy(array):
    import mxnet as mx

    return mx.nd.array(array.asnumpy(), ctx=array.context, dtype=array.dtype)


def _broadcast_from_root(hvd, params) -> None:
    """Every rank starts from rank 0's initial parameters (hvd.broadcast_parameters, but
    through plain copies)."""
    for i, (_, p) in enumerate(sorted(params.items())):
        plain = _plain_copy(p.data())
        hvd.broadcast_(plain, root_rank=0, name=f"init.{i}")
        p.set_data(plain)


def _average_running_stats(hvd, stats, epoch: int) -> None:
    """Batch-norm running means/variances are per rank; average them so all replicas agree."""
    for i, p in enumerate(stats):
        plain = _plain_copy(p.data())
        hvd.allreduce_(plain, average=True, name=f"bnstat{epoch}.{i}")
        p.set_data(plain)


def evaluate(net, shard, info: DatasetInfo, cfg: JobConfig, ctx, hvd, name: str) -> float:
    """Accuracy over a whole split: each rank scores its shard, the counts are summed."""
    import mxnet as mx

    correct = 0
    total = 0
    for table in shard.iter_batches(
        batch_size=cfg.data.eval_batch_size, batch_format="pyarrow", prefetch_batches=2
    ):
        batch = arrow_to_batch(table, info.num_features)
        pred = net(mx.nd.array(batch.features, ctx=ctx)).argmax(axis=1).asnumpy()
        keep = batch.labels >= 0
        correct += int(np.count_nonzero(pred[keep] == batch.labels[keep]))
        total += int(np.count_nonzero(keep))
    summed = _allreduce_sum(hvd, [correct, total], name)
    return float(summed[0] / max(summed[1], 1))


def _export(net, directory: str, info: DatasetInfo, meta_file: str, epoch: int) -> None:
    """MXNet's own format: graph JSON + NDArray params (no pickle), plus a small JSON."""
    net.export(os.path.join(directory, "model"), epoch=0)
    Path(directory, meta_file).write_text(
        json.dumps(
            {
                "epoch": epoch,
                "num_features": info.num_features,
                "feature_shape": list(info.feature_shape),
                "num_classes": info.num_classes,
            }
        )
    )
