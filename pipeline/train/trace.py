"""Per-rank training trace for debugging data sharding, replica drift and start-up.

Set ``MXTRAIN_TRACE_DIR`` and every rank appends one JSON line per epoch to
``rank-<r>.jsonl`` there: the epoch, its step count, the ids of the real (non-padding) rows it
trained on, and a SHA-256 digest of all its parameters (batch-norm statistics included).
Timestamped events (``events-*.jsonl``) mark the start-up's phases on the driver and on every
rank, up to the first step, and the end's: each epoch trained and reported, the test split
evaluated, and on the driver fit returned, Ray down, the model registered, the run ended.
Off by default; the sharding tests and ``make bench`` use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

ENV = "MXTRAIN_TRACE_DIR"


def params_digest(params) -> str:
    """One hash over every parameter array, in name order."""
    h = hashlib.sha256()
    for name in sorted(params.keys()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(params[name].data().asnumpy()).tobytes())
    return h.hexdigest()


class Tracer:
    def __init__(self, path: Path, rank: int | str):
        self.path = path
        self.rank = rank

    @classmethod
    def from_env(cls, rank: int | str) -> Tracer | None:
        directory = os.environ.get(ENV)
        if not directory:
            return None
        Path(directory).mkdir(parents=True, exist_ok=True)
        return cls(Path(directory) / f"rank-{rank}.jsonl", rank)

    def epoch(self, epoch: int, steps: int, ids: np.ndarray, params, start_step: int = 0) -> None:
        """A finished epoch: ``steps`` steps run from ``start_step`` (> 0 when resumed)."""
        self._write(
            {
                "epoch": epoch,
                "start_step": start_step,
                "steps": steps,
                "ids": [int(i) for i in ids],
                "params_sha256": params_digest(params),
            }
        )

    def checkpoint(self, epoch: int, step: int, ids: np.ndarray) -> None:
        """A mid-epoch checkpoint after ``step`` steps, with the ids trained on so far in this
        epoch by this process."""
        self._write(
            {"checkpoint": True, "epoch": epoch, "step": step, "ids": [int(i) for i in ids]}
        )

    def _write(self, record: dict) -> None:
        record = {"rank": self.rank, "pid": os.getpid(), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def event(self, name: str, **fields) -> None:
        """A timestamped event (e.g. the first training step) in events-rank-<r>.jsonl."""
        import time

        record = {"rank": self.rank, "pid": os.getpid(), "event": name, "t": time.time()}
        with self.path.with_name(f"events-rank-{self.rank}.jsonl").open("a") as f:
            f.write(json.dumps({**record, **fields}) + "\n")

    def topology(self, hvd) -> None:
        """Where this rank sits, as Horovod and Ray see it from inside the worker (an
        ``event``): ranks, the Ray node, the Gloo interface and rendezvous address, and the
        thread settings the process runs with."""
        import ray

        env = os.environ
        self.event(
            "topology",
            size=hvd.size(),
            local_rank=hvd.local_rank(),
            local_size=hvd.local_size(),
            cross_rank=hvd.cross_rank(),
            cross_size=hvd.cross_size(),
            node_id=ray.get_runtime_context().get_node_id(),
            horovod_host=env.get("HOROVOD_HOSTNAME", ""),
            gloo_iface=env.get("HOROVOD_GLOO_IFACE", ""),
            rendezvous=env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR", ""),
            threads={k: env.get(k, "") for k in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS")},
            # pyarrow's allocator's (pipeline/distributed/ray_runtime.py)
            mimalloc_purge_delay=env.get("MIMALLOC_PURGE_DELAY", ""),
            nice=os.nice(0),  # the worker's scheduling niceness (os.nice(0) changes nothing)
        )

    def rendezvous_listeners(self) -> None:
        """Where the Gloo rendezvous server listens while this rank trains (an ``event``):
        the addresses of the listening TCP sockets on its port that belong to the server's
        process, i.e. the process listening there on the rendezvous address or on a
        wildcard. Another process may listen on the same port number on another address
        (Ray's own servers bind the node's address); that is not the server's and is left
        out."""
        import psutil

        port = int(os.environ.get("HOROVOD_GLOO_RENDEZVOUS_PORT", "0"))
        address = os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR", "")
        sockets = [
            (c.laddr.ip, c.pid)
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
        ]
        server = {pid for ip, pid in sockets if ip in (address, "0.0.0.0", "::")}
        listening = {ip for ip, pid in sockets if pid in server} if server else set()
        self.event("rendezvous", port=port, listen=sorted(listening))


def process_start_time() -> float:
    """When this process was born (unix seconds): the start of its imports."""
    import psutil

    return psutil.Process().create_time()


def driver_event(name: str, t: float | None = None) -> None:
    """A timestamped event of the job's driver (rank "driver"), when ``MXTRAIN_TRACE_DIR`` is
    set: the start-up's phases on the driver's side."""
    tracer = Tracer.from_env("driver")
    if tracer:
        tracer.event(name, **({} if t is None else {"t": t}))


def read_events(directory: str | Path) -> list[dict]:
    """All events of the driver and all ranks (``events-rank-*.jsonl``: start-up phases,
    rendezvous, topology, first step)."""
    records = []
    for path in sorted(Path(directory).glob("events-rank-*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line]
    return records


def read_steps(directory: str | Path) -> list[dict]:
    """All step records of all ranks (``rank-*.jsonl``: the ids each step trained on)."""
    records = []
    for path in sorted(Path(directory).glob("rank-*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line]
    return records
