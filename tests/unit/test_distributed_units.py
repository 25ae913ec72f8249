"""The pieces of the distributed layer that need no cluster: rank planning, device choice,
learning-rate schedule."""

from __future__ import annotations

import pytest

from pipeline.config import OptimConfig, load_job_config
from pipeline.distributed.device import worker_device
from pipeline.distributed.horovod_backend import (
    HorovodConfig,
    _interface_for,
    plan_slots,
    slot_env,
)
from pipeline.errors import ConfigError, DataError, DivergedError, StorageUnavailableError
from pipeline.train.schedule import lr_at, scaled_lr


def test_single_node_slots():
    slots = plan_slots(["a", "a"])
    assert [(s.rank, s.local_rank, s.local_size, s.cross_rank, s.cross_size) for s in slots] == [
        (0, 0, 2, 0, 1),
        (1, 1, 2, 0, 1),
    ]


def test_interleaved_multi_node_slots():
    # Ray may give ranks to nodes in any order: local and cross ranks must still be consistent.
    slots = plan_slots(["a", "b", "a", "b", "c"])
    by_rank = {s.rank: s for s in slots}
    assert [by_rank[r].local_rank for r in range(5)] == [0, 0, 1, 1, 0]
    assert [by_rank[r].local_size for r in range(5)] == [2, 2, 2, 2, 1]
    # cross communicator of local rank 0 = ranks 0, 1, 4; of local rank 1 = ranks 2, 3
    assert [by_rank[r].cross_rank for r in range(5)] == [0, 1, 0, 1, 2]
    assert [by_rank[r].cross_size for r in range(5)] == [3, 3, 2, 2, 3]
    assert all(s.size == 5 for s in slots)


def test_slot_env_is_what_horovod_reads():
    settings = HorovodConfig(timeout_s=60, cycle_ms=5.0)
    env = slot_env(plan_slots(["n1", "n2"])[1], "10.0.0.1", 1234, settings)
    assert env["HOROVOD_RANK"] == "1" and env["HOROVOD_SIZE"] == "2"
    assert env["HOROVOD_CROSS_RANK"] == "1" and env["HOROVOD_HOSTNAME"] == "n2"
    assert env["HOROVOD_GLOO_RENDEZVOUS_ADDR"] == "10.0.0.1"
    assert env["HOROVOD_GLOO_RENDEZVOUS_PORT"] == "1234"
    assert env["HOROVOD_CONTROLLER"] == "gloo"
    assert env["HOROVOD_CYCLE_TIME"] == "5"  # milliseconds, read by Horovod as a float


class _FakeMX:
    """Stands in for mxnet: records which device was asked for."""

    def __init__(self, gpus: int):
        self.context = type("ctx", (), {"num_gpus": staticmethod(lambda: gpus)})

    def cpu(self):
        return "cpu(0)"

    def gpu(self, i):
        return f"gpu({i})"


def test_device_follows_local_rank():
    assert worker_device(_FakeMX(gpus=0), use_gpu=False, local_rank=3) == "cpu(0)"
    assert worker_device(_FakeMX(gpus=4), use_gpu=True, local_rank=3) == "gpu(3)"


def test_device_without_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"scaling\.use_gpu=true but MXNet sees 1 GPU"):
        worker_device(_FakeMX(gpus=1), use_gpu=True, local_rank=1)


def test_device_with_real_mxnet_on_cpu():
    import mxnet as mx

    assert worker_device(mx, use_gpu=False, local_rank=0) == mx.cpu()


def test_learning_rate_scales_with_workers_and_warms_up():
    optim = OptimConfig(learning_rate=0.1, epochs=10, warmup_epochs=2, lr_schedule="cosine")
    assert scaled_lr(optim, 4) == pytest.approx(0.4)
    assert scaled_lr(OptimConfig(lr_scaling="none"), 4) == OptimConfig().learning_rate
    steps = 10
    assert lr_at(optim, 2, 0, steps) == pytest.approx(0.2 / 20)
    assert lr_at(optim, 2, 19, steps) == pytest.approx(0.2)  # end of warm-up: the peak
    assert lr_at(optim, 2, 20, steps) == pytest.approx(0.2)
    assert lr_at(optim, 2, 99, steps) < 0.01  # cosine decays to ~0
    rates = [lr_at(optim, 2, s, steps) for s in range(20, 100)]
    assert rates == sorted(rates, reverse=True)


