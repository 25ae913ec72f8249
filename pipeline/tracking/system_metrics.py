"""The System metrics tab of a run: MLflow's own sampler (CPU, memory, disk, network, and GPU
through NVIDIA's NVML when the node has one) started by rank 0 for the life of its worker.

It samples rank 0's node, where the training happens; on a cluster the other nodes are not
sampled. Its steps continue across restarts of the worker group (``resume_logging``), so a
restarted job's tab shows one time line. A tracking server that cannot be reached stops the
sampler (MLflow's choice); training goes on.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from pipeline.redact import redact


def start(tracking_uri: str, run_id: str, every_s: float):
    """A running sampler (``finish()`` it), or None when MLflow could not start one."""
    # "Started monitoring system metrics", "Skip logging GPU metrics": MLflow's INFO lines.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=every_s,
            samples_before_logging=1,
            resume_logging=True,
            tracking_uri=tracking_uri,
        )
        monitor.start()
    except Exception as exc:  # no sampler is no reason to stop training
        message = redact(f"warning: no system metrics for this run: {exc}")
        print(message, file=sys.stderr, flush=True)
        return None
    return monitor


def finish(monitor) -> None:
    """Stop the sampler and send what it holds; never raises."""
    if monitor is not None:
        with contextlib.suppress(Exception):
            monitor.finish()
