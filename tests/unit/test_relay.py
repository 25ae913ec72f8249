"""The workers' MLflow calls, logged by the driver (pipeline/tracking/relay.py), and the
system metrics samplers that send through it (pipeline/tracking/system_metrics.py). The
channel's store is the in-process one here; tests/integration runs it on Ray's."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from mlflow import MlflowClient

from infra.processes import free_port
from pipeline.distributed.kv_channel import MemoryKv, Receiver, Sender
from pipeline.errors import TrackingError
from pipeline.tracking import system_metrics
from pipeline.tracking.outage import fast_failing
from pipeline.tracking.relay import DriverRelay, RelayLogger, drain
from pipeline.tracking.run_logger import RunLogger
from tests.conftest import REPO
from tests.jobs import wait_for


@pytest.fixture
def relayed(tmp_path):
    """(client, run id, a worker's logger factory, the driver's relay) on a sqlite store."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    store = MemoryKv()
    relay = DriverRelay(Receiver("relay-t", store), poll_s=0.1)

    def worker() -> RelayLogger:
        return RelayLogger(Sender("relay-t", store), check_every_s=0)

    yield client, run_id, worker, relay, store
    relay.stop_receiving()
    relay.close()


def test_rank_zeros_calls_land_in_the_run_in_order(relayed, tmp_path):
    client, run_id, worker, relay, store = relayed
    logger = worker()
    logger.log_params({"model.num_params": 12})
    for epoch in range(3):
        logger.log_metrics({"val_accuracy": 0.5 + epoch / 10, "loss": float("nan")}, step=epoch)
    picture = tmp_path / "confusion_matrix.png"
    picture.write_bytes(b"\x89PNG picture")
    logger.log_artifact(str(picture), "errors")
    relay.attach(RunLogger(client.tracking_uri, run_id))  # the run opens after the workers start
    relay.stop_receiving()
    relay.close()
    run = client.get_run(run_id)
    assert run.data.params["model.num_params"] == "12"
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [(m.step, round(m.value, 2)) for m in history] == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert str(client.get_metric_history(run_id, "loss")[0].value) == "nan"
    (artifact,) = client.list_artifacts(run_id, "errors")
    assert artifact.path == "errors/confusion_matrix.png"
    local = client.download_artifacts(run_id, "errors/confusion_matrix.png", str(tmp_path))
    assert Path(local).read_bytes() == b"\x89PNG picture"
    assert store.keys("relay-t/") == []  # the channel is cleared at the end


def test_what_a_killed_driver_left_is_logged_by_whoever_outlives_it(relayed):
    """A trial that a search's scheduler stops is killed with its driver; the search's driver
    logs what the trial's workers had sent (pipeline/tune/search.py)."""
    client, run_id, worker, _, store = relayed
    worker().log_metrics({"val_accuracy": 0.25}, step=0)
    assert drain(client.tracking_uri, run_id, "relay-t", store=store) == 1
    assert [m.value for m in client.get_metric_history(run_id, "val_accuracy")] == [0.25]
    assert store.keys("relay-t/") == []
    assert drain(client.tracking_uri, run_id, "relay-t", store=store) == 0


def test_a_message_leaves_the_channel_once_it_landed_not_when_it_was_read(relayed, tmp_path):
    """Tune kills a stopped trial's driver at once. What its relay had read but not yet
    delivered (here: the server is unreachable) is still in the channel, and the search's
    drain logs it; what was delivered leaves the channel as it lands."""
    client, run_id, worker, relay, store = relayed
    logger = worker()
    with fast_failing():
        away = RunLogger(f"http://127.0.0.1:{free_port()}", run_id, outage_wait_s=0.5)
        relay.attach(away)
        logger.log_metrics({"val_accuracy": 0.25}, step=0)
        picture = tmp_path / "samples.png"
        picture.write_bytes(b"\x89PNG picture")
        logger.log_artifact(str(picture), "samples/epoch_000")
        wait_for(
            lambda: away.mark() == 2, "the relay read both", 10
        )  # read and queued, not delivered
        assert len(store.keys("relay-t/m/")) == 2
        # The driver is killed here: the search drains its channel into the run.
        assert drain(client.tracking_uri, run_id, "relay-t", store=store) == 2
        relay.stop_receiving(flush=False)  # (the killed driver's threads, stopped for the test)
        assert away.done < away.mark()  # it clears the channel without waiting for them
        relay.close()
    assert [m.value for m in client.get_metric_history(run_id, "val_accuracy")] == [0.25]
    assert [a.path for a in client.list_artifacts(run_id, "samples/epoch_000")] == [
        "samples/epoch_000/samples.png"
    ]
    # A driver that can deliver removes each message once it landed, while it runs.
    live = DriverRelay(Receiver("relay-u", store), poll_s=0.1)
    live.attach(RunLogger(client.tracking_uri, run_id))
    Sender("relay-u", store).send({"method": "log_batch", "kwargs": {"params": [["p", "1"]]}})
    wait_for(lambda: store.keys("relay-u/m/") == [], "the message removed", 10)
    assert client.get_run(run_id).data.params["p"] == "1"
    live.stop_receiving()
    live.close()


