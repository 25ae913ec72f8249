"""Run under ``horovodrun -np 2 --gloo``: times hvd.allreduce per message size; rank 0 prints
one JSON line {bytes: median seconds}."""

from __future__ import annotations

import json
import statistics
import sys
import time


def main() -> None:
    import horovod.mxnet as hvd
    import mxnet as mx

    hvd.init()
    sizes = [int(s) for s in sys.argv[1].split(",")]
    reps = int(sys.argv[2])
    result = {}
    for size in sizes:
        x = mx.nd.ones((size // 4,), dtype="float32")
        hvd.allreduce(x, name=f"warm{size}").wait_to_read()
        times = []
        for i in range(reps):
            start = time.perf_counter()
            hvd.allreduce(x, average=False, name=f"b{size}.{i}").wait_to_read()
            times.append(time.perf_counter() - start)
        result[size] = statistics.median(times)
    if hvd.rank() == 0:
        print("ALLREDUCE " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
