"""two_node_throughput: training samples per second of 2 workers on 2 Ray nodes against 2
workers on 1 node, on one cluster on this machine (infra/local/ray_cluster.py) that the jobs
join through RAY_ADDRESS as a user's job would.

The head has no CPUs (it runs the driver's Train controller only). For "two nodes" it gets
two worker nodes of 1 CPU, one worker lands on each, and Horovod plans them as two hosts
(local size 1, cross size 2); for "one node", one worker node of 2 CPUs holds both. The nodes
are swapped between jobs, and the jobs alternate (the side that goes first alternating too).
In both, the workers are on nodes other than the controller's, so Gloo and the rendezvous use
the nodes' registered address on both sides: what differs is one raylet or two.

(Two clusters side by side do not work: Ray's processes that look for "the" cluster of the
machine find two and fail.)

What this cannot show is a network: both "hosts" are this machine. Between machines, each
step's allreduce of the gradients crosses the network; make bench's allreduce_bus_bw_*
figures give the bytes per second Gloo reaches here per message size, the ceiling a real
network lowers.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from unittest import mock

from jobs.benchmarks.harness import Figure, spread
from jobs.benchmarks.whole_jobs import run_job_for_bench


def two_node_figure(uri: str, recipe: str, epochs: int, reps: int, tmp: Path) -> Figure:
    from infra.local.ray_cluster import start_cluster

    overrides = [
        "scaling.num_workers=2",
        f"optim.epochs={epochs}",
        "optim.warmup_epochs=0",
        "tracking.register=false",
    ]
    layouts = {"two": (1, 1), "one": (2,)}
    with start_cluster(tmp / "cluster", head_cpus=0, node_cpus=(), failure_detection_s=3) as c:

        def throughput(side: str) -> float:
            if tuple(n.num_cpus for n in c.nodes) != layouts[side]:
                for node in list(c.nodes):
                    c.stop_node(node)
                c.wait_for_nodes(1)
                for cpus in layouts[side]:
                    c.add_node(cpus)
            # The driver's environment joins the cluster, for this job only.
            with mock.patch.dict(os.environ, c.head.client_env()):
                return run_job_for_bench(uri, recipe, tmp / side, overrides)[1]["samples_per_sec"]

        throughput("two")  # unmeasured: imports, caches, the first workers
        throughput("one")
        samples: dict[str, list[float]] = {"two": [], "one": []}
        for rep in range(reps):
            for side in ("two", "one") if rep % 2 == 0 else ("one", "two"):
                samples[side].append(throughput(side))
    ratios = [a / b for a, b in zip(samples["two"], samples["one"], strict=True)]
    return Figure(
        "two_node_throughput",
        statistics.median(samples["two"]),
        statistics.median(samples["one"]),
        statistics.median(ratios),
        ">= 0.9",
        "samples/s",
        f"{recipe}, 2 workers, training samples/s: one worker on each of 2 Ray nodes of 1 CPU "
        "vs both on 1 node of 2 CPUs, one cluster on this machine (the head, without CPUs, "
        f"runs the controller), Gloo on the nodes' address; {spread(ratios)}",
    )
