"""step_overhead_<model>: our training loop against a bare Horovod Gluon loop, 2 ranks.

Both sides run in the same ``horovodrun -np 2 --gloo`` processes, in alternation, on the same
model, batch size and optimizer, over the same rows held in memory:

* ours: the shard reader over the rank's shard (as with ``data.cache=memory``: shuffled
  windows, one device copy per window), then the task's ``train_step`` (masked loss,
  ``hvd.DistributedTrainer`` through our DistributedNetwork, gradient-norm tally, update) with
  the loop's bound on steps queued ahead;
* bare: the loop Horovod's own MXNet example writes: ``hvd.DistributedTrainer`` over
  params broadcast from rank 0, forward, backward, ``trainer.step`` on NDArrays made
  once before timing.

Run as ``python -m jobs.benchmarks.step RECIPE STEPS BATCH REPS HANDICAP`` under
horovodrun; rank 0 prints ``STEP {"ours": [...], "bare": [...], ...}`` (seconds per epoch).

(tracking_overhead is a whole-job figure: whole_jobs.py.)
"""

from __future__ import annotations

import json
import sys
import tempfile

from jobs.benchmarks import harness
from jobs.benchmarks.bare_gluon import bare_network
from jobs.benchmarks.harness import Figure, paired_samples, throughput_figure
from jobs.benchmarks.procs import horovodrun, json_line

SHAPE = (1, 8, 8)


def _setup(recipe: str, steps: int, batch_size: int, tmp: str):
    """This rank's task and a reader over its shard of a synthetic set held in memory."""
    import horovod.mxnet as hvd
    import mxnet as mx

    from pipeline.config import load_job_config
    from pipeline.data.contract import inspect_dataset
    from pipeline.data.datasets import synthetic_splits
    from pipeline.data.ingest import ShardReader, open_source
    from pipeline.data.prepare import write_dataset
    from pipeline.train.context import WorkerContext
    from pipeline.train.tasks import make_task

    world, rank = hvd.size(), hvd.rank()
    rows = steps * batch_size * world
    write_dataset(tmp, synthetic_splits(rows * 10 // 8 + 3, SHAPE, 10, seed=0), rows_per_file=rows)
    info = inspect_dataset(tmp, splits=("train",))
    cfg = load_job_config(recipe, [f"data.batch_size={batch_size}", f"data.uri={tmp}"])
    reader = ShardReader(
        open_source(info, "train", memory=True),
        info.splits["train"],
        info.num_features,
        rank,
        world,
        cfg.seed,
    )
    mx.random.seed(0)
    task = make_task(WorkerContext(cfg, info, mx.cpu(), hvd, world, rank))
    return cfg, reader, task


def _bare(cfg, reader):
    import mxnet as mx
    from mxnet import autograd, gluon

    net, trainer = bare_network(cfg, SHAPE, 10)
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
            0, cfg.data.batch_size, shuffle_rows=cfg.data.shuffle_buffer, device=mx.cpu()
        )
        for step, b in enumerate(batches):
            throttle.add(task.train_step(b, cfg.optim.learning_rate), 0, step)
        throttle.drain()
        mx.nd.waitall()

    return run


def figures(steps: int, batch: int, reps: int, handicap: float) -> list[Figure]:
    """The two step_overhead figures, each from its own ``horovodrun -np 2``."""
    out = []
    for recipe, label in (("digits-cnn", "cnn"), ("digits-fcn", "mlp")):
        args = (recipe, str(steps), str(batch), str(reps), str(handicap))
        stdout, _ = horovodrun(2, "jobs.benchmarks.step", *args)
        line = json_line(stdout, "STEP ")
        out.append(
            throughput_figure(
                f"step_overhead_{label}",
                line["samples"],
                (line["ours"], line["bare"]),
                ">= 0.95",
                "samples/s",
                f"{recipe} model ({line['params']:,} parameters), 2 ranks (horovodrun), batch "
                f"{batch} per rank, 1 compute thread each, {steps} steps an epoch; ours: reader "
                "over data in memory + task train_step; baseline: bare Gluon loop with "
                "hvd.DistributedTrainer on prepared NDArrays",
            )
        )
    return out


def main() -> None:
    import horovod.mxnet as hvd

    recipe, steps, batch, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    handicap = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    hvd.init()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, reader, task = _setup(recipe, steps, batch, tmp)
    harness.HANDICAP = handicap
    ours, bare = paired_samples(_ours(task, reader, cfg), _bare(cfg, reader), reps)
    if hvd.rank() == 0:
        samples = reader.steps(batch) * batch * hvd.size()
        print(
            "STEP "
            + json.dumps(
                {"ours": ours, "bare": bare, "samples": samples, "params": task.num_params()}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
