"""What a reviewer finds in the MLflow UI after a real job: `make mlflow-ui` (loopback, one
server process, no job runner) serving a trained run, read through MLflow's REST API, which is
what the UI's pages read: dataset inputs with digests, the code version, the description,
how the model errs, system metrics, and the registered version's description and tags."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from infra.processes import (
    free_port,
    group_processes,
    listening_addresses,
    stop_group,
    wait_for_http,
)
from tests.conftest import REPO, fresh_mlflow_store, run_cli

pytestmark = pytest.mark.integration

EPOCHS = 3


@pytest.fixture(scope="module")
def trained(digits_uri, tmp_path_factory):
    """digits-cnn trained by the CLI (2 workers, 3 epochs) into a store of its own, with
    system metrics every second and progress lines every millisecond. An epoch here is 22
    steps, all of which Python may queue before MXNet's engine runs them (it waits on the
    engine once 32 steps are queued), so its loop can pass an epoch in milliseconds: a
    longer interval (0.05 s once) leaves an epoch without a line now and then.
    (stdout, tracking URI)."""
    tmp = tmp_path_factory.mktemp("review")
    uri = fresh_mlflow_store(tmp / "store")
    done = run_cli(
        "jobs.train",
        "--recipe",
        "digits-cnn",
        "--data",
        digits_uri,
        "--storage",
        str(tmp / "runs"),
        "--set",
        f"optim.epochs={EPOCHS}",
        "--set",
        "tracking.system_metrics_every_s=1",
        "--set",
        "tracking.progress_every_s=0.001",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, uri


@pytest.fixture(scope="module")
def ui(trained):
    """`make mlflow-ui` on the trained run's store, on a free port: (base URL, its processes)."""
    _, uri = trained
    port = free_port()
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "mlflow-ui", f"MLFLOW_PORT={port}"],
        cwd=REPO,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health", proc)
        time.sleep(3)  # anything MLflow starts beside the server would be up by now
        group = group_processes(proc.pid)
        yield base, group, port
    finally:
        stop_group(proc.pid, grace_s=20, proc=proc)


def _get(base: str, endpoint: str, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def _artifact(base: str, run_id: str, path: str) -> bytes:
    query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
    with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=30) as r:
        return r.read()


def _run(base: str) -> dict:
    experiment = _get(base, "experiments/get-by-name", experiment_name="mxtrain")["experiment"]
    url = f"{base}/api/2.0/mlflow/runs/search"
    body = json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        runs = json.load(r)["runs"]
    assert len(runs) == 1
    return _get(base, "runs/get", run_id=runs[0]["info"]["run_id"])["run"]


def test_make_mlflow_ui_is_one_process_on_loopback(ui):
    _, group, port = ui
    assert listening_addresses(port) == {"127.0.0.1"}
    lines = [" ".join(p.info["cmdline"] or []) for p in group]
    assert not [line for line in lines if "huey" in line or "job" in line.lower()], lines
    # make, `mlflow ui`, and uvicorn with one worker (its supervisor and the worker)
    assert len(group) <= 4, lines


def test_rank_zero_shows_progress_within_each_epoch(trained):
    stdout, _ = trained
    progress = [line for line in stdout.splitlines() if "steps, " in line and "ETA" in line]
    assert progress, stdout[-3000:]
    for epoch in range(1, EPOCHS + 1):
        assert any(f"epoch   {epoch}/{EPOCHS} [" in line for line in progress), epoch
    assert all("samples/s" in line for line in progress)


def test_the_run_shows_its_data_code_description_errors_and_system_metrics(ui, digits_uri):
    base, _, _ = ui
    run = _run(base)
    run_id = run["info"]["run_id"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}

    # Data lineage: each split as a dataset input, its digest, source, schema and rows.
    inputs = run["inputs"]["dataset_inputs"]
    by_context = {
        next(t["value"] for t in i["tags"] if t["key"] == "mlflow.data.context"): i["dataset"]
        for i in inputs
    }
    assert set(by_context) == {"train", "val", "test"}
    for split, dataset in by_context.items():
        assert len(dataset["digest"]) >= 32
        assert json.loads(dataset["source"])["uri"].endswith(f"{digits_uri}/{split}")
        assert "features" in dataset["schema"] and "label" in dataset["schema"]
        assert json.loads(dataset["profile"])["num_rows"] > 0
    assert len({d["digest"] for d in by_context.values()}) == 3
    assert len(tags["mxtrain.data_digest"]) == 64

    # Code version: MLflow's source tags, this checkout's commit, clean or not, the user.
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags["mlflow.source.name"] == "jobs.train"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mxtrain.git.dirty"] in ("true", "false")
    assert tags["mlflow.user"] and tags["mxtrain.version"]

    # Description: the job's summary, written when it ended.
    note = tags["mlflow.note.content"]
    for part in ("**digits-cnn**", "FINISHED", "2 workers", "test_accuracy", "Quality gate"):
        assert part in note, note

    # How it errs: the confusion matrix and per-class scores of the whole test split.
    listed = _get(base, "artifacts/list", run_id=run_id, path="errors")["files"]
    names = {f["path"] for f in listed}
    assert {"errors/confusion_matrix.png", "errors/per_class.json"} <= names
    assert _artifact(base, run_id, "errors/confusion_matrix.png")[:4] == b"\x89PNG"
    report = json.loads(_artifact(base, run_id, "errors/per_class.json"))
    matrix = report["confusion_matrix"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert sum(map(sum, matrix)) == 179  # every test row, from both workers
    if report["accuracy"] < 1:  # rank 0's misclassified images, as a grid
        assert _artifact(base, run_id, "errors/misclassified.png")[:4] == b"\x89PNG"
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    for c in range(10):
        assert metrics[f"test_f1/{c}"] == pytest.approx(report["classes"][c]["f1"])
    assert metrics["test_macro_f1"] == pytest.approx(report["macro_f1"])

    # System metrics, sampled every second on rank 0's node while it trained.
    history = _get(
        base, "metrics/get-history", run_id=run_id, metric_key="system/cpu_utilization_percentage"
    )["metrics"]
    assert len(history) >= 2
    assert "system/system_memory_usage_megabytes" in metrics


def test_the_registered_version_has_a_description_and_its_origin(ui):
    base, _, _ = ui
    run = _run(base)
    run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    versions = _get(base, "model-versions/search", filter="name='digits-cnn'")["model_versions"]
    assert len(versions) == 1
    version = versions[0]
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert tags["mxtrain.source_run"] == run["info"]["run_id"]
    assert tags["mxtrain.data_digest"] == run_tags["mxtrain.data_digest"]
    assert tags["mxtrain.git.commit"] == run_tags["mlflow.source.git.commit"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert float(tags["mxtrain.metric.test_accuracy"]) == pytest.approx(
        metrics["test_accuracy"], rel=1e-5
    )
    assert run["info"]["run_id"] in version["description"]
    assert "Quality gate" in version["description"]
