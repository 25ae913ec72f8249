"""Our training task on this rank's share of a Parquet data set held in memory, without Ray:
under ``horovodrun -np N --gloo``, or as a plain process (1 rank). Rank 0 prints one JSON
line with the first step's wall-clock time and the steady-state throughput of all ranks
(epochs after the first)."""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import horovod.mxnet as hvd
    import mxnet as mx
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.config import load_job_config
    from pipeline.data.contract import inspect_dataset
    from pipeline.data.ingest import arrow_to_batch
    from pipeline.train.context import WorkerContext
    from pipeline.train.tasks import make_task

    uri, recipe, epochs, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    cfg = load_job_config(recipe, [f"data.uri={uri}", f"data.batch_size={batch_size}"])
    info = inspect_dataset(uri, splits=("train",))
    table = pq.read_table(list(info.splits["train"].files))
    per_rank = table.num_rows // world
    batch = arrow_to_batch(table.slice(rank * per_rank, per_rank), info.num_features)
    steps = per_rank // batch_size
    mx.random.seed(0)
    task = make_task(WorkerContext(cfg, info, mx.cpu(), hvd, world, rank))
    first_step = None
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for s in range(steps):
            sl = slice(s * batch_size, (s + 1) * batch_size)
            part = type(batch)(batch.features[sl], batch.labels[sl], batch.ids[sl])
            task.train_step(part, cfg.optim.learning_rate)
            if first_step is None:
                mx.nd.waitall()
                first_step = time.time()
        mx.nd.waitall()
        times.append(time.perf_counter() - start)
    steady = float(np.median(times[1:] if len(times) > 1 else times))
    if rank == 0:
        print(
            "HVDTRAIN "
            + json.dumps(
                {
                    "first_step_unix": first_step,
                    "samples_per_s": world * steps * batch_size / steady,
                    "step_s": steady / steps,
                    "params": task.num_params(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
