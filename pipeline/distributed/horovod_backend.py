"""A Horovod backend for Ray Train v2: ties a Ray Train worker group into one Horovod job.

Ray 2.60's Train v2 has no Horovod backend (the v1 one reads ``worker_group.workers``, which the
v2 group does not have). What Horovod over Gloo needs from us, per worker:

* ``HOROVOD_RANK/SIZE`` - the Ray Train world rank and size;
* ``HOROVOD_LOCAL_RANK/LOCAL_SIZE`` and ``HOROVOD_CROSS_RANK/CROSS_SIZE`` - the position among
  the workers of the same node and among the workers with the same local rank;
* ``HOROVOD_HOSTNAME`` - the node's identity (we use the Ray node id: hostnames may repeat);
* ``HOROVOD_GLOO_RENDEZVOUS_ADDR/PORT`` - an HTTP key-value server (Horovod's own
  ``RendezvousServer``) through which the Gloo contexts find each other;
* ``HOROVOD_GLOO_IFACE`` - the network interface Gloo binds on that worker's node;
* ``HOROVOD_CYCLE_TIME`` - the milliseconds between Horovod's negotiation cycles
  (``scaling.horovod_cycle_ms``).

``on_start`` runs in the Train controller each time a worker group starts (also after a
restart), so every group gets a fresh rendezvous server; ``on_shutdown`` stops it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ray.train.backend import Backend, BackendConfig

from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


@dataclass
class HorovodConfig(BackendConfig):
    """Settings of the Horovod backend (from ``scaling.gloo_timeout_s``,
    ``scaling.network_interface`` and ``scaling.horovod_cycle_ms``).

    Attributes:
        timeout_s: how long Gloo waits for all ranks at rendezvous and in collectives.
        nic: network interface for Gloo; empty = the interface holding the node's Ray IP
            (or loopback when every worker runs on the driver's node).
        cycle_ms: milliseconds between Horovod's cycles.
    """

    timeout_s: int = 300
    nic: str = ""
    cycle_ms: float = 5.0

    @classmethod
    def from_scaling(cls, scaling) -> HorovodConfig:
        """From the job's ``scaling`` section (:class:`pipeline.config.ScalingConfig`)."""
        return cls(
            timeout_s=scaling.gloo_timeout_s,
            nic=scaling.network_interface,
            cycle_ms=scaling.horovod_cycle_ms,
        )

    @property
    def backend_cls(self):
        return HorovodBackend

    def to_dict(self) -> dict:
        return {"timeout_s": self.timeout_s, "nic": self.nic, "cycle_ms": self.cycle_ms}


@dataclass(frozen=True)
class Slot:
    """Where one rank sits in the Horovod topology."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int
    host: str


def plan_slots(node_ids: list[str]) -> list[Slot]:
    """Ranks (list index = world rank) on nodes -> local and cross ranks for each rank.

    Ranks of one node need not be contiguous: local ranks follow world-rank order per node, and
    the cross communicator of local rank ``k`` holds the k-th rank of every node that has one.
    """
    local_rank: list[int] = []
    per_node: dict[str, int] = {}
    for node in node_ids:
        local_rank.append(per_node.get(node, 0))
        per_node[node] = per_node.get(node, 0) + 1
    cross_members: dict[int, list[int]] = {}
    for rank, lr in enumerate(local_rank):
        cross_members.setdefault(lr, []).append(rank)
    slots = []
    for rank, node in enumerate(node_ids):
        members = cross_members[local_rank[rank]]
        slots.append(
            Slot(
                rank=rank,
                size=len(node_ids),
                local_rank=local_rank[rank],
                local_size=per_node[node],
                cross_rank=members.index(rank),
                cross_size=len(members),
                host=node,
            )
        )
    return slots


def slot_env(
    slot: Slot, rendezvous_addr: str, rendezvous_port: int, settings: HorovodConfig
) -> dict:
    """One worker's ``HOROVOD_*`` environment (all but the interface, found per node)."""
    return {
        "HOROVOD_RANK": str(slot.rank),
        "HOROVOD_SIZE": str(slot.size),
        "HOROVOD_LOCAL_RANK": str(slot.local_rank),
        "HOROVOD_LOCAL_SIZE": str(slot.local_size),
        "HOROVOD_CROSS_RANK": str(slot.cross_rank),
        "HOROVOD_CROSS_SIZE": str(slot.cross_size),
        "HOROVOD_HOSTNAME": slot.host,
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": rendezvous_addr,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(rendezvous_port),
        "HOROVOD_GLOO_TIMEOUT_SECONDS": str(settings.timeout_s),
        # Horovod reads it as a float number of milliseconds.
        "HOROVOD_CYCLE_TIME": f"{settings.cycle_ms:g}",
    }


def _interface_for(ip: str) -> str:
    """Runs on a worker: the name of the local interface that holds ``ip``."""
    import socket

    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
            return name
    names = ", ".join(sorted(psutil.net_if_addrs()))
    raise ConfigError(
        f"no network interface on {socket.gethostname()} holds its Ray IP {ip}; set"
        f" scaling.network_interface to the one Gloo should use (this node has: {names})"
    )


def ray_node_ips() -> dict[str, str]:
    """Node id -> the IP the node registered with the cluster, for every alive node."""
    import ray

    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}


