"""Elastic workers: WORKERS=MIN-MAX on a Ray cluster that gains a node while the job runs."""

from __future__ import annotations

import math
import threading
import time

import pytest
from mlflow import MlflowClient

from pipeline.config import load_job_config
from pipeline.distributed.threads import thread_env
from pipeline.train.schedule import lr_at

pytestmark = pytest.mark.integration


@pytest.fixture
def growing_cluster():
    """A real Ray cluster on this machine: a head with 2 CPUs now, and a way to add a second
    node (its own raylet, object store and resources) while a job runs. Ray Train's elastic
    policy sizes the group from the cluster's total resources, so a new node is what makes a
    slot appear (freeing a slot another tenant held does not)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    ray.init(address=cluster.address, runtime_env={"env_vars": thread_env(1)})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_elastic_group_grows_when_a_node_joins_and_the_lr_follows(
    growing_cluster, digits_uri, tmp_path
):
    from jobs.train import parse_workers
    from pipeline.launch import run_job

    # Small batches make epochs long enough (about 7 s here) that the resize, a node's start
    # plus a resize check, lands well before the job ends.
    epochs = 5
    cfg = load_job_config(
        "digits-cnn",
        [
            f"optim.epochs={epochs}",
            "optim.warmup_epochs=0",
            "data.batch_size=8",
            "checkpoint.every_steps=20",
            "scaling.elastic_resize_interval_s=2",
        ],
        {"data.uri": digits_uri, "storage.path": str(tmp_path / "runs"), **parse_workers("2-3")},
    )
    # The job runs in a thread; the node is added from this one (Ray starts a node's
    # processes with signal handlers, which only the main thread may install).
    outcome: dict = {}

    def job() -> None:
        try:
            outcome["result"] = run_job(cfg, progress=lambda _: None)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    while thread.is_alive() and not any((tmp_path / "runs").glob("*/checkpoint_*")):
        time.sleep(0.2)
    growing_cluster.add_node(num_cpus=1)
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]

    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(result.run_id, "world_size"), key=lambda m: m.step)
    sizes = [m.value for m in history]
    assert sizes[0] == 2.0, "2 slots at the start"
    assert sizes[-1] == 3.0, f"the group grew to 3 when the node joined: {sizes}"
    assert sizes == sorted(sizes)
    assert int(run.data.tags["pipeline.attempts"]) >= 2  # the resize started a new group

    # Each epoch's learning rate is the one for the world size that trained it.
    lrs = {m.step: m.value for m in client.get_metric_history(result.run_id, "learning_rate")}
    for m in history:
        world, epoch = int(m.value), m.step
        steps = math.ceil(math.ceil(1439 / world) / cfg.data.batch_size)
        assert lrs[epoch] == pytest.approx(lr_at(cfg.optim, world, (epoch + 1) * steps - 1, steps))
