"""The time-to-accuracy baseline: the training script a competent Horovod user writes for the
same recipe, run under ``horovodrun -np N --gloo``. No Ray, no MLflow, no checkpoints, no
reader: the Parquet files are read once into memory.

Same as the recipe: model (``models.build_model`` with the recipe's arch, Xavier init),
optimizer and its settings, batch per rank, epochs, the learning-rate schedule (linear
scaling, warm-up, cosine), and the augmentation (random crop after zero padding, horizontal
flip), done here vectorised over the rank's shard once per epoch. Each epoch reshuffles the
rows, and each rank takes its share. After every epoch the ranks score the validation split
between them and stop at the first epoch that reaches ``optim.stop_at`` (the same rule our job
gets, MLPerf's: evaluate each epoch, stop the clock at the first that reaches the target); at
the end every rank scores its share of the test split.

    horovodrun -np 2 --gloo python -m jobs.benchmarks.tta_worker DATA RECIPE [key=value ...]

Rank 0 prints ``TTA {"val_accuracy", "epochs", "test_accuracy", "end_unix", "epochs_seconds",
"training_seconds", "samples_per_s_per_worker"}`` (``epochs_seconds``: the epochs with the
validation after each; ``training_seconds``: their training loops only).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _read(uri: str, split: str, shape: tuple[int, ...]):
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(str(p) for p in Path(uri, split).glob("*.parquet")))
    meta = table.schema.metadata or {}
    scale = float(meta.get(b"mxtrain.feature_scale", b"1"))
    flat = table.column("features").combine_chunks().flatten().to_numpy()
    x = flat.astype(np.float32).reshape(-1, *shape) * np.float32(scale)
    return x, table.column("label").to_numpy()


def _augment(x, rng, padding: int, flip: bool):
    """Random crop of the zero-padded images and a random horizontal flip, per image."""
    import numpy as np

    n, _, h, w = x.shape
    if padding:
        padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        dy = rng.integers(0, 2 * padding + 1, n)
        dx = rng.integers(0, 2 * padding + 1, n)
        out = np.empty_like(x)
        for oy in range(2 * padding + 1):
            for ox in range(2 * padding + 1):
                rows = np.flatnonzero((dy == oy) & (dx == ox))
                out[rows] = padded[rows, :, oy : oy + h, ox : ox + w]
        x = out
    if flip:
        mirror = rng.random(n) < 0.5
        x[mirror] = x[mirror, :, :, ::-1]
    return x


def _accuracy(hvd, net, x, y, world: int, rank: int, name: str) -> float:
    """Share of ``x`` the network labels as ``y``, each rank scoring a part, summed."""
    import mxnet as mx
    import numpy as np

    share = np.array_split(np.arange(len(y)), world)[rank]
    pred = net(mx.nd.array(x[share].reshape(len(share), -1))).argmax(axis=1).asnumpy()
    correct = hvd.allreduce(
        mx.nd.array([float((pred == y[share]).sum())]), average=False, name=name
    )
    return float(correct.asscalar()) / len(y)


def main() -> None:
    import horovod.mxnet as hvd
    import mxnet as mx
    import numpy as np
    import pyarrow.parquet as pq
    from mxnet import autograd, gluon

    from jobs.benchmarks.bare_gluon import bare_network
    from pipeline.config import load_job_config
    from pipeline.config.stop_rule import StopRule
    from pipeline.train.schedule import lr_at

    uri, recipe, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    cfg = load_job_config(recipe, [f"data.uri={uri}", *overrides])
    first = next(Path(uri, "train").glob("*.parquet"))
    meta = pq.read_schema(first).metadata
    shape = tuple(json.loads(meta[b"mxtrain.feature_shape"]))
    classes = int(meta[b"mxtrain.num_classes"])
    x_train, y_train = _read(uri, "train", shape)
    x_val, y_val = _read(uri, "val", shape)
    x_test, y_test = _read(uri, "test", shape)
    stop = StopRule.parse(cfg.optim.stop_at)

    mx.random.seed(cfg.seed)
    net, trainer = bare_network(cfg, shape, classes)
    o = cfg.optim
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    batch = cfg.data.batch_size
    per_rank = len(y_train) // world
    steps = per_rank // batch
    aug = cfg.augment
    start = time.perf_counter()
    val_accuracy, epochs, training = 0.0, 0, 0.0
    for epoch in range(o.epochs):
        epoch_start = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        mine = rng.permutation(len(y_train))[rank::world][: steps * batch]
        x = x_train[mine]
        if aug.crop_padding or aug.flip:
            x = _augment(
                x, np.random.default_rng([cfg.seed, epoch, rank]), aug.crop_padding, aug.flip
            )
        xs = mx.nd.array(x.reshape(len(x), -1))  # one copy per epoch
        ys = mx.nd.array(y_train[mine])
        for s in range(steps):
            trainer.set_learning_rate(lr_at(o, world, epoch * steps + s, steps))
            xb, yb = xs[s * batch : (s + 1) * batch], ys[s * batch : (s + 1) * batch]
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(batch)
        mx.nd.waitall()
        training += time.perf_counter() - epoch_start  # samples/s as ours counts it
        epochs = epoch + 1
        val_accuracy = _accuracy(hvd, net, x_val, y_val, world, rank, f"val{epoch}")
        if rank == 0:  # where the run is, as ours prints it
            print(
                f"epoch {epoch + 1}/{o.epochs}: val_accuracy {val_accuracy:.4f},"
                f" {time.perf_counter() - epoch_start:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        if stop and stop.met({"val_accuracy": val_accuracy}):
            break
    epochs_seconds = time.perf_counter() - start
    accuracy = _accuracy(hvd, net, x_test, y_test, world, rank, "test")
    if rank == 0:
        result = {
            "val_accuracy": val_accuracy,
            "epochs": epochs,
            "test_accuracy": accuracy,
            "end_unix": time.time(),
            "epochs_seconds": epochs_seconds,
            "training_seconds": training,
            "samples_per_s_per_worker": epochs * steps * batch / training,
        }
        print("TTA " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