def test_gloo_settings_come_from_the_scaling_section():
    scaling = load_job_config(
        None,
        [
            "scaling.gloo_timeout_s=77",
            "scaling.network_interface=eth9",
            "scaling.horovod_cycle_ms=2.5",
        ],
    ).scaling
    backend = HorovodConfig.from_scaling(scaling)
    assert (backend.timeout_s, backend.nic, backend.cycle_ms) == (77, "eth9", 2.5)
    slot = plan_slots(["a"])[0]
    env = slot_env(slot, "127.0.0.1", 1, backend)
    assert env["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "77"
    assert env["HOROVOD_CYCLE_TIME"] == "2.5"
    # Not Horovod's 1 ms: its cycles' messages took CPU from training on shared cores.
    assert load_job_config(None, []).scaling.horovod_cycle_ms == 5.0


def test_interface_lookup_names_the_key_and_the_interfaces():
    assert _interface_for("127.0.0.1") == "lo"
    with pytest.raises(ConfigError, match=r"set scaling\.network_interface .*\blo\b"):
        _interface_for("203.0.113.7")  # TEST-NET-3: on no interface of this machine


def test_rendezvous_server_listens_only_where_it_is_told():
    import socket

    from infra.processes import listening_addresses
    from pipeline.distributed.horovod_backend import start_rendezvous

    server, port = start_rendezvous("127.0.0.1")
    try:
        listening = listening_addresses(port)
        assert listening == {"127.0.0.1"}
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # and it serves there
    finally:
        server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # stopped means closed


def test_rendezvous_server_looks_for_a_stop_often(monkeypatch):
    # stop() waits for the serving loop to look (Ray Train's teardown of every worker group,
    # on the way to a job's end); socketserver's default looks every 0.5 s.
    from horovod.runner.http.http_server import RendezvousHTTPServer

    from pipeline.distributed.horovod_backend import start_rendezvous

    intervals: list[float] = []
    serve = RendezvousHTTPServer.serve_forever

    def noting(self, poll_interval=0.5):
        intervals.append(poll_interval)
        serve(self, poll_interval)

    monkeypatch.setattr(RendezvousHTTPServer, "serve_forever", noting)
    server, _port = start_rendezvous("127.0.0.1")
    server.stop()
    assert intervals and intervals[0] <= 0.05


@pytest.mark.parametrize(
    ("failure", "decision"),
    [
        (DataError("train/part-3.parquet: row id 7 has label 10"), "RAISE"),
        (DivergedError("training diverged: the loss is nan"), "RAISE"),
        (StorageUnavailableError("storage did not answer after retries"), "RETRY"),
        (RuntimeError("a worker process died"), "RETRY"),
    ],
)
def test_failure_policy_ends_the_job_on_user_errors_only(failure, decision):
    """Ray Train's own policy factory is replaced while a job runs: a bad file or a diverged
    loss would fail every restart the same way; a crash or an unreachable store may not."""
    from ray.train import FailureConfig
    from ray.train.v2.api import data_parallel_trainer
    from ray.train.v2.api.exceptions import WorkerGroupError

    from pipeline.distributed.failures import stop_on_user_errors

    original = data_parallel_trainer.create_failure_policy
    with stop_on_user_errors():
        policy = data_parallel_trainer.create_failure_policy(FailureConfig(max_failures=3))
    assert data_parallel_trainer.create_failure_policy is original
    error = WorkerGroupError("worker 1 failed", {1: failure})
    assert policy.make_decision(error).name == decision


def test_the_slowest_rank_is_named_with_where_its_epoch_went():
    import numpy as np

    from pipeline.tracking.summary import slowest_line
    from pipeline.train import rank_timing

    table = np.array(
        [
            # samples/s, data wait, engine wait, step ms, node
            [900.0, 0.02, 0.60, 70.0, 0],
            [620.0, 0.31, 0.20, 103.0, 1],
        ]
    )
    metrics = rank_timing.rank_metrics(table)
    assert metrics["rank/1/data_wait_share"] == 0.31 and metrics["rank/0/node"] == 0
    assert metrics["slowest_rank"] == 1
    line = slowest_line(metrics)
    assert line == (
        "Slowest rank (last epoch): rank 1 on node 1, 620 samples/s (900 the fastest):"
        " 31% of its epoch waiting for data"
    )
    table[1, 1:3] = [0.05, 0.70]  # the same rank, now waiting for its engine
    assert slowest_line(rank_timing.rank_metrics(table)).endswith(
        "70% waiting for compute and the allreduce"
    )
    assert slowest_line(rank_timing.rank_metrics(table[:1])) == ""  # one rank


def test_the_data_clock_counts_only_the_wait_for_the_next_item():
    import time

    from pipeline.train.rank_timing import DataClock

    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i

    clock = DataClock()
    for _ in clock.timed(slow()):
        time.sleep(0.1)  # the loop's own work is not waiting for data
    assert 0.15 <= clock.waited < 0.3


def test_a_job_on_its_own_ray_starts_no_ray_data_and_no_placement_group_cleaner():
    # Each left-out part is one more actor process (and a ray.data import in every worker)
    # before the first step; our workers read their own shards, and a Ray that ends with the
    # job frees its placement groups itself.
    import ray.train
    from ray.train.v2._internal.callbacks import BackendSetupCallback, DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback as Cleaner,
    )

    from pipeline.distributed.trainer import OwnDataTrainer

    def kinds(ray_ends_with_job: bool, driver_ends_with_job=False, **datasets) -> set[type]:
        trainer = OwnDataTrainer(
            lambda: None,
            scaling_config=ray.train.ScalingConfig(num_workers=2),
            datasets=datasets or None,
            ray_ends_with_job=ray_ends_with_job,
            driver_ends_with_job=driver_ends_with_job,
        )
        return {type(cb) for cb in trainer._create_default_callbacks()}

    own = kinds(ray_ends_with_job=True)
    assert DatasetsCallback not in own and Cleaner not in own
    assert BackendSetupCallback in own  # the rest of Ray Train's set-up stays
    # A search's Ray, a notebook's cluster: the driver lives on, the cleaner frees the PGs.
    shared = kinds(ray_ends_with_job=False)
    assert Cleaner in shared and DatasetsCallback not in shared
    # python -m jobs.train on a cluster: Ray frees them when the driver ends
    # (test_multinode: a killed driver leaves none).
    assert Cleaner not in kinds(ray_ends_with_job=False, driver_ends_with_job=True)
    assert DatasetsCallback in kinds(False, train=lambda: None)  # given datasets: kept