def test_an_attempt_is_counted_and_the_worker_hears_when_it_was(relayed):
    client, run_id, worker, relay, _ = relayed
    relay.attach(RunLogger(client.tracking_uri, run_id))
    logger = worker()
    logger.count_attempt(2, world=2, at_once=True)  # returns once the driver counted it
    tags = client.get_run(run_id).data.tags
    assert tags["mxtrain.attempts"] == "1" and tags["mxtrain.group_size"] == "2"
    # The loop asks before every checkpoint; once counted, the store is not asked again.
    asked = []
    real_get = logger.sender.store.get
    logger.sender.store.get = lambda key: asked.append(key) or real_get(key)  # type: ignore[method-assign]
    for _ in range(3):
        logger.wait_counted()
    assert asked == []
    again = worker()  # a restarted group
    again.count_attempt(2, world=2, at_once=True)
    assert client.get_run(run_id).data.tags["mxtrain.restarts"] == "1"


def test_a_refusal_of_the_drivers_calls_stops_rank_zero(relayed):
    """A server that refuses the driver's calls, or a run the driver could not open: rank 0
    raises at its next check (a TrackingError, which Ray Train does not retry)."""
    _, _, worker, relay, _ = relayed
    logger = worker()
    logger.check()  # nothing refused yet
    relay.refuse("MLflow tracking at http://user:secret@x refused the credentials (401)")
    with pytest.raises(TrackingError, match="refused the credentials") as refused:
        logger.check()
    assert "secret" not in str(refused.value)


def test_what_a_worker_cannot_name_is_not_written(relayed, tmp_path, capsys):
    """The store is shared with everything on the Ray: an artifact's name or folder that
    climbs out, or a message that is not ours, is skipped with a warning."""
    client, run_id, _, relay, store = relayed
    sender = Sender("relay-t", store)
    data = "eA=="  # b"x"
    sender.send({"method": "log_artifact", "kwargs": {"name": "../../x", "artifact_path": "a"}})
    bad = {"name": "x.png", "artifact_path": "../../outside", "data": data}
    sender.send({"method": "log_artifact", "kwargs": bad})
    sender.send({"method": "nonsense", "kwargs": {}})
    store.put("relay-t/m/0/0", b"\x80\x04pickle")
    sender.send({"method": "log_batch", "kwargs": {"metrics": [["ok", 1.0, 0, 0]]}})
    relay.attach(RunLogger(client.tracking_uri, run_id))
    relay.stop_receiving()
    relay.close()
    assert client.list_artifacts(run_id) == []
    assert client.get_run(run_id).data.metrics == {"ok": 1.0}
    assert capsys.readouterr().out.count("malformed message was skipped") == 3
    assert not (tmp_path.parent / "outside").exists()


