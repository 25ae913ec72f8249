"""scaling_efficiency: what a second worker adds, through the real path.

* value: 2-worker throughput / (2 x 1-worker throughput) of whole jobs (local Ray, our
  Horovod backend, our reader; the loop's own ``samples_per_sec``, which times training and
  excludes evaluation), jobs of 1 and 2 workers alternated;
* baseline, the ceiling this machine sets: our training task in two 1-rank processes side by
  side (no communication, no Ray), against twice one alone. What they lose is the cost of
  sharing the cores; what the 2-worker job loses beyond it is ours (communication, Ray,
  threads).
* ratio = efficiency / ceiling, target >= 0.9.

The note keeps three references: two bare Gluon loops side by side (no reader, no Horovod);
Horovod's own example loop (``hvd.DistributedTrainer``, no Ray, no reader) with 2 ranks
against twice 1 rank, i.e. how far the stack itself scales here with none of our code; and the
model t_c / (t_c + t_allreduce) from the 1-rank step time and the allreduce time of the
model's gradient size (no overlap, every parameter counted as a gradient).
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jobs.benchmarks.comm import allreduce_time
from jobs.benchmarks.harness import Figure, spread
from jobs.benchmarks.procs import horovodrun, json_line, python
from jobs.benchmarks.whole_jobs import run_job_for_bench


def _side_by_side(module: str, args: list[str], tag: str) -> tuple[float, float, dict]:
    """(rate of one process alone, summed rate of two side by side, the alone run's line)."""
    alone = json_line(python(module, *args), tag)
    with ThreadPoolExecutor(2) as pool:
        pair = list(pool.map(lambda _: json_line(python(module, *args), tag), range(2)))
    return alone["samples_per_s"], sum(p["samples_per_s"] for p in pair), alone


def scaling_figure(
    uri: str,
    recipe: str,
    epochs: int,
    batch: int,
    reps: int,
    tmp: Path,
    allreduce_seconds: dict[int, float],
) -> Figure:
    common = [
        f"optim.epochs={epochs}",
        "optim.warmup_epochs=0",
        f"data.batch_size={batch}",
        "tracking.enabled=false",
    ]
    rates: dict[int, list[float]] = {1: [], 2: []}
    ceilings, bare_ceilings, bare_horovod, steps = [], [], [], []
    task_args = [uri, recipe, str(epochs), str(batch)]
    for rep in range(reps):
        for workers in (1, 2) if rep % 2 == 0 else (2, 1):
            _, metrics = run_job_for_bench(
                uri, recipe, tmp, [*common, f"scaling.num_workers={workers}"]
            )
            rates[workers].append(metrics["samples_per_sec"])
        alone, pair, line = _side_by_side(
            "jobs.benchmarks.hvd_train_worker", task_args, "HVDTRAIN "
        )
        ceilings.append(pair / (2 * alone))
        steps.append(line["step_s"])
        alone, pair, _ = _side_by_side(
            "jobs.benchmarks.bare_worker", [recipe, "300", str(batch)], "BARE "
        )
        bare_ceilings.append(pair / (2 * alone))
        bare_args = [recipe, "300", str(batch), "hvd"]
        hvd_rates = [
            json_line(horovodrun(n, "jobs.benchmarks.bare_worker", *bare_args)[0], "BARE ")
            for n in ((1, 2) if rep % 2 == 0 else (2, 1))
        ]
        one, two = sorted(hvd_rates, key=lambda r: r["ranks"])
        bare_horovod.append(two["samples_per_s"] / (2 * one["samples_per_s"]))
    efficiencies = [two / (2 * one) for one, two in zip(rates[1], rates[2], strict=True)]
    ratios = [e / c for e, c in zip(efficiencies, ceilings, strict=True)]
    efficiency, ceiling = statistics.median(efficiencies), statistics.median(ceilings)
    t_c = statistics.median(steps)
    grad_bytes = int(line.get("params", 0)) * 4
    t_a = allreduce_time(allreduce_seconds, grad_bytes) if grad_bytes else float("nan")
    return Figure(
        "scaling_efficiency",
        efficiency,
        ceiling,
        statistics.median(ratios),
        ">= 0.9",
        "efficiency",
        f"{recipe} jobs on Ray: 1 worker {statistics.median(rates[1]):,.0f}, 2 workers "
        f"{statistics.median(rates[2]):,.0f} samples/s; baseline: our task in two 1-rank "
        f"processes side by side (no communication) vs one alone; {spread(ratios)}; "
        f"two bare Gluon loops side by side: {statistics.median(bare_ceilings):.2f}; "
        "Horovod's example loop (hvd.DistributedTrainer, data in memory, no Ray) 2 ranks vs "
        f"twice 1 rank: {statistics.median(bare_horovod):.2f}; "
        f"model t_c/(t_c+t_a): step {t_c * 1e3:.2f} ms + allreduce of "
        f"{grad_bytes / 2**20:.2f} MB {t_a * 1e3:.2f} ms = {t_c / (t_c + t_a):.2f}",
    )
