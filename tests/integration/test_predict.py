"""Batch scoring for real: a trained, registered model scores the digits test split with Ray
Data actors, from local disk and from the S3 server, and MLflow's scoring server answers
REST calls with the same probabilities."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import mxnet as mx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from infra.processes import free_port, wait_for_http
from pipeline.config import load_job_config
from pipeline.data.contract import MANIFEST
from pipeline.distributed.ray_runtime import ray_runtime
from pipeline.errors import DataError
from pipeline.launch import run_job
from pipeline.predict.batch import READ_CPUS, PredictRequest, predict
from tests.conftest import REPO, list_keys, run_cli

pytestmark = pytest.mark.integration


def _test_split(digits_uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = pq.read_table(f"{digits_uri}/test")
    x = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    return table.column("id").to_numpy(), x, table.column("label").to_numpy()


def test_predict_scores_every_row_as_the_pyfunc_does_locally_and_on_s3(
    digits_uri, s3_env, tmp_path
):
    bucket, env = s3_env
    cfg = load_job_config(
        "digits-cnn",
        [
            f"data.uri={digits_uri}",
            f"storage.path={tmp_path / 'runs'}",
            # One epoch learns enough to pass a gate at three times chance (0.39 here):
            # scoring needs a promoted model, not a good one.
            "optim.epochs=1",
            "optim.warmup_epochs=0",
            "tracking.gate_min=0.3",
        ],
    )
    result = run_job(cfg, progress=lambda _msg: None)
    assert result.registration is not None and result.registration.promoted
    model = "models:/digits-cnn@candidate"
    # Version 2: the trained bundle under a loader of someone who may write the registry;
    # the scoring actors must run the installed loader, never the version's code.
    from pipeline.tracking.model_source import fetch_source_model
    from tests.faults import register_crafted_version

    trained = fetch_source_model(model, mlflow.get_tracking_uri(), tmp_path / "trained")
    marker = tmp_path / "ran"
    crafted = register_crafted_version("digits-cnn", marker, trained.bundle.artifacts())

    # One Ray for both in-process scoring jobs, held as a program embedding predict() holds
    # it (predict joins a Ray it finds running; room for its 2 actors and a read task): one
    # Ray start fewer. The CLI below starts its own, as a user's run does.
    with ray_runtime(2 + READ_CPUS, 1, lambda _msg: None):
        lines: list[str] = []
        summary = predict(
            PredictRequest(crafted, f"{digits_uri}/test", str(tmp_path / "preds"), batch_size=64),
            progress=lines.append,
        )
        assert not marker.exists(), "the registry's loader code ran in a scoring actor"
        ids, x, labels = _test_split(digits_uri)
        out = pq.read_table(tmp_path / "preds")
        assert out.column_names == ["id", "label", "prediction", "probabilities"]
        assert summary.rows == out.num_rows == len(ids)
        # Every row once, each with what the pyfunc loaded here gives it.
        order = np.argsort(out.column("id").to_numpy())
        assert (out.column("id").to_numpy()[order] == np.sort(ids)).all()
        reference = mlflow.pyfunc.load_model(model).predict(x[np.argsort(ids)])
        probs = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))[order]
        np.testing.assert_allclose(probs, reference, rtol=1e-5, atol=1e-7)
        assert (out.column("prediction").to_numpy()[order] == reference.argmax(axis=1)).all()
        assert (out.column("label").to_numpy()[order] == labels[np.argsort(ids)]).all()
        # The job's accuracy is the training run's own test_accuracy.
        assert summary.accuracy == pytest.approx(result.metrics["test_accuracy"], abs=1e-9)

        manifest = json.loads((tmp_path / "preds" / MANIFEST).read_text())
        assert manifest["rows"] == len(ids) and manifest["model"] == "models:/digits-cnn/2"
        run = MlflowClient().get_run(summary.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["model_version"] == "2"
        assert run.data.params["data_digest"] == manifest["data_digest"]
        assert run.data.metrics["rows"] == len(ids)
        assert run.data.metrics["accuracy"] == pytest.approx(summary.accuracy)
        assert run.inputs.dataset_inputs[0].dataset.digest == manifest["data_digest"][:36]
        assert any("scoring with 2 actors" in line for line in lines)

        # A bad file met by a read task mid-job: its one line, no output, the run FAILED.
        bad = tmp_path / "bad"
        bad.mkdir()
        good = sorted(Path(digits_uri, "test").iterdir())[0]
        shutil.copyfile(good, bad / "a.parquet")
        table = pq.read_table(good)
        features = pa.FixedSizeListArray.from_arrays(
            pa.array(np.zeros(64 * 3, np.float32)), 64, mask=pa.array([False, True, False])
        )
        rows = pa.table(
            {"id": [10**6, 10**6 + 1, 10**6 + 2], "features": features, "label": [1, 2, 3]}
        )
        pq.write_table(rows.replace_schema_metadata(table.schema.metadata), bad / "b.parquet")
        with pytest.raises(DataError) as refused:
            predict(PredictRequest(model, str(bad), str(tmp_path / "bad-out")), progress=print)
        assert type(refused.value) is DataError  # the worker's own error, not Ray's wrapper
        assert str(refused.value).startswith(f"{bad / 'b.parquet'}: ")
        assert "Traceback" not in str(refused.value) and "ray::" not in str(refused.value)
        assert not any((tmp_path / "bad-out").iterdir())
        failed = MlflowClient().search_runs(
            [run.info.experiment_id], "attributes.status = 'FAILED'", max_results=5
        )
        assert len(failed) == 1 and failed[0].data.params["data_uri"] == str(bad)

    # From the S3 server to the S3 server, as a user runs it: one summary, rows/s, the place.
    for path in sorted(Path(digits_uri, "test").iterdir()):
        import boto3

        boto3.client("s3").upload_file(str(path), bucket, f"digits-test/{path.name}")
    argv = [
        "jobs.predict",
        "--model",
        model,
        "--data",
        f"s3://{bucket}/digits-test",
        "--out",
        f"s3://{bucket}/preds",
    ]
    done = run_cli(*argv, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"scored {len(ids)} rows from 2 files" in done.stdout and "rows/s" in done.stdout
    assert f"to s3://{bucket}/preds" in done.stdout
    assert f"accuracy on the labelled rows: {summary.accuracy:.4f}" in done.stdout
    keys = list_keys(bucket, "preds/")
    assert f"preds/{MANIFEST}" in keys and "preds/part-00000.parquet" in keys
    assert env["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr
    # Again to the same place: refused, the result kept.
    again = run_cli(*argv, env=env, timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: --out s3://{bucket}/preds already holds a finished result; pass --overwrite "
        "to replace it, or choose another --out"
    ]
    assert list_keys(bucket, "preds/") == keys


def _post(port: int, body: dict | bytes, host: str = "") -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Host": host} if host else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_serve_answers_rest_calls_with_the_installed_loader_only(digits_uri, tmp_path):
    from models import build_model
    from pipeline.model import bundle, installed
    from tests.faults import register_crafted_version
    from tests.unit.test_predict import INFO

    net = build_model("cnn", load_job_config("digits-cnn").model.arch, INFO.feature_shape, 10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, 64)))
    written = bundle.write(tmp_path / "cnn", net, bundle.BundleMeta.for_data("classifier", 0, INFO))
    _, x, _ = _test_split(digits_uri)
    reference = installed.load(written).predict(x[:5])
    # The version as someone who may write the registry shapes it: our bundle, their loader.
    marker = tmp_path / "ran"
    model = register_crafted_version("digits-cnn", marker, artifacts=written.artifacts())

    port = free_port()
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.serve",
            "--model",
            model,
            "--port",
            str(port),
            "--max-request-mb",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "TMPDIR": str(temporary)},
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)
        assert [p.name[:14] for p in temporary.iterdir()] == ["mxtrain-serve-"]
        split = {"columns": list(range(64)), "data": x[:5].tolist()}
        for body in ({"dataframe_split": split}, {"inputs": x[:5].tolist()}):
            status, answer = _post(port, body)
            assert status == 200, answer
            np.testing.assert_allclose(
                np.asarray(answer["predictions"], np.float32), reference, rtol=1e-5, atol=1e-7
            )
        # Malformed: rows of the wrong width, and not JSON of any accepted format; the
        # message says why, and no server traceback comes with it.
        status, answer = _post(port, {"inputs": x[:2, :10].tolist()})
        assert 400 <= status < 500 and "shape" in answer.get("message", "").lower(), answer
        status, answer = _post(port, {"rows": [1, 2]})
        assert 400 <= status < 500 and "dataframe_split" in answer.get("message", ""), answer
        assert "stack_trace" not in answer
        # A name other than loopback's (DNS rebinding from a browser), and a body over 1 MB.
        status, answer = _post(port, {"inputs": x[:1].tolist()}, host="attacker.example:80")
        assert status == 421 and "127.0.0.1 or localhost only" in answer["message"]
        status, _ = _post(port, {"inputs": x[:1].tolist()}, host=f"localhost:{port}")
        assert status == 200
        # Refused on its declared length, before a byte of it is read.
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(2 * 1024**2))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413, response.read()
        assert "larger than 1,048,576 bytes" in json.loads(response.read())["message"]
        conn.close()
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    # Stopped by SIGTERM, the server unwinds: the model's temporary folder is gone.
    assert server.returncode == 0 and "server stopped" in output, output[-2000:]
    assert list(temporary.iterdir()) == []
    assert not marker.exists(), "the registry's loader code ran"
    # The printed call is one shell-quoted command that a shell hands curl intact.
    line = next(ln for ln in output.splitlines() if ln.startswith("try:  curl"))
    words = shlex.split(line.removeprefix("try:  "))
    assert words[:2] == ["curl", "-s"] and len(json.loads(words[-1])["inputs"]) == 2
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_serve_refuses_a_host_other_than_loopback(tmp_path):
    done = run_cli("jobs.serve", "--model", "models:/x@y", "--host", "0.0.0.0", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0: the scoring server has no authentication, so it listens "
        "on 127.0.0.1 only; to serve other machines put an authenticating reverse proxy in "
        "front of it"
    ]
