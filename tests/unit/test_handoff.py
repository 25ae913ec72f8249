"""The run id's handoff from the driver to the workers (pipeline/distributed/handoff.py), and
the priority of the driver's thread that opens the run.

A real job's handoff through Ray's GCS is tested by
tests/integration/test_distributed_training.py (rank 0 logs into the run the driver opened
while the workers started) and test_mlflow_server.py (a run that cannot be opened ends the
job with the driver's one line). Here the store is a dict, to plant what a real one would
hold only after a fault: nothing, or a value nobody of ours wrote."""

from __future__ import annotations

import json
import os
import sys
import threading

import pytest
from ray.experimental import internal_kv

from pipeline.distributed.handoff import NAMESPACE, RunIdHandoff
from pipeline.distributed.threads import BACKGROUND_NICENESS, yield_cores
from pipeline.errors import TrackingError


@pytest.fixture
def store(monkeypatch) -> dict:
    kv: dict = {}
    monkeypatch.setattr(
        internal_kv,
        "_internal_kv_put",
        lambda k, v, overwrite, namespace: kv.__setitem__((namespace, k), v.encode()),
    )
    monkeypatch.setattr(
        internal_kv, "_internal_kv_get", lambda k, namespace: kv.get((namespace, k))
    )
    monkeypatch.setattr(
        internal_kv, "_internal_kv_del", lambda k, namespace: kv.pop((namespace, k))
    )
    return kv


def test_a_worker_waits_for_the_id_the_driver_publishes_later(store):
    handoff = RunIdHandoff.pending()
    later = threading.Timer(0.3, handoff.publish, args=("0123456789abcdef0123456789abcdef",))
    later.start()
    assert handoff.wait(timeout_s=10) == "0123456789abcdef0123456789abcdef"
    handoff.withdraw()
    assert store == {}


def test_a_known_id_needs_no_store(store):
    assert RunIdHandoff.of("abc").wait(timeout_s=0) == "abc"
    assert store == {}


def test_a_run_the_driver_could_not_open_fails_the_waiting_worker(store):
    handoff = RunIdHandoff.pending()
    handoff.fail()
    with pytest.raises(TrackingError, match="could not open the job's MLflow run"):
        handoff.wait(timeout_s=10)


@pytest.mark.parametrize("planted", [b"not json", b'{"run_id": "../../x"}', b'["a"]', b"{}"])
def test_a_value_not_of_ours_is_refused(store, planted):
    handoff = RunIdHandoff.pending()
    store[(NAMESPACE, handoff.key)] = planted
    with pytest.raises(TrackingError):
        handoff.wait(timeout_s=10)


def test_a_driver_that_never_answers_is_waited_for_only_so_long(store):
    with pytest.raises(TrackingError, match="did not open the job's MLflow run within 0 s"):
        RunIdHandoff.pending().wait(timeout_s=0.2, poll_s=0.05)


def test_the_store_holds_the_id_only(store):
    handoff = RunIdHandoff.pending()
    handoff.publish("0123456789abcdef0123456789abcdef")
    assert json.loads(store[(NAMESPACE, handoff.key)]) == {
        "run_id": "0123456789abcdef0123456789abcdef"
    }


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own niceness is Linux's")
def test_the_thread_that_opens_the_run_yields_the_cores_and_only_it():
    """The driver's MLflow thread runs at a lower priority than the rest of the driver."""
    seen: dict = {}

    def background() -> None:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        yield_cores()
        seen["change"] = os.getpriority(os.PRIO_PROCESS, tid) - before

    me = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen["change"] == min(BACKGROUND_NICENESS, 19 - me)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == me
