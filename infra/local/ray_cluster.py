"""A multi-node Ray cluster on this machine: a head (infra/local/ray_head.py) and worker nodes,
each its own ``ray start`` with its own raylet, object store, agents, resources and temp dir,
joined to the head with its token. What Ray's own tests do with several raylets on one host,
here with real processes: rank planning across nodes, Gloo between "hosts", losing a node and
gaining one can be tried on a laptop.

    with start_cluster(log_dir, head_cpus=1, node_cpus=[1]) as cluster:
        env = {**os.environ, **cluster.head.client_env()}
        cluster.kill_node(cluster.nodes[0])     # the machine is gone: SIGKILL, all at once
        cluster.add_node(num_cpus=1)            # a new machine joins

Every node runs in a process group of its own and is stopped by it (and its descendants:
Ray's workers lead groups of their own); nothing is left running. Each node gets its own
temp dir: nodes sharing one would share a log folder, and every node's log monitor would
send every worker's lines to the driver, so each line would be printed once per node.

``python -m infra.local.ray_cluster --nodes 2`` (``make local-cluster``) starts one in the
foreground for a user, prints how a job joins it, and stops it on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from infra.local.ray_head import RayHead, start_head
from infra.processes import free_port, stop_group
from pipeline.secret_files import write_private


@dataclass
class Node:
    """A worker node: its ``ray start --block`` process (the group leader) and temp dir."""

    proc: subprocess.Popen
    temp_dir: str
    num_cpus: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class LocalCluster:
    head: RayHead
    log_dir: Path
    nodes: list[Node] = field(default_factory=list)

    def alive_nodes(self) -> list[dict]:
        """The cluster's alive nodes as the dashboard reports them (node_id, is_head_node,
        resources_total)."""
        nodes = self._state("nodes?limit=100&detail=true")
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def actor_classes(self) -> list[str]:
        """The class of every actor the cluster has run, alive or ended."""
        return [a["class_name"] for a in self._state("actors?limit=10000")]

    def placement_groups(self) -> list[dict]:
        """Every placement group the cluster has had (placement_group_id, state: CREATED,
        REMOVED...)."""
        return self._state("placement_groups?limit=10000")

    def _state(self, query: str) -> list[dict]:
        """Rows of Ray's State API on the head's dashboard (``/api/v0/<query>``)."""
        request = urllib.request.Request(
            f"{self.head.dashboard}/api/v0/{query}",
            headers={"Authorization": f"Bearer {self.head.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["data"]["result"]["result"]

    def wait_for_nodes(self, count: int, timeout_s: float = 60) -> None:
        """Until the head counts ``count`` alive nodes (itself included)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError, KeyError, ValueError):
                if len(self.alive_nodes()) == count:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster has not {count} alive nodes after {timeout_s} s")
            time.sleep(0.5)

    def add_node(self, num_cpus: int = 1, timeout_s: float = 60) -> Node:
        """Start a worker node, joined to the head; return once the head counts it."""
        ray_bin = str(Path(sys.executable).with_name("ray"))
        temp_dir = tempfile.mkdtemp(prefix="raynode-", dir="/tmp")  # short: socket paths
        log = self.log_dir / f"node-{len(self.nodes) + 1}.log"
        expected = len(self.alive_nodes()) + 1  # counted before the node can register
        with log.open("w") as out:
            proc = subprocess.Popen(
                # As the head's: Ray registers the machine's address anyway (ray_head.py).
                [ray_bin, "start", f"--address={self.head.gcs_address}",
                 "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--block",
                 "--disable-usage-stats", f"--temp-dir={temp_dir}",
                 f"--dashboard-agent-listen-port={free_port()}"],  # as the head's
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **_node_env(self.head.token)},
            )  # fmt: skip
        node = Node(proc, temp_dir, num_cpus, log)
        self.nodes.append(node)
        try:
            self.wait_for_nodes(expected, timeout_s)
        except RuntimeError:
            raise RuntimeError(f"node {log.stem} did not join; its log: {log}") from None
        return node

    def kill_node(self, node: Node) -> None:
        """The node's machine is gone: SIGKILL its raylet, its workers and everything else it
        started, at once."""
        family = _descendants(node.pid)
        _kill(family)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.proc.wait()
        self._forget(node, family)

    def stop_node(self, node: Node) -> None:
        """Stop a node as its own group and descendants (an orderly end, not a failure)."""
        family = _descendants(node.pid)
        stop_group(node.pid, grace_s=5, proc=node.proc)
        _kill(family)  # Ray's workers lead groups of their own
        self._forget(node, family)

    def _forget(self, node: Node, family: list) -> None:
        """Wait for the node's processes to be gone; drop it and its temp dir."""
        import psutil

        psutil.wait_procs(family, timeout=30)
        self.nodes.remove(node)
        shutil.rmtree(node.temp_dir, ignore_errors=True)


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill(processes: list) -> None:
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _node_env(token: str) -> dict[str, str]:
    return {
        # A node runs the job's Python: this venv's, one thread per worker process.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "MXNET_CPU_WORKER_NTHREADS": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }


def failure_detection_env(seconds: float) -> dict[str, str]:
    """Ray settings for the head under which a node that stops answering is declared dead
    after about ``seconds`` (Ray's default: 5 missed health checks 3 s apart, each with a
    10 s timeout, so 15-60 s). A job on the survivors restarts only once the node is dead:
    until then Ray Train still counts its CPUs and waits for workers that cannot start."""
    checks = max(1, round(seconds))
    return {
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": str(checks),
    }


@contextlib.contextmanager
def start_cluster(
    log_dir: Path,
    head_cpus: int = 1,
    node_cpus: tuple[int, ...] = (1,),
    failure_detection_s: float | None = None,
) -> Iterator[LocalCluster]:
    """A head with ``head_cpus`` and one worker node per entry of ``node_cpus``; stopped,
    every node and the head, when the block ends. ``failure_detection_s``: declare a silent
    node dead after about that long (:func:`failure_detection_env`); None: Ray's default."""
    log_dir.mkdir(parents=True, exist_ok=True)
    extra = failure_detection_env(failure_detection_s) if failure_detection_s else None
    with start_head(log_dir / "head.log", num_cpus=head_cpus, extra_env=extra) as head:
        cluster = LocalCluster(head, log_dir)
        try:
            cluster.wait_for_nodes(1)
            for cpus in node_cpus:
                cluster.add_node(cpus)
            yield cluster
        finally:
            for node in list(cluster.nodes):
                cluster.stop_node(node)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m infra.local.ray_cluster",
        description="Start a Ray cluster of several nodes on this machine (a head and worker "
        "nodes, each its own raylet, token authentication, the dashboard on 127.0.0.1), print "
        "how a job joins it, and stop it on Ctrl-C or SIGTERM.",
    )
    p.add_argument("--nodes", type=int, default=2, help="nodes, the head included (default 2)")
    p.add_argument("--cpus-per-node", type=int, default=1, help="logical CPUs of each node")
    p.add_argument(
        "--dir", default="runs/local-cluster", help="logs and the token file (mode 0600)"
    )
    args = p.parse_args(argv)
    if args.nodes < 1 or args.cpus_per_node < 1:
        p.error("--nodes and --cpus-per-node must be at least 1")
    directory = Path(args.dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C, even when started from a shell that runs it in the background (which ignores it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    nodes = (args.cpus_per_node,) * (args.nodes - 1)
    with start_cluster(directory, args.cpus_per_node, nodes) as cluster:
        token_file = directory / "auth_token"
        write_private(token_file, cluster.head.token)
        print(
            f"Ray cluster of {args.nodes} nodes x {args.cpus_per_node} CPUs on this machine; "
            f"logs in {directory}\n"
            "submit a job to it from another shell (the Jobs API, as on a real cluster):\n"
            f"  export RAY_ADDRESS={cluster.head.dashboard} RAY_AUTH_TOKEN_PATH={token_file}\n"
            f"  make train-distributed WORKERS={args.nodes * args.cpus_per_node}\n"
            "or drive it from that shell:\n"
            f"  RAY_ADDRESS={cluster.head.gcs_address} RAY_AUTH_MODE=token "
            f"RAY_AUTH_TOKEN_PATH={token_file} python -m jobs.train --workers "
            f"{args.nodes * args.cpus_per_node}\nCtrl-C stops it",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping the cluster", flush=True)
        finally:
            token_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
