"""A process's peak resident memory, as the figures and the ``peak_rss_mb`` metric report it."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB: ``VmHWM`` of ``/proc/self/status``.

    Not ``getrusage().ru_maxrss``: Linux keeps it across fork and exec, so a process started
    by a larger one (a bench driver's reader, a worker spawned by a big parent) reported its
    parent's peak instead of its own."""
    if sys.platform.startswith("linux"):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS
