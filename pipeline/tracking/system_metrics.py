"""The System metrics tab of a run: MLflow's own probes (CPU, memory, disk, network, and GPU
through NVIDIA's NVML when the node has one) sampled on every node of the job, by the first
local rank of each, for the life of its worker.

On a job of several nodes each node's charts carry its name (``system/node0/...``,
``system/node1/...``: Horovod's node index), side by side in the tab; a one-node job keeps
MLflow's plain names (``system/cpu_utilization_percentage``).

The schedule is ours, not MLflow's monitor loop, whose first CPU reading is psutil's
meaningless 0.0 and whose last interval is dropped when the run ends: a sample a second
after the first training step (CPU measured over that second), one every ``every_s``, and
one at the end, so even a run shorter than the interval charts lines with real values.
Steps continue across restarts of the worker group (``resume_logging``), so a restarted
job's tab shows one time line. A tracking server that cannot be reached stops the sampler;
training goes on.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from pipeline.redact import redact

#: Seconds from the start to the first sample (CPU is measured over this interval).
FIRST_SAMPLE_S = 1.0


class Sampler:
    """MLflow's probes sampled by a thread of ours: after :data:`FIRST_SAMPLE_S`, then every
    ``every_s``, and once more at :meth:`finish`.

    The thread also builds MLflow's monitor (its imports, a tracking client, the run's last
    logged step: a second or more), once :meth:`go` was called (the loop calls it after the
    first step; :meth:`finish` too): that Python would otherwise hold the GIL while the
    worker builds its model and opens its readers, on its way to the first step."""

    def __init__(self, make_monitor: Callable[[], Any], every_s: float) -> None:
        self._make_monitor = make_monitor
        self._monitor: Any = None
        self._every_s = every_s
        self._stop = threading.Event()
        self._going = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="system-metrics")
        self._thread.start()

    def go(self) -> None:
        self._going.set()

    def _run(self) -> None:
        self._going.wait()
        import psutil

        try:
            self._monitor = self._make_monitor()
        except Exception as exc:  # no sampler is no reason to stop training
            message = redact(f"warning: no system metrics for this run: {exc}")
            print(message, file=sys.stderr, flush=True)
            return
        # The baseline of the first CPU reading, taken by the thread that reads: psutil 7
        # keeps it per thread (primed by another thread, the first reading was 0.0).
        psutil.cpu_percent()
        wait = min(FIRST_SAMPLE_S, self._every_s)
        while not self._stop.wait(wait):
            if not self._sample():
                return
            wait = self._every_s
        self._sample()  # the end of the run

    def _sample(self) -> bool:
        """One sample logged; False when the tracking store refused it."""
        try:
            self._monitor.collect_metrics()
            self._monitor.publish_metrics(self._monitor.aggregate_metrics())
        except Exception:  # the store went away: no more samples, training goes on
            return False
        return True

    def finish(self) -> None:
        self._stop.set()
        self.go()
        self._thread.join(timeout=30)
        if self._monitor is not None:
            self._monitor.mlflow_logger.flush()


def start(tracking_uri: str, run_id: str, every_s: float, node_id: str | None = None) -> Sampler:
    """A running :class:`Sampler` (``finish()`` it). ``node_id`` names the node in the
    metrics' names (several nodes); None: MLflow's names. A monitor MLflow cannot build is a
    warning on stderr, from the sampler's thread, and no samples."""
    # "Skip logging GPU metrics": MLflow's INFO line.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

    def make_monitor():
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        return SystemMetricsMonitor(
            run_id,
            sampling_interval=every_s,
            samples_before_logging=1,
            resume_logging=True,
            tracking_uri=tracking_uri,
            node_id=node_id,
        )

    return Sampler(make_monitor, every_s)


def finish(sampler: Sampler | None) -> None:
    """Stop the sampler after a last sample and send what it holds; never raises."""
    if sampler is not None:
        with contextlib.suppress(Exception):
            sampler.finish()