def test_a_fixed_group_on_its_own_ray_sends_no_autoscaler_requests(monkeypatch):
    # The coordinator is one more actor process, which the controller waits for before it
    # starts the workers; a Ray that ends with the job has no autoscaler to read it.
    import asyncio

    import ray.train
    from ray.train.v2._internal.execution.scaling_policy import (
        ElasticScalingPolicy,
        FixedScalingPolicy,
        ResizeDecision,
        create_scaling_policy,
    )
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from pipeline.distributed.trainer import NoAutoscalerPolicy, OwnDataTrainer

    sent: list = []
    for cls, method in (
        (DataParallelTrainer, "_initialize_and_run_controller"),
        (OwnDataTrainer, "_run_controller_without_runtime_env"),  # on its own Ray
    ):
        monkeypatch.setattr(
            cls, method, lambda self, **kwargs: sent.append(kwargs["scaling_policy"])
        )

    def policy(ray_ends_with_job: bool, workers) -> object:
        trainer = OwnDataTrainer(
            lambda: None,
            scaling_config=ray.train.ScalingConfig(num_workers=workers),
            ray_ends_with_job=ray_ends_with_job,
        )
        # The policy fit() hands over, from Ray Train's own factory.
        trainer._initialize_and_run_controller(
            scaling_policy=create_scaling_policy(trainer.scaling_config)
        )
        return sent.pop()

    own = policy(True, 2)
    assert type(own) is NoAutoscalerPolicy
    own.after_controller_start(None)
    assert own._coordinator_client is None  # no coordinator actor was asked for
    decision = own.make_decision_for_non_running_worker_group()
    assert isinstance(decision, ResizeDecision) and decision.num_workers == 2
    asyncio.run(own.before_controller_shutdown())  # cancelling nothing sent is fine
    assert type(policy(False, 2)) is FixedScalingPolicy  # a cluster's autoscaler reads them
    assert type(policy(True, (1, 2))) is ElasticScalingPolicy  # elastic groups need them


def test_a_job_rays_workers_get_no_runtime_env_for_variables_they_already_have(monkeypatch):
    """On a Ray the job started, the controller leaves out of the workers' runtime env the
    variables that Train passes on and the Ray's processes all have; a value that differs,
    and whatever else the runtime env holds, stays."""
    from ray.train.v2._internal.execution.worker_group import worker as train_worker

    from pipeline.distributed import local_workers
    from pipeline.distributed.local_workers import InheritingWorkerGroup

    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # the controller's own
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    assert InheritingWorkerGroup._get_worker_runtime_env({}) == {}
    assert InheritingWorkerGroup._get_worker_runtime_env({"env_vars": {"A": "1"}}) == {
        "env_vars": {"A": "1"}
    }
    kept = {"working_dir": "s3://x", "env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "1"}}
    assert InheritingWorkerGroup._get_worker_runtime_env(kept) == kept
    # The job's early-imports hook (launch.trainer_for gives it everywhere): its workers
    # start the imports themselves, below.
    hook = {"env_vars": local_workers.early_imports.runtime_env_vars()}
    assert hook["env_vars"] and InheritingWorkerGroup._get_worker_runtime_env(hook) == {}
    # The workers start importing MXNet as Ray constructs them (early_imports.py).
    started: list[bool] = []
    monkeypatch.setattr(local_workers.early_imports, "start", lambda: started.append(True))
    worker_class = InheritingWorkerGroup._worker_cls
    assert issubclass(worker_class, train_worker.RayTrainWorker)
    assert worker_class.__name__ == "RayTrainWorker"  # the prefix of the workers' lines
    worker_class()
    assert started == [True]
