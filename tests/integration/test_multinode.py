"""Across nodes: a Ray cluster of real raylets on this machine (infra/local/ray_cluster.py:
a head and worker nodes, each its own `ray start` with token auth), a job joining it through
RAY_ADDRESS as a user's would, and nodes lost and gained while it trains."""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from pathlib import Path

import pytest

from infra.local.ray_cluster import start_cluster
from pipeline.config import load_job_config
from pipeline.train import trace
from pipeline.train.schedule import lr_at
from tests.jobs import BackgroundJob, wait_for

pytestmark = pytest.mark.integration

EPOCHS = 4
#: Small batches: epochs of a few seconds, so a node can be lost or gained mid-run.
SETTINGS = [f"optim.epochs={EPOCHS}", "optim.warmup_epochs=0", "data.batch_size=16"]
TRAIN_ROWS = 1439


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and one worker node, 1 CPU each: two workers of 1 CPU land on two nodes."""
    # A lost node is declared dead after ~3 s instead of Ray's 15-60 s: the test's time.
    folder = tmp_path_factory.mktemp("cluster")
    with start_cluster(folder, head_cpus=1, node_cpus=(1,), failure_detection_s=3) as c:
        yield c


def _resize(cluster, nodes: int) -> None:
    """Back to ``nodes`` nodes (the head included) after a test that lost or gained one."""
    while len(cluster.nodes) + 1 > nodes:
        cluster.stop_node(cluster.nodes[-1])
    while len(cluster.nodes) + 1 < nodes:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(nodes)


class Job(BackgroundJob):
    """``python -m jobs.train`` joining the cluster through RAY_ADDRESS, in the background."""

    def __init__(
        self,
        cluster,
        tmp: Path,
        digits_uri: str,
        workers: str,
        *sets: str,
        env: dict[str, str] | None = None,
    ):
        args = ["--workers", workers, "--data", digits_uri, "--storage", str(tmp / "runs")]
        for item in [*SETTINGS, *sets]:
            args += ["--set", item]
        super().__init__(tmp, args, env={**cluster.head.client_env(), **(env or {})})

    def finish(self):
        done = self.wait(timeout_s=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return self.the_run()


def _history(client, run, key: str) -> list[float]:
    found = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    return [m.value for m in found]


def _assert_lr_follows_the_world_size(client, run, settings: list[str]) -> None:
    """Every epoch ran once, each with the learning rate for the world size that trained it."""
    cfg = load_job_config("digits-cnn", settings)
    sizes = _history(client, run, "world_size")
    lrs = _history(client, run, "learning_rate")
    assert len(lrs) == len(sizes) == cfg.optim.epochs
    for epoch, (world, lr) in enumerate(zip(sizes, lrs, strict=True)):
        steps = math.ceil(math.ceil(TRAIN_ROWS / world) / cfg.data.batch_size)
        assert lr == pytest.approx(lr_at(cfg.optim, int(world), (epoch + 1) * steps - 1, steps))


@pytest.fixture(scope="module")
def uninterrupted(cluster, digits_uri, tmp_path_factory):
    """Two workers on two nodes from start to end: the run the others are compared with."""
    _resize(cluster, 2)
    job = Job(cluster, tmp_path_factory.mktemp("two-nodes"), digits_uri, "2")
    client, run = job.finish()
    return job, client, run


def _interface_holding(ip: str) -> str:
    import socket

    import psutil

    return next(
        name
        for name, addresses in psutil.net_if_addrs().items()
        if any(a.family == socket.AF_INET and a.address == ip for a in addresses)
    )


def test_two_nodes_plan_ranks_as_two_hosts_and_print_each_line_once(cluster, uninterrupted):
    job, client, run = uninterrupted
    node_ip = {n["node_id"]: n["node_ip"] for n in cluster.alive_nodes()}
    assert run.info.status == "FINISHED"
    assert _history(client, run, "world_size") == [2.0] * EPOCHS

    # From inside the workers: one rank per node, each its node's local rank 0, the cross
    # communicator over both; Gloo on the interface that holds the IP each node registered
    # with the cluster (`ray start` registers this machine's address, not loopback), the
    # rendezvous on the controller's node IP and nowhere else; one compute thread each.
    topology = {e["rank"]: e for e in trace.read_events(job.trace) if e["event"] == "topology"}
    assert set(topology) == {0, 1}
    assert topology[0]["node_id"] != topology[1]["node_id"]
    for rank, event in topology.items():
        assert event["size"] == 2
        assert (event["local_rank"], event["local_size"]) == (0, 1)
        assert (event["cross_rank"], event["cross_size"]) == (rank, 2)
        assert event["horovod_host"] == event["node_id"]
        assert event["rendezvous"] == node_ip[event["node_id"]] != "127.0.0.1"
        assert event["gloo_iface"] == _interface_holding(node_ip[event["node_id"]])
        assert event["threads"] == {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
        assert event["mimalloc_purge_delay"] == "0"  # the job's env reaches a cluster's workers
    listeners = [e for e in trace.read_events(job.trace) if e["event"] == "rendezvous"]
    rendezvous = {topology[0]["rendezvous"]}
    assert listeners and all(set(e["listen"]) == rendezvous for e in listeners), listeners

    # Every node sampled its own system metrics (the first local rank of each), by name.
    for node in ("node0", "node1"):
        key = f"system/{node}/cpu_utilization_percentage"
        assert len(client.get_metric_history(run.info.run_id, key)) >= 2, key

    # Ray Train's actors for the job, without the preemption watcher (its only use,
    # ray.train.get_preemption_info, is not ours: pipeline/distributed/ray_runtime.py).
    classes = set(cluster.actor_classes())
    assert {"TrainController", "RayTrainWorker"} <= classes, classes
    assert "PreemptionWatcher" not in classes

    # Every worker line reaches the driver once, not once per node's log monitor.
    lines = Counter(line for line in job.stdout().splitlines() if "epoch " in line)
    epoch_lines = {line: n for line, n in lines.items() if "train_loss" in line}
    assert len(epoch_lines) == EPOCHS, job.stdout()[-3000:]
    assert set(epoch_lines.values()) == {1}, epoch_lines


def test_a_killed_driver_leaves_no_placement_group_behind(
    cluster, uninterrupted, digits_uri, tmp_path
):
    # python -m jobs.train runs without Ray Train's placement-group cleaner (its driver ends
    # with the job: pipeline/distributed/trainer.py). Killed mid-training, its workers' CPUs
    # come back all the same: Ray frees a job's placement groups when its driver dies.
    _resize(cluster, 2)
    before = {p["placement_group_id"] for p in cluster.placement_groups()}
    job = Job(cluster, tmp_path, digits_uri, "2")
    job.wait_for_checkpoint()

    def the_jobs() -> list[dict]:
        return [p for p in cluster.placement_groups() if p["placement_group_id"] not in before]

    assert [p["state"] for p in the_jobs()] == ["CREATED"]
    job.proc.kill()
    job.proc.wait(timeout=30)
    wait_for(lambda: all(p["state"] == "REMOVED" for p in the_jobs()), "the PG freed", 60, 0.5)
    assert "PlacementGroupCleaner" not in cluster.actor_classes()


def test_losing_a_node_goes_on_with_the_survivor_from_the_newest_checkpoint(
    cluster, uninterrupted, digits_uri, tmp_path
):
    _resize(cluster, 2)
    _, _, reference = uninterrupted
    # Checkpoints at epoch ends only: the survivor resumes at the next epoch (mid-epoch
    # resizes are tested in test_fault_tolerance and tests/unit/test_epoch_plan.py).
    # The restarted group first asks for 2 workers again (the lost node's CPUs count until
    # Ray declares it dead) and waits Ray Train's worker start timeout (60 s by default)
    # before it starts with 1: 10 s here.
    job = Job(
        cluster,
        tmp_path,
        digits_uri,
        "1-2",
        "checkpoint.every_steps=0",
        env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10"},
    )
    job.wait_for_checkpoint()
    lost_at = time.monotonic()
    cluster.kill_node(cluster.nodes[0])
    wait_for(lambda: "resuming from checkpoint" in job.stdout(), "resume", 600, 0.2, job.ended)
    print(f"node lost: training resumed {time.monotonic() - lost_at:.1f} s later")
    client, run = job.finish()

    assert run.info.status == "FINISHED"
    assert int(run.data.tags["mxtrain.restarts"]) >= 1
    sizes = _history(client, run, "world_size")
    assert sizes[0] == 2.0 and sizes[-1] == 1.0 and sizes == sorted(sizes, reverse=True), sizes
    assert "worker group restarted after a failure" in job.stdout()
    assert "resuming from checkpoint" in job.stdout()
    _assert_lr_follows_the_world_size(client, run, SETTINGS)
    # Each epoch, whichever group ran it, trained every row once: its ranks' shards are
    # disjoint and cover the split (one rank's after the loss).
    records = [r for r in trace.read_steps(job.trace) if "checkpoint" not in r]
    for epoch, world in enumerate(sizes):
        shards = [set(r["ids"]) for r in records if r["epoch"] == epoch]
        covered = [
            group
            for group in itertools.combinations(shards, int(world))
            if sum(map(len, group)) == TRAIN_ROWS and len(set().union(*group)) == TRAIN_ROWS
        ]
        assert covered, (epoch, world, [len(s) for s in shards])
    accuracy, expected = run.data.metrics["test_accuracy"], reference.data.metrics["test_accuracy"]
    print(f"test accuracy after the loss {accuracy:.4f}, uninterrupted {expected:.4f}")
    assert abs(accuracy - expected) <= 0.01


def test_gaining_a_node_grows_the_group_from_a_checkpoint(cluster, digits_uri, tmp_path):
    _resize(cluster, 1)
    # Longer (batches of 8, 20 epochs: about 46 s on one worker). A node's start takes about
    # 8 s here, and Ray Train sees it only at a tick of Ray's autoscaling coordinator (every
    # 20 s, not configurable), whatever elastic_resize_interval_s says: the group regrew
    # 21-36 s after the node started.
    longer = ["data.batch_size=8", "optim.epochs=20"]
    job = Job(
        cluster,
        tmp_path,
        digits_uri,
        "1-2",
        "scaling.elastic_resize_interval_s=2",
        "checkpoint.every_steps=20",
        *longer,
    )
    job.wait_for_checkpoint()
    t0 = time.monotonic()
    cluster.add_node(num_cpus=1)
    print(f"node joined in {time.monotonic() - t0:.1f} s")
    wait_for(lambda: "resuming from checkpoint" in job.stdout(), "resume", 600, 0.2, job.ended)
    print(f"group regrown {time.monotonic() - t0:.1f} s after the node started")
    client, run = job.finish()

    assert run.info.status == "FINISHED"
    sizes = _history(client, run, "world_size")
    assert sizes[0] == 1.0 and sizes[-1] == 2.0 and sizes == sorted(sizes), sizes
    assert int(run.data.tags["mxtrain.attempts"]) >= 2  # the resize started a new group
    assert "worker group grew from 1 to 2 workers (elastic)" in job.stdout()
    assert "resuming from checkpoint" in job.stdout()
    _assert_lr_follows_the_world_size(client, run, [*SETTINGS, *longer])
    topology = [e for e in trace.read_events(job.trace) if e["event"] == "topology"]
    grown = [e for e in topology if e["size"] == 2]
    assert len({e["node_id"] for e in grown}) == 2  # the new group spans both nodes
