"""Batch-scoring figures: ``jobs.predict`` (Ray Data, 2 actors) against one process calling
the same pyfunc, and its memory as the data grows 8x.

* predict_vs_pyfunc: rows/s of :func:`pipeline.predict.batch.predict` (2 actors x 1 CPU on a
  running local Ray: actor start, model loads, reading, scoring and writing the output and its
  manifest) against ``pyfunc_baseline.py`` (one process, pyarrow's thread pool, MXNet with as
  many threads as cores, batches of 1,024, the same output columns; model load to last file).
  The same files, the same registered model (fashion-cnn's architecture: scoring costs the
  same with trained or untrained weights), alternated pairs.
* predict_rss_growth: the peak of the summed private memory (USS) of the driver and every
  Ray worker process (the actors and read tasks; sampled every 0.2 s) scoring 8x the rows,
  against 1x; the note gives the summed RSS too (see :class:`MemoryPeak`).
"""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
from pathlib import Path

from jobs.benchmarks.harness import Figure, alternate, ratio_figure, spread
from jobs.benchmarks.procs import json_line, python

BASELINE_BATCH = 1024


def register_model(tmp: Path, feature_shape: tuple[int, ...]) -> tuple[str, str]:
    """fashion-cnn's network registered in a store of its own: (tracking URI, model URI)."""
    import mxnet as mx
    from mlflow import MlflowClient

    from models import build_model
    from pipeline.config import load_job_config
    from pipeline.data.contract import DatasetInfo, SplitInfo
    from pipeline.model import bundle
    from pipeline.tracking import registry

    store = f"sqlite:///{tmp / 'predict-bench.db'}"
    cfg = load_job_config("fashion-cnn", [f"tracking.uri={store}"])
    info = DatasetInfo("memory://", feature_shape, 10, {"train": SplitInfo((), 1)})
    net = build_model("cnn", cfg.model.arch, feature_shape, 10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    example = mx.nd.zeros((2, info.num_features))
    net(example)
    written = bundle.write(
        tmp / "predict-model", net, bundle.BundleMeta.for_data("classifier", 0, info)
    )
    run_id = MlflowClient(store).create_run("0").info.run_id
    reg = registry.log_and_register_model(
        cfg, run_id, str(written.directory), example.asnumpy(), {}
    )
    assert reg is not None
    return store, f"models:/{reg.name}/{reg.version}"


def scoring_copies(source: str, copies: int, out: Path) -> str:
    """``copies`` copies of the Parquet files in ``source`` (a split folder) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(Path(source).glob("*.parquet"))
    for i in range(copies):
        for f in files:
            target = out / f"copy{i:03d}-{f.name}"
            if not target.exists():
                shutil.copyfile(f, target)
    return str(out)


class MemoryPeak:
    """Peaks of the summed private memory (USS) and of the summed RSS of this process and
    every Ray worker process, sampled every ``every_s``.

    RSS also counts the object store's shared pages each process has touched: the same pages
    in several processes, and a high-water mark of the store's arena, which ``--buffer-mb``
    caps. USS is what each process holds by itself: what grows if something buffers rows."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.uss = 0
        self.rss = 0
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process().pid
        while not self._stop.is_set():
            uss = rss = 0
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    if proc.pid == me or "default_worker.py" in cmd or cmd.startswith("ray::"):
                        info = proc.memory_full_info()
                        uss += info.uss
                        rss += info.rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.uss = max(self.uss, uss)
            self.rss = max(self.rss, rss)
            self._stop.wait(self._every)


def predict_figures(data: str, copies: int, reps: int, tmp: Path) -> list[Figure]:
    import pyarrow.parquet as pq

    from pipeline.distributed.ray_runtime import ray_runtime
    from pipeline.predict.batch import READ_CPUS, PredictRequest, predict
    from pipeline.tracking.model_source import fetch_source_model

    first = sorted(Path(data).glob("*.parquet"))[0]
    metadata = pq.read_schema(first).metadata or {}
    shape = tuple(json.loads(metadata[b"mxtrain.feature_shape"]))
    store, model = register_model(tmp, shape)
    model_dir = fetch_source_model(model, store, tmp / "predict-dl").path
    small = scoring_copies(data, copies, tmp / "score-1x")
    large = scoring_copies(data, 8 * copies, tmp / "score-8x")
    rows = sum(pq.read_metadata(f).num_rows for f in Path(small).glob("*.parquet"))
    runs = iter(range(10**6))

    def ours(uri: str) -> float:
        out = tmp / f"predict-out-{next(runs)}"
        start = time.perf_counter()
        predict(
            PredictRequest(model, uri, str(out), tracking_uri=store, track=False),
            progress=lambda _m: None,
        )
        seconds = time.perf_counter() - start
        shutil.rmtree(out)
        return seconds

    def baseline() -> float:
        out = tmp / f"baseline-out-{next(runs)}"
        stdout = python(
            "jobs.benchmarks.pyfunc_baseline",
            "--model-dir", str(model_dir), "--data", small, "--out", str(out),
            "--batch-size", str(BASELINE_BATCH),
        )  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
        return float(json_line(stdout, "BASELINE ")["seconds"])

    with ray_runtime(2 + READ_CPUS, 1, lambda _m: None):
        ours_s, base_s = alternate(lambda: ours(small), baseline, reps)
    peaks = []
    for uri in (small, large):
        # A Ray of its own per run: the actors of an earlier run outlive it for a while and
        # would count in the next run's sum.
        with ray_runtime(2 + READ_CPUS, 1, lambda _m: None), MemoryPeak() as memory:
            ours(uri)
        peaks.append(memory)
    ratios = [b / a for a, b in zip(ours_s, base_s, strict=True)]
    speed = Figure(
        "predict_vs_pyfunc",
        rows / statistics.median(ours_s),
        rows / statistics.median(base_s),
        statistics.median(ratios),
        ">= 1.6",
        "rows/s",
        f"{rows:,} rows of {Path(data).name} ({copies} copies), fashion-cnn's network; ours: "
        "jobs.predict with 2 actors x 1 CPU on a running Ray, actor start included; baseline: "
        "one process, pyfunc.predict in batches of 1,024, MXNet threads = cores, model load "
        f"to last file; {spread(ratios)}",
    )
    small_peak, large_peak = peaks
    memory = ratio_figure(
        "predict_rss_growth",
        large_peak.uss / 2**20,
        small_peak.uss / 2**20,
        "<= 1.1",
        "MB",
        f"peak summed private memory (USS) of the driver and all Ray worker processes scoring "
        f"{8 * rows:,} vs {rows:,} rows, each run on a fresh local Ray, one run each; summed "
        f"RSS {large_peak.rss / 2**20:,.0f} vs {small_peak.rss / 2**20:,.0f} MB (ratio "
        f"{large_peak.rss / small_peak.rss:.3f}: it also counts the object store's shared "
        "pages each process touched, capped by --buffer-mb)",
    )
    return [speed, memory]