def start_rendezvous(host: str):
    """Horovod's Gloo rendezvous server, listening on ``host`` only; returns (server, port).

    Horovod's own ``RendezvousServer.start`` binds ``('', port)``: every interface of the
    machine, on a laptop too. What it serves is an unauthenticated HTTP key-value store that
    every rank trusts, so it listens only on the address the workers are given (loopback when
    they all run on this node)."""
    from horovod.runner.http.http_server import (
        RendezvousHandler,
        RendezvousHTTPServer,
        RendezvousServer,
    )
    from horovod.runner.util.threads import in_thread

    class BoundRendezvousServer(RendezvousServer):
        def start(self, handler_cls=RendezvousHandler) -> int:
            self._httpd = RendezvousHTTPServer((host, 0), handler_cls, self._verbose)
            # How often the serving loop looks for a stop: stop() waits for it, at the end
            # of every worker group (Ray Train's teardown, on the way to the job's end). At
            # socketserver's default of 0.5 s a stop took 0.07-0.44 s, at 0.05 s at most that.
            self._listen_thread = in_thread(target=self._httpd.serve_forever, args=(0.05,))
            return self._httpd.server_address[1]

        def stop(self) -> None:
            super().stop()
            self._httpd.server_close()

    server = BoundRendezvousServer(verbose=0)
    return server, server.start()


def _set_env(env: dict) -> None:
    """Runs on a worker, before the training function (and before hvd.init)."""
    os.environ.update(env)


class HorovodBackend(Backend):
    """Starts a Gloo rendezvous server per worker group and sets each worker's HOROVOD_* env."""

    def on_start(self, worker_group, backend_config: BackendConfig) -> None:
        assert isinstance(backend_config, HorovodConfig)
        import ray
        from horovod.runner.common.util.hosts import SlotInfo

        self._stop_server()
        workers = worker_group.get_workers()
        node_ids = [w.metadata.node_id for w in workers]
        slots = plan_slots(node_ids)

        controller_node = ray.get_runtime_context().get_node_id()
        single_node = set(node_ids) == {controller_node}
        # Each node's IP as the cluster registered it (`ray start --node-ip-address`), not
        # the address a process guesses from its default route: on a machine with several
        # interfaces they differ, and the cluster's is the one its nodes reach each other on.
        node_ips = ray_node_ips()
        addr = LOOPBACK if single_node else node_ips[controller_node]

        server, port = start_rendezvous(addr)
        server.init(
            [
                SlotInfo(
                    hostname=s.host,
                    rank=s.rank,
                    local_rank=s.local_rank,
                    cross_rank=s.cross_rank,
                    size=s.size,
                    local_size=s.local_size,
                    cross_size=s.cross_size,
                )
                for s in slots
            ]
        )
        self._server = server

        if backend_config.nic:
            nics = [backend_config.nic] * len(workers)
        elif single_node:
            nics = ["lo"] * len(workers)
        else:
            nics = ray.get(
                [
                    worker_group.execute_single_async(
                        rank, _interface_for, node_ips[w.metadata.node_id]
                    )
                    for rank, w in enumerate(workers)
                ]
            )
        ray.get(
            [
                worker_group.execute_single_async(
                    s.rank,
                    _set_env,
                    {
                        **slot_env(s, addr, port, backend_config),
                        "HOROVOD_GLOO_IFACE": nic,
                    },
                )
                for s, nic in zip(slots, nics, strict=True)
            ]
        )
        logger.info(
            "Horovod rendezvous at %s:%d for %d workers on %d node(s)",
            addr,
            port,
            len(slots),
            len(set(node_ids)),
        )

    def on_shutdown(self, worker_group, backend_config: BackendConfig) -> None:
        self._stop_server()

    def _stop_server(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            self._server = None
            server.stop()
