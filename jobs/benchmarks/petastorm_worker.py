"""Petastorm's side of ingest_vs_petastorm, run by the interpreter of its own virtualenv
(``.bench/petastorm-venv``: petastorm 0.13.1 needs pyarrow < 15, this project pins 25).

Petastorm as its docs feed a framework: ``make_batch_reader`` over the folder, a pool of
reader threads (as many as cores), row groups in shuffled order, each batch (a row group)
copied to the device once and sliced into training batches there, as our reader does. One
unmeasured epoch, then one measured; prints ``PETASTORM {"rows", "seconds"}``.

Imports nothing of this project: its virtualenv has only petastorm, pyarrow, numpy, mxnet.

    .bench/petastorm-venv/bin/python jobs/benchmarks/petastorm_worker.py file:///path/train 64
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings


def epoch(url: str, batch_size: int) -> int:
    import mxnet as mx
    from petastorm import make_batch_reader

    rows = 0
    with make_batch_reader(
        url,
        num_epochs=1,
        workers_count=os.cpu_count() or 1,
        reader_pool_type="thread",
        shuffle_row_groups=True,
        schema_fields=["features", "label"],
    ) as reader:
        for group in reader:
            x = mx.nd.array(group.features)
            y = mx.nd.array(group.label)
            for lo in range(0, len(group.label), batch_size):
                x[lo : lo + batch_size]
                y[lo : lo + batch_size]
                rows += min(batch_size, len(group.label) - lo)
    mx.nd.waitall()
    return rows


def main() -> None:
    warnings.simplefilter("ignore")  # petastorm's own FutureWarnings about pyarrow's legacy API
    url, batch_size = sys.argv[1], int(sys.argv[2])
    epoch(url, batch_size)
    start = time.perf_counter()
    rows = epoch(url, batch_size)
    print("PETASTORM " + json.dumps({"rows": rows, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