def test_the_worker_side_imports_no_mlflow(tmp_path):
    """The point of the relay: the training loop and what rank 0 logs through never import
    MLflow (1.4 s of one core, which training on every core would pay)."""
    code = f"""
import sys
from infra.processes import free_port
from pipeline.distributed.kv_channel import MemoryKv, Sender
from pipeline.tracking import system_metrics
from pipeline.tracking.outage import fast_failing
from pipeline.tracking.relay import RelayLogger
import pipeline.train.loop
logger = RelayLogger(Sender("c", MemoryKv()))
logger.log_metrics({{"a": 1.0}}, 0)
logger.log_params({{"b": 2}})
open({str(tmp_path / "f.txt")!r}, "w").write("x")
logger.log_artifact({str(tmp_path / "f.txt")!r}, "d")
logger.log_system(system_metrics.Probes().read(), None)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "sqlalchemy")))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# -- system metrics -----------------------------------------------------------------------------


def test_system_metrics_reach_the_run(relayed):
    client, run_id, worker, relay, _ = relayed
    relay.attach(RunLogger(client.tracking_uri, run_id))
    sampler = system_metrics.start(worker(), every_s=1)
    sampler.go()  # the loop, after its first step
    # Two samples, however slow the machine (a fixed sleep was flaky under load).
    wait_for(
        lambda: len(client.get_metric_history(run_id, "system/cpu_utilization_percentage")) >= 2,
        "two system-metric samples",
        timeout_s=120,
    )
    system_metrics.finish(sampler)
    relay.stop_receiving()
    relay.close()
    logged = client.get_run(run_id).data.metrics
    names = ("system_memory_usage_megabytes", "disk_usage_percentage", "network_receive_megabytes")
    for name in names:
        assert f"system/{name}" in logged, name
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 3 and sorted(m.step for m in history) == list(range(len(history)))


def test_a_run_shorter_than_the_interval_gets_a_first_and_a_last_sample_of_its_node(
    relayed, monkeypatch
):
    """A sample a second after the start and one at the end, named by the node: a short job
    on two nodes charts a line per node, not one point of psutil's meaningless first 0.0."""
    import psutil

    calls: list[int] = []  # the thread of every CPU reading: psutil 7 keeps its baseline per thread
    real = psutil.cpu_percent

    def cpu_percent(*args, **kwargs):
        calls.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(psutil, "cpu_percent", cpu_percent)
    client, run_id, worker, relay, store = relayed
    sampler = system_metrics.start(worker(), every_s=600, node_id="node1")
    sampler.go()
    deadline = time.monotonic() + 120
    # A core kept busy (the CPU charts cannot read 0) until the first sample is sent, and
    # half a second more for the last one's interval.
    while time.monotonic() < deadline and not store.keys("relay-t/m/"):
        pass
    busy_until = time.monotonic() + 0.5
    while time.monotonic() < busy_until:
        pass
    system_metrics.finish(sampler)
    relay.attach(RunLogger(client.tracking_uri, run_id))
    relay.stop_receiving()
    relay.close()
    name = "system/node1/cpu_utilization_percentage"
    history = client.get_metric_history(run_id, name)
    assert sorted(m.step for m in history) == [0, 1]
    # The first reading is of that busy second, not psutil's 0.0 of a thread never primed:
    # the sampling thread took the baseline itself before its two readings.
    assert calls.count(sampler._thread.ident) == len(history) + 1
    assert min(m.value for m in history) > 0
    assert "system/cpu_utilization_percentage" not in client.get_run(run_id).data.metrics


def test_a_resumed_runs_samples_continue_after_its_last(relayed):
    client, run_id, worker, relay, _ = relayed
    client.log_metric(run_id, "system/cpu_utilization_percentage", 5.0, step=6)
    relay.attach(RunLogger(client.tracking_uri, run_id), resumed=True)
    logger = worker()
    logger.log_system({"cpu_utilization_percentage": 7.0}, None)
    logger.log_system({"cpu_utilization_percentage": 8.0}, None)
    relay.stop_receiving()
    relay.close()
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert sorted(m.step for m in history) == [6, 7, 8]


def test_no_system_metrics_before_the_first_step(relayed):
    """The sampler reads and sends only once the loop says go."""
    _, _, worker, _, store = relayed
    sampler = system_metrics.start(worker(), every_s=1)
    time.sleep(3)  # the sampler's first second and two intervals, had it not waited
    assert store.keys("relay-t/m/") == []
    sampler.go()
    wait_for(lambda: store.keys("relay-t/m/"), "a system-metric sample", timeout_s=120)
    system_metrics.finish(sampler)


def test_probes_that_cannot_be_read_leave_training_without_system_metrics(capsys):
    def broken():
        raise OSError("no /proc here")

    sampler = system_metrics.Sampler(lambda metrics: None, every_s=1, make_probes=broken)
    system_metrics.finish(sampler)
    assert "no system metrics for this run: no /proc here" in capsys.readouterr().err


def test_gpu_readings_follow_mlflows_names(monkeypatch):
    """The GPU path cannot run here (no GPU): NVML's answers come from a stand-in."""
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=4e9, total=16e9),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=90 + h),
        nvmlDeviceGetPowerUsage=lambda h: 150_000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 300_000,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    readings = system_metrics.Probes().read()
    assert readings["gpu_1_utilization_percentage"] == 91.0
    assert readings["gpu_0_memory_usage_percentage"] == 25.0
    assert readings["gpu_0_memory_usage_megabytes"] == 4000.0
    assert readings["gpu_1_power_usage_watts"] == 150.0
    assert readings["gpu_1_power_usage_percentage"] == 50.0
    json.dumps(readings)  # what travels through the store


def test_a_node_without_nvml_has_no_gpu_charts(monkeypatch):
    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=fail))
    assert not any(k.startswith("gpu_") for k in system_metrics.Probes().read())
