"""Start-up: seconds from launching a 2-worker job to its first training step.

* startup_warm_vs_horovodrun: ``python -m jobs.train`` joining a running Ray cluster through
  ``RAY_ADDRESS`` (a head started here, token authentication, as the cluster case runs),
  against ``horovodrun -np 2 --gloo`` running the same task on the same data. Target <= 2.0.
* startup_cold_vs_horovodrun: the same job starting its own local Ray (``make
  train-distributed`` without ``RAY_ADDRESS``). Reported with the floor any local-Ray job pays
  (a fresh process's ``ray.init`` + one task), not judged.

Both sides of each figure alternate; ours checks the data, starts Ray Train's controller and
workers, and meanwhile opens the MLflow run (sqlite) whose id rank 0 needs before its first
step; horovodrun reads the data into memory.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from infra.local.ray_head import start_head
from jobs.benchmarks.harness import Figure, alternate, paired_figure
from jobs.benchmarks.procs import REPO, horovodrun, jobs_train, json_line

#: The start-up's phases, each ending at an event of pipeline/train/trace.py (the driver's,
#: or the last rank's to get there), from the launch of ``python -m jobs.train``.
PHASES = (
    ("driver imports", "run_job"),
    ("preflight", "preflight_done"),
    ("Ray up", "ray_ready"),
    ("Ray Train starts the workers", "worker_process"),
    ("Ray worker and Ray Train set-up", "train_function"),
    ("MXNet and Horovod imported, rendezvous", "horovod_ready"),
    ("model built, weights broadcast", "task_ready"),
    ("readers open", "data_ready"),
    ("first step", "first_step"),
)


def _ours(uri: str, recipe: str, tmp: Path, env: dict[str, str], phases: list[dict]) -> float:
    """Launch-to-first-step seconds of one jobs.train run; its phases appended to
    ``phases`` (seconds each)."""
    from pipeline.train import trace

    trace_dir = tmp / f"trace-{time.time_ns()}"
    sets = ["optim.epochs=1", "optim.warmup_epochs=0", "tracking.register=false"]
    start, _ = jobs_train(uri, recipe, tmp, sets, {**env, "MXTRAIN_TRACE_DIR": str(trace_dir)})
    events = trace.read_events(trace_dir)
    reached = {name: max(e["t"] for e in events if e["event"] == name) for _, name in PHASES}
    previous, split = start, {}
    for label, name in PHASES:
        # A worker process Ray had started before the job (an idle worker it keeps) was born
        # before the phase began: that phase took no time of this job's.
        split[label] = max(0.0, reached[name] - previous)
        previous = max(previous, reached[name])
    # Off the way to the first step (pipeline/distributed/handoff.py), reported beside it:
    # when the run was open, and how long rank 0 waited for its id.
    split["MLflow run open at"] = _reached_or_nan(events, "run_open") - start
    split["rank 0 waited for the run id"] = max(
        (e.get("waited_s", 0.0) for e in events if e["event"] == "run_id_known"), default=0.0
    )
    phases.append(split)
    return min(e["t"] for e in events if e["event"] == "first_step") - start


def _reached_or_nan(events: list[dict], name: str) -> float:
    """When the last ``name`` event came; NaN if none did (only a new tracked run opens one:
    the phases above, which every job passes, raise instead)."""
    return max((e["t"] for e in events if e["event"] == name), default=float("nan"))


def _phase_note(phases: list[dict]) -> str:
    """Median seconds of each phase over the runs, and of what ran beside them."""
    labels = [label for label, _ in PHASES] + [k for k in phases[0] if k not in dict(PHASES)]
    return ", ".join(
        f"{label} {statistics.median(p[label] for p in phases):.1f}" for label in labels
    )


def _horovodrun(uri: str, recipe: str) -> float:
    stdout, start = horovodrun(2, "jobs.benchmarks.hvd_train_worker", uri, recipe, "1", "64")
    return json_line(stdout, "HVDTRAIN ")["first_step_unix"] - start


def startup_figures(uri: str, recipe: str, reps: int, tmp: Path) -> list[Figure]:
    import os

    hvd = lambda: _horovodrun(uri, recipe)  # noqa: E731
    cold_phases: list[dict] = []
    cold = alternate(lambda: _ours(uri, recipe, tmp, dict(os.environ), cold_phases), hvd, reps)
    floor = statistics.median(_ray_floor() for _ in range(reps))
    warm_phases: list[dict] = []
    with start_head(tmp / "ray-head.log", num_cpus=os.cpu_count() or 2) as head:
        warm_env = {**os.environ, **head.client_env()}
        warm = alternate(lambda: _ours(uri, recipe, tmp, warm_env, warm_phases), hvd, reps)
    return [
        paired_figure(
            "startup_warm_vs_horovodrun",
            warm,
            "<= 2.0",
            "s",
            f"{recipe}, 2 workers, launch to first step; ours joins a running Ray head "
            "(RAY_ADDRESS, token auth) vs horovodrun -np 2; ours by phase (median s, "
            f"trace events): {_phase_note(warm_phases)}",
        ),
        paired_figure(
            "startup_cold_vs_horovodrun",
            cold,
            "",
            "s",
            f"{recipe}, 2 workers; ours starts its own local Ray (no RAY_ADDRESS) vs "
            f"horovodrun -np 2; a fresh process's ray.init + one task alone: {floor:.1f} s; "
            f"reported, not judged; ours by phase (median s): {_phase_note(cold_phases)}",
        ),
    ]


def _ray_floor() -> float:
    """Seconds for a fresh process to start a local Ray and run one task: what any job on a
    local Ray pays before its own work."""
    code = (
        "import time, logging; t = time.time(); import ray; "
        "ray.init(num_cpus=2, include_dashboard=True, dashboard_host='127.0.0.1', "
        "logging_level=logging.ERROR); ray.get(ray.remote(lambda: 1).remote()); "
        "print('RAYFLOOR', time.time() - t); ray.shutdown()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    ).stdout
    return float(out.split("RAYFLOOR", 1)[1].split()[0])
