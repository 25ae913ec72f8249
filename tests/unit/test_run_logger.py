"""The driver's logger for the workers' calls (pipeline/tracking/relay.py hands them to it):
what it sends, what it keeps through an outage, what it refuses to hide."""

from __future__ import annotations

import http.server
import math
import os
import threading
import time

import pytest
from mlflow import MlflowClient

from infra.processes import free_port
from pipeline.errors import TrackingError
from pipeline.tracking import run_logger
from pipeline.tracking.outage import fast_failing
from pipeline.tracking.run_logger import RunLogger, metric_entries
from tests.jobs import wait_for


def _run() -> str:
    return MlflowClient().create_run("0").info.run_id


def test_non_finite_metrics_are_logged_not_dropped():
    run_id = _run()
    logger = RunLogger(os.environ["MLFLOW_TRACKING_URI"], run_id)
    logger.replay(metric_entries({"train_loss": math.nan, "val_accuracy": 0.1}, step=0))
    logger.close()
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert math.isnan(metrics["train_loss"]) and metrics["val_accuracy"] == 0.1


def test_a_replayed_history_is_not_stored_twice():
    run_id = _run()
    logger = RunLogger(os.environ["MLFLOW_TRACKING_URI"], run_id)
    history = metric_entries({"val_accuracy": 0.5}, step=0)
    history += metric_entries({"val_accuracy": 0.7}, step=1)
    logger.replay(history)
    logger.replay(history)  # what a restarted group sends from its checkpoint's history
    logger.close()
    steps = [m.step for m in MlflowClient().get_metric_history(run_id, "val_accuracy")]
    assert sorted(steps) == [0, 1]


def test_calls_are_sent_while_the_logger_is_open():
    """The driver attaches a logger once the run is open: what it is given lands without
    waiting for close()."""
    run_id = _run()
    logger = RunLogger(os.environ["MLFLOW_TRACKING_URI"], run_id)
    logger.replay(metric_entries({"val_accuracy": 0.5}, step=0))
    wait_for(lambda: MlflowClient().get_run(run_id).data.metrics, "the metric", timeout_s=60)
    assert logger._thread.is_alive()
    logger.close()
    assert MlflowClient().get_run(run_id).data.metrics == {"val_accuracy": 0.5}


def test_params_arrive_with_credentials_redacted():
    run_id = _run()
    logger = RunLogger(os.environ["MLFLOW_TRACKING_URI"], run_id)
    logger.log_params({"model.num_params": 1234, "data.uri": "s3://key:secret@bucket/x"})
    logger.close()
    params = MlflowClient().get_run(run_id).data.params
    assert params["model.num_params"] == "1234"
    assert "secret" not in params["data.uri"] and "bucket/x" in params["data.uri"]


def test_an_unreachable_server_is_waited_for_then_the_loss_is_counted(capfd):
    """Nothing listens on the port: the calls are kept (at most max_pending, the oldest
    dropped first), and close() gives up after outage_wait_s and says how many were lost."""
    dead = f"http://127.0.0.1:{free_port()}"
    with fast_failing():
        logger = RunLogger(dead, "0" * 32, outage_wait_s=1.0, max_pending=3)
        heard: list[int] = []  # what the relay hears: how many calls were dealt with
        logger.on_done = heard.append
        for step in range(5):
            logger.replay(metric_entries({"val_accuracy": 0.5}, step=step))
        time.sleep(0.5)
        assert logger._thread.is_alive()  # still trying, not given up
        started = time.monotonic()
        logger.close()
    assert 1.0 <= time.monotonic() - started < 30
    assert logger.dropped == 5  # 2 pushed out of the full buffer, 3 given up at close
    assert heard == [1, 2, 3, 4, 5] and logger.done == logger.mark() == 5
    err = capfd.readouterr().err
    assert "unreachable; training goes on" in err and "were not delivered" in err


def test_artifacts_waiting_through_an_outage_are_bounded_in_bytes(monkeypatch, capfd):
    """The driver holds a worker's pictures in memory until they are uploaded: past the
    budget a new one is dropped and counted, not kept."""
    monkeypatch.setattr(run_logger, "MAX_PENDING_ARTIFACT_BYTES", 1000)
    with fast_failing():
        logger = RunLogger(f"http://127.0.0.1:{free_port()}", "0" * 32, outage_wait_s=0.5)
        logger.log_artifact("a.png", b"x" * 600, "samples")
        logger.log_artifact("b.png", b"x" * 600, "samples")
        assert (logger.mark(), logger.dropped) == (1, 1)
        logger.close()
    assert logger.dropped == 2  # and the first given up at close
    assert "MLflow artifact b.png dropped: 600 bytes wait" in capfd.readouterr().err


class _Refuses(http.server.BaseHTTPRequestHandler):
    def _refuse(self):
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _refuse

    def log_message(self, *args):
        pass


def test_a_refusal_is_raised_by_the_count_and_kept_for_the_relay():
    """The count is made at once and raises the refusal (the relay tells the workers to
    stop); a queued call's refusal is kept in ``refused``, in one line that says what to
    set."""
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    expected = r"during training, .*\(401\): set MLFLOW_TRACKING_USERNAME"
    try:
        with fast_failing():
            logger = RunLogger(f"http://127.0.0.1:{port}", "0" * 32)
            with pytest.raises(TrackingError, match=expected):
                logger.count_attempt(3)
            logger.replay(metric_entries({"val_accuracy": 0.5}, step=0))
            wait_for(lambda: logger.refused is not None, "the refusal", timeout_s=60)
            logger.close()
    finally:
        server.shutdown()
    assert logger.refused is not None
    assert "\n" not in str(logger.refused)
    with pytest.raises(TrackingError, match=expected):
        raise logger.refused


def test_the_first_group_keeps_the_drivers_count_and_a_restart_adds_one(tmp_path):
    """The driver tags a new run with attempt 1 (a first group that dies at once is counted);
    the first group's count records its size only, a restarted group counts itself. Each
    count has landed when count_attempt returns."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    run = client.create_run(
        client.create_experiment("e"), tags={"mxtrain.attempts": "1", "mxtrain.restarts": "0"}
    )

    def start_group() -> dict:
        logger = RunLogger(uri, run.info.run_id)
        logger.count_attempt(max_failures=3, world=2)
        tags = client.get_run(run.info.run_id).data.tags  # before close(): not queued
        logger.close()
        return tags

    first = start_group()
    assert (first["mxtrain.attempts"], first["mxtrain.restarts"]) == ("1", "0")
    assert first["mxtrain.group_size"] == "2"
    restarted = start_group()
    assert (restarted["mxtrain.attempts"], restarted["mxtrain.restarts"]) == ("2", "1")


def test_a_count_through_an_outage_is_queued_not_waited_for(capfd):
    """A group that starts while the server is away trains on: its count waits in the
    queue (and is given up with the rest when the outage outlasts close())."""
    with fast_failing():
        away = RunLogger(f"http://127.0.0.1:{free_port()}", "0" * 32, outage_wait_s=0.5)
        started = time.monotonic()
        away.count_attempt(max_failures=3, world=2)
        assert time.monotonic() - started < 60
        away.close()
    assert away.dropped == 1
    assert "were not delivered" in capfd.readouterr().err
