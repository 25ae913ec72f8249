"""The batch-scoring baseline: one Python process, as a competent user writes it without Ray.

pyarrow reads each file with its own thread pool, the features go to numpy in one call, the
model's MLflow pyfunc scores them in batches of 1,024 rows with MXNet using every core
(``--threads``), and the predictions go to one Parquet file per input file. Prints
``BASELINE {"seconds": S, "rows": N}``: the time from loading the model to the last file
written (the interpreter's start and imports are not counted; ours counts its actors').
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=int, default=1024)
    args = p.parse_args()
    for name in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)

    import time
    from pathlib import Path

    import mlflow.pyfunc
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    model = mlflow.pyfunc.load_model(args.model_dir)
    files = sorted(Path(args.data).glob("*.parquet"))
    scale = None
    rows = 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    step = args.batch_size
    for i, path in enumerate(files):
        table = pq.read_table(path, use_threads=True)
        meta = table.schema.metadata or {}
        scale = float(meta[b"mxtrain.feature_scale"]) if b"mxtrain.feature_scale" in meta else None
        features = table.column("features").combine_chunks()
        x = features.flatten().to_numpy(zero_copy_only=False).reshape(len(features), -1)
        x = x.astype(np.float32) * np.float32(scale) if scale else x.astype(np.float32)
        answers = [model.predict(x[s : s + step]) for s in range(0, len(x), step)]
        # A model of named classes answers with a DataFrame: its probability_<name> columns.
        probs = np.concatenate(
            [
                a.filter(like="probability_").to_numpy() if hasattr(a, "filter") else a
                for a in answers
            ]
        )
        out = pa.table(
            {
                "id": table.column("id"),
                "prediction": pa.array(probs.argmax(axis=1)),
                "probabilities": pa.FixedSizeListArray.from_arrays(
                    pa.array(probs.astype(np.float32).ravel()), probs.shape[1]
                ),
            }
        )
        pq.write_table(out, Path(args.out) / f"part-{i:05d}.parquet")
        rows += len(x)
    seconds = time.perf_counter() - start
    print("BASELINE " + json.dumps({"seconds": seconds, "rows": rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
