"""The System metrics tab of a run: CPU, memory, disk, network (and GPU through NVIDIA's NVML
when the node has one) sampled on every node of the job, by the first local rank of each,
for the life of its worker, under MLflow's own names (``system/cpu_utilization_percentage``,
...; MLflow's ``SystemMetricsMonitor`` reads the same psutil and NVML values).

The samples travel to the driver, which logs them (pipeline/tracking/relay.py): a worker
does not import MLflow for them. On a job of several nodes each node's charts carry its name
(``system/node0/...``, ``system/node1/...``: Horovod's node index), side by side in the tab.
The driver numbers each node's samples, on from a resumed run's last one, so a restarted
or resumed job's tab shows one time line.

The schedule: a sample a second after the first training step (CPU measured over that
second: psutil's first reading is a meaningless 0.0, primed away), one every ``every_s``,
and one at the end, so even a run shorter than the interval charts lines with real values.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from pipeline.redact import redact

#: Seconds from the start to the first sample (CPU is measured over this interval).
FIRST_SAMPLE_S = 1.0


class Probes:
    """This node's readings, as MLflow names and rounds them."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        net = psutil.net_io_counters()
        self._net_start = (net.bytes_recv / 1e6, net.bytes_sent / 1e6)
        self._gpus = _gpu_handles()

    def prime(self) -> None:
        """psutil measures CPU from its previous call, per thread: call from the reader."""
        self._psutil.cpu_percent()

    def read(self) -> dict[str, float]:
        psutil = self._psutil
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(os.sep)
        net = psutil.net_io_counters()
        out = {
            "cpu_utilization_percentage": round(psutil.cpu_percent(), 1),
            "system_memory_usage_megabytes": round(memory.used / 1e6, 1),
            "system_memory_usage_percentage": round(memory.used / memory.total * 100, 1),
            "disk_usage_percentage": round(disk.percent, 1),
            "disk_usage_megabytes": round(disk.used / 1e6, 1),
            "disk_available_megabytes": round(disk.free / 1e6, 1),
            "network_receive_megabytes": net.bytes_recv / 1e6 - self._net_start[0],
            "network_transmit_megabytes": net.bytes_sent / 1e6 - self._net_start[1],
        }
        if self._gpus:
            out.update(_gpu_readings(*self._gpus))
        return out


def _gpu_handles() -> tuple[Any, list] | None:
    """(pynvml, a handle per GPU), or None on a node without NVIDIA's driver (no GPU path
    runs on the machines this project is tested on: the readings are unit-tested with a
    stand-in for pynvml)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except Exception:  # no pynvml, no driver, no GPU: no GPU charts
        return None


def _gpu_readings(pynvml, handles: list) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, handle in enumerate(handles):
        with contextlib.suppress(Exception):  # a reading NVML refuses is left out
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out[f"gpu_{i}_memory_usage_percentage"] = round(memory.used / memory.total * 100, 1)
            out[f"gpu_{i}_memory_usage_megabytes"] = round(memory.used / 1e6, 1)
        with contextlib.suppress(Exception):
            out[f"gpu_{i}_utilization_percentage"] = float(
                pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            )
        with contextlib.suppress(Exception):
            milliwatts = pynvml.nvmlDeviceGetPowerUsage(handle)
            limit = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle)
            out[f"gpu_{i}_power_usage_watts"] = round(milliwatts / 1000, 1)
            out[f"gpu_{i}_power_usage_percentage"] = round(milliwatts / limit * 100, 1)
    return out


class Sampler:
    """This node's readings sent by a thread of ours: after :data:`FIRST_SAMPLE_S`, then
    every ``every_s``, and once more at :meth:`finish`. The thread starts reading once
    :meth:`go` was called (the loop calls it after the first step; :meth:`finish` too)."""

    def __init__(
        self,
        send: Callable[[dict[str, float]], None],
        every_s: float,
        make_probes: Callable[[], Probes] = Probes,
    ) -> None:
        self._send = send
        self._make_probes = make_probes
        self._every_s = every_s
        self._stop = threading.Event()
        self._going = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="system-metrics")
        self._thread.start()

    def go(self) -> None:
        self._going.set()

    def _run(self) -> None:
        self._going.wait()
        try:
            probes = self._make_probes()
            probes.prime()
        except Exception as exc:  # no sampler is no reason to stop training
            message = redact(f"warning: no system metrics for this run: {exc}")
            print(message, file=sys.stderr, flush=True)
            return
        wait = min(FIRST_SAMPLE_S, self._every_s)
        while not self._stop.wait(wait):
            if not self._sample(probes):
                return
            wait = self._every_s
        self._sample(probes)  # the end of the run

    def _sample(self, probes: Probes) -> bool:
        """One sample sent; False when it could not be (the Ray is going away)."""
        try:
            self._send(probes.read())
        except Exception:
            return False
        return True

    def finish(self) -> None:
        self._stop.set()
        self.go()
        self._thread.join(timeout=30)


def start(relay, every_s: float, node_id: str | None = None) -> Sampler:
    """A running :class:`Sampler` (``finish()`` it) sending through ``relay`` (a
    :class:`~pipeline.tracking.relay.RelayLogger`). ``node_id`` names the node in the
    metrics' names (several nodes); None: MLflow's names."""
    return Sampler(lambda metrics: relay.log_system(metrics, node_id), every_s)


def finish(sampler: Sampler | None) -> None:
    """Stop the sampler after a last sample; never raises."""
    if sampler is not None:
        with contextlib.suppress(Exception):
            sampler.finish()
