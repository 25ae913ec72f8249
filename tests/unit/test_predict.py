"""Batch scoring without Ray: what is read, how a piece is scored, how the output is written,
and every refusal before work starts (the Ray Data path: tests/integration/test_predict.py)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import mlflow.pyfunc
import mxnet as mx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from models import build_model
from pipeline.config import load_job_config
from pipeline.data.contract import MANIFEST, DatasetInfo, SplitInfo
from pipeline.errors import ConfigError, DataError
from pipeline.model import bundle, installed
from pipeline.predict.batch import PredictRequest, _Tally, predict
from pipeline.predict.inputs import PIECE_ROWS, _pieces, inspect_scoring_input
from pipeline.predict.output import PredictionWriter
from pipeline.predict.scorer import load_model, model_files, score, unpack_model
from pipeline.progress import ProgressBar
from pipeline.tracking import registry
from pipeline.tracking.model_source import fetch_source_model
from tests.conftest import run_cli

INFO = DatasetInfo("memory://", (1, 8, 8), 10, {"train": SplitInfo((), 64)})


@pytest.fixture
def registered_fcn(tmp_path):
    """An (untrained) digits-fcn registered as version 1 of digits-fcn (no alias: no gate)."""
    net = build_model("mlp", load_job_config("digits-fcn").model.arch, INFO.feature_shape, 10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, 64)))
    written = bundle.write(tmp_path / "fcn", net, bundle.BundleMeta.for_data("classifier", 0, INFO))
    cfg = load_job_config("digits-fcn", [])
    run_id = MlflowClient().create_run("0").info.run_id
    registry.log_and_register_model(cfg, run_id, str(written.directory), np.zeros((2, 64)), {})
    return "models:/digits-fcn/1"


def test_a_prepared_split_is_read_in_pieces_with_its_manifest_digest(digits_uri, registered_fcn):
    meta = bundle.BundleMeta.for_data("classifier", 0, INFO)
    cfg = load_job_config("digits-fcn").data
    scoring = inspect_scoring_input(f"{digits_uri}/test", meta, cfg)
    manifest = json.loads(Path(digits_uri, MANIFEST).read_text())
    assert scoring.rows == manifest["splits"]["test"]["rows"] == sum(p.rows for p in scoring.pieces)
    assert scoring.reader.has_labels and scoring.reader.mapping is None
    assert scoring.digest_basis.startswith("names, sizes and SHA-256")
    assert len(scoring.digest) == 64
    # The same files give the same digest; another split another one.
    assert inspect_scoring_input(f"{digits_uri}/test", meta, cfg).digest == scoring.digest
    assert inspect_scoring_input(f"{digits_uri}/val", meta, cfg).digest != scoring.digest
    # Rows of every piece decode to ids, uint8 features and labels as stored.
    stored = pq.read_table(f"{digits_uri}/test")
    decoded = pa.concat_tables(scoring.reader.read(p) for p in scoring.pieces)
    assert sorted(decoded.column("id").to_pylist()) == sorted(stored.column("id").to_pylist())
    assert decoded.column("label").to_pylist() == stored.column("label").to_pylist()


def test_row_groups_join_into_pieces_of_bounded_rows():
    pieces = _pieces("f", 3, [4000, 4000, 4000, 100, PIECE_ROWS + 5])
    assert [p.groups for p in pieces] == [(0, 1), (2, 3), (4,)]
    assert [p.first_row for p in pieces] == [0, 8000, 12100]
    assert sum(p.rows for p in pieces) == 12100 + PIECE_ROWS + 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "holds the splits train, val, test; score one of them, e.g. --data .*/test"),
        ("/test-wide", "features hold 65 values per row, the model takes 64"),
        ("/no-features", "no column 'features'"),
    ],
)
def test_data_that_does_not_fit_the_model_is_refused_in_one_line(
    digits_uri, tmp_path, data, message
):
    meta = bundle.BundleMeta.for_data("classifier", 0, INFO)
    wide = tmp_path / "test-wide"
    wide.mkdir()
    pq.write_table(
        pa.table(
            {
                "id": pa.array([1, 2], pa.int64()),
                "features": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(130, "f4")), 65),
            }
        ),
        wide / "a.parquet",
    )
    bare = tmp_path / "no-features"
    bare.mkdir()
    pq.write_table(pa.table({"id": [1], "pixels": [[0.0] * 64]}), bare / "a.parquet")
    uri = digits_uri if not data else str(tmp_path) + data
    with pytest.raises(DataError, match=message):
        inspect_scoring_input(uri, meta, load_job_config("digits-fcn").data)


def test_a_piece_scored_in_process_matches_the_pyfunc(
    digits_uri, registered_fcn, tmp_path, monkeypatch
):
    source = fetch_source_model(registered_fcn, mlflow.get_tracking_uri(), tmp_path / "dl")
    # What the actors receive: the bundle's files, unpacked elsewhere, loaded by the
    # installed loader; the registry's own pyfunc gives the same answers.
    files = model_files(source.plain.directory)
    assert sorted(files) == sorted(bundle.FILES)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    loaded = load_model(files)
    # Nothing is left behind: an actor is killed without finalizers, so the folder the
    # files were unpacked to goes as soon as they are loaded.
    assert list(temporary.iterdir()) == []
    registered = mlflow.pyfunc.load_model(registered_fcn)
    with pytest.raises(ValueError, match="escapes"):
        unpack_model({"../evil": b"x"}, tmp_path / "actor2")

    meta = source.bundle.meta
    scoring = inspect_scoring_input(f"{digits_uri}/test", meta, source.cfg.data)
    rows = scoring.reader.read(scoring.pieces[0])
    out = score(loaded, rows, meta.kind, meta.num_features, scoring.reader.scale, ())
    assert out.column_names == ["id", "label", "prediction", "probabilities"]
    x = np.stack(rows.column("features").to_numpy(zero_copy_only=False)).astype("f4")
    assert scoring.reader.scale is None  # digits are stored as float32
    expected = registered.predict(x)
    probs = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert out.column("prediction").to_pylist() == expected.argmax(axis=1).tolist()
    tally = _Tally()
    tally.add(out)
    right = (expected.argmax(axis=1) == rows.column("label").to_numpy()).sum()
    assert tally.accuracy == pytest.approx(right / rows.num_rows)


def _part(n: int, first: int = 0) -> pa.Table:
    return pa.table({"id": pa.array(range(first, first + n), pa.int64())})


def test_the_output_is_parts_then_a_manifest_with_checksums(tmp_path, monkeypatch):
    import hashlib

    from pipeline.predict import output

    monkeypatch.setattr(output, "PART_BYTES", 8 * 100)  # a part per 100 rows of int64
    writer = PredictionWriter(str(tmp_path / "out"))
    writer.prepare()
    for i in range(5):
        writer.write(_part(50, i * 50))
    assert not (tmp_path / "out" / MANIFEST).exists()  # not whole before finish()
    manifest = writer.finish({"model": "m"})
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [MANIFEST, "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert manifest["rows"] == 250 and manifest["model"] == "m"
    for entry in manifest["files"]:
        data = (tmp_path / "out" / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == pq.read_table(tmp_path / "out" / entry["path"]).num_rows
    assert json.loads((tmp_path / "out" / MANIFEST).read_text()) == manifest


def test_an_existing_output_is_refused_and_replaced_only_when_asked(tmp_path):
    out = str(tmp_path / "out")
    first = PredictionWriter(out)
    first.prepare()
    first.write(_part(3))
    first.finish({})
    with pytest.raises(ConfigError, match="already holds a finished result; pass --overwrite"):
        PredictionWriter(out).prepare()
    again = PredictionWriter(out, overwrite=True)
    again.prepare()
    assert list((tmp_path / "out").iterdir()) == []
    # A failed job leaves nothing: the parts it wrote are deleted.
    again.write(_part(3))
    again._flush()
    assert (tmp_path / "out" / "part-00000.parquet").exists()
    again.abort()
    assert list((tmp_path / "out").iterdir()) == []
    # --overwrite deletes only what this job writes.
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files this job does not write \(notes.txt\)"):
        PredictionWriter(out, overwrite=True).prepare()
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_progress_is_redrawn_on_a_terminal_and_a_line_per_interval_in_a_log(monkeypatch):
    from pipeline import progress

    clock = iter([0.0, 5.0, 11.0, 12.0, 25.0, 26.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    log = io.StringIO()
    bar = ProgressBar(1000, "scoring", out=log, every_s=10)
    for _ in range(3):
        bar.update(200)  # at 5 s (quiet), 11 s (a line), 12 s (quiet)
    bar.close()  # 25 s: the final line
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert "400/1,000 rows" in lines[0] and "40.0%" in lines[0]
    assert "600/1,000 rows" in lines[1] and "24 rows/s" in lines[1]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = iter([0.0, 1.0, 2.0])
    term = Terminal()
    bar = ProgressBar(10, "scoring", out=term)
    bar.update(5)
    bar.close()
    assert term.getvalue().count("\r") == 2 and term.getvalue().endswith("\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "models:/nope@candidate"], "no registered model 'nope'"),
        (["--model", "models:/digits-fcn@best"], "has no alias @best"),
        (["--data", "DATA"], "holds the splits train, val, test"),
        (["--out", "DATA/test/preds"], "overlap; write the predictions outside"),
        (["--actors", "0"], "at least one actor"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_ray_starts(
    registered_fcn, digits_uri, tmp_path, args, message, capsys
):
    given = {
        "--model": registered_fcn,
        "--data": f"{digits_uri}/test",
        "--out": str(tmp_path / "o"),
    }
    flags = dict(zip(args[::2], args[1::2], strict=True))
    merged = {**given, **{k: v.replace("DATA", digits_uri) for k, v in flags.items()}}
    code, out, err = _cli([item for pair in merged.items() for item in pair], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "starting a local Ray" not in out
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``python -m jobs.predict argv`` in this process: (exit code, stdout, stderr)."""
    from jobs._cli import exit_code
    from jobs.predict import main

    code = exit_code(lambda: main(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_entry_point_ends_a_user_error_in_one_line(tmp_path):
    """As a user runs it: a process, its exit code and its last line."""
    done = run_cli(
        "jobs.predict", "--model", "models:/nope/1", "--data", str(tmp_path / "d"), "--out",
        str(tmp_path / "o"), timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: no registered model 'nope' in {mlflow.get_tracking_uri()}; registered: none "
        "(train one with make train-distributed)"
    ]


def test_more_gpus_than_the_cluster_has_are_refused(monkeypatch):
    import ray

    from pipeline.predict.batch import _check_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    request = PredictRequest("models:/m/1", "/d", "/o", gpus_per_actor=1)
    with pytest.raises(ConfigError, match="2 actors x --gpus-per-actor 1 need 2 GPUs; the Ray"):
        _check_resources(request)
    _check_resources(PredictRequest("models:/m/1", "/d", "/o", actors=3))
    # Actors holding every CPU would leave none for the reads that feed them: a hang.
    with pytest.raises(ConfigError, match=r"and 0\.5 for a read task\) need 4\.5 CPUs; the Ray"):
        _check_resources(PredictRequest("models:/m/1", "/d", "/o", actors=4))
    with pytest.raises(ConfigError, match=r"need 5 CPUs; the Ray cluster has 4"):
        _check_resources(PredictRequest("models:/m/1", "/d", "/o", actors=3, cpus_per_actor=1.5))


def test_an_output_that_exists_is_refused_and_kept(registered_fcn, digits_uri, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"an earlier result")
    with pytest.raises(ConfigError, match=r"already holds 1 files, no _manifest\.json"):
        predict(PredictRequest(registered_fcn, f"{digits_uri}/test", str(out)))
    assert (out / "part-00000.parquet").read_bytes() == b"an earlier result"


def test_unreachable_s3_is_one_line(registered_fcn, tmp_path, monkeypatch, capsys):
    for key, value in {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    argv = ["--model", registered_fcn, "--data", "s3://nowhere/test", "--out", str(tmp_path / "o")]
    code, _, err = _cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot reach bucket 'nowhere' at http://127.0.0.1:9" in lines[0]


def _register(tmp_path, net, meta, cfg, example) -> str:
    """``net`` logged and registered as the next version of ``cfg``'s model, its run holding
    ``cfg`` as params (what the scoring job reads the data settings from)."""
    return _register_bundle(bundle.write(tmp_path / meta.kind, net, meta), cfg, example)


def _register_bundle(written, cfg, example) -> str:
    """A bundle logged and registered as :func:`_register` does."""
    from mlflow.entities import Param

    from pipeline.tracking.client import param_value

    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    params = [Param(k, param_value(v)) for k, v in cfg.to_dict().items()]
    client.log_batch(run_id, params=params)
    reg = registry.log_and_register_model(cfg, run_id, str(written.directory), example, {})
    assert reg is not None
    return f"models:/{reg.name}/{reg.version}"


def test_your_own_columns_are_scored_as_the_model_was_trained_on_them(tmp_path):
    """A model trained on the user's Parquet (string labels, stacked pixel columns, no id
    column): scoring data in those columns, with and without labels, ids derived from
    (file, row), the class names in the output."""
    import dataclasses

    names = tuple(f"digit-{i}" for i in range(10))
    info = dataclasses.replace(INFO)
    meta = dataclasses.replace(bundle.BundleMeta.for_data("classifier", 0, info), class_names=names)
    net = build_model("mlp", load_job_config("digits-fcn").model.arch, INFO.feature_shape, 10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, 64)))
    cfg = load_job_config(
        "digits-fcn", ["data.label_column=digit", "data.feature_columns=['px_*']"]
    )
    model = _register(tmp_path, net, meta, cfg, np.zeros((2, 64), np.float32))

    rng = np.random.default_rng(0)
    x = rng.random((30, 64), dtype=np.float32)
    columns = {f"px_{i}": x[:, i] for i in range(64)}
    data = tmp_path / "mine"
    data.mkdir()
    pq.write_table(
        pa.table({**columns, "digit": [names[i % 10] for i in range(30)]}), data / "a.parquet"
    )
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    pq.write_table(pa.table(columns), unlabelled / "a.parquet", row_group_size=7)

    source = fetch_source_model(model, mlflow.get_tracking_uri(), tmp_path / "dl")
    loaded = installed.load(source.plain)
    expected = loaded.predict(x)
    for where, labelled in ((data, True), (unlabelled, False)):
        scoring = inspect_scoring_input(str(where), source.bundle.meta, source.cfg.data)
        assert scoring.reader.has_labels is labelled
        assert "no manifest" in scoring.digest_basis
        rows = pa.concat_tables(scoring.reader.read(p) for p in scoring.pieces)
        assert rows.column("id").to_pylist() == list(range(30))  # file 0, rows 0..29
        out = score(loaded, rows, "classifier", 64, scoring.reader.scale, names)
        assert out.column("prediction_name").to_pylist() == expected["prediction"].tolist()
        probs = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))
        want = expected[[f"probability_{n}" for n in names]].to_numpy(np.float32)
        np.testing.assert_allclose(probs, want, rtol=1e-6)
        if labelled:
            assert out.column("label").to_pylist() == [i % 10 for i in range(30)]
        else:
            assert "label" not in out.column_names

    short = tmp_path / "short"
    short.mkdir()
    pq.write_table(pa.table({f"px_{i}": x[:, i] for i in range(60)}), short / "a.parquet")
    with pytest.raises(DataError, match="match 60 columns here, the model takes 64 features"):
        inspect_scoring_input(str(short), source.bundle.meta, source.cfg.data)


def test_a_generator_makes_an_image_per_requested_label(tmp_path):
    from tests.jobs import tiny_generator_bundle

    cfg = load_job_config("digits-gan", [])
    written = tiny_generator_bundle(tmp_path / "generator")
    model = _register_bundle(written, cfg, np.zeros((2, 64), np.float32))
    source = fetch_source_model(model, mlflow.get_tracking_uri(), tmp_path / "dl")
    loaded = installed.load(source.plain)

    wanted = tmp_path / "wanted"
    wanted.mkdir()
    pq.write_table(pa.table({"label": pa.array([3, 3, 7], pa.int64())}), wanted / "a.parquet")
    scoring = inspect_scoring_input(str(wanted), source.bundle.meta, source.cfg.data)
    rows = scoring.reader.read(scoring.pieces[0])
    out = score(loaded, rows, "generator", 64, None, (), seed=5)
    assert out.column_names == ["id", "label", "features"]
    assert out.column("label").to_pylist() == [3, 3, 7]
    images = np.stack(out.column("features").to_numpy(zero_copy_only=False))
    assert images.shape == (3, 64) and images.min() >= 0 and images.max() <= 1
    assert not np.allclose(images[0], images[1])  # each row its own noise
    again = score(loaded, rows, "generator", 64, None, (), seed=5)
    assert again.equals(out)  # the same seed and rows: the same images

    bare = tmp_path / "bare"
    bare.mkdir()
    pq.write_table(pa.table({"class": [1]}), bare / "a.parquet")
    with pytest.raises(DataError, match="a generator model needs an integer column 'label'"):
        inspect_scoring_input(str(bare), source.bundle.meta, source.cfg.data)


@pytest.mark.parametrize("kind", ["classifier", "generator"])
def test_the_pyfunc_runs_on_a_gpu_when_the_process_has_one(monkeypatch, kind):
    """The GPU path, checked on the CPU: an actor given a GPU (or a GPU server) sees one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"loader_{kind}", bundle.PYFUNC_CODE[kind])
    assert spec is not None and spec.loader is not None
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 1)
    assert loader.device(mx) == mx.gpu(0)
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 0)
    assert loader.device(mx) == mx.cpu()

    def broken() -> int:
        raise mx.base.MXNetError("CUDA driver version is insufficient")

    monkeypatch.setattr(mx.context, "num_gpus", broken)
    assert loader.device(mx) == mx.cpu()


def test_rows_training_would_refuse_are_refused_by_scoring(tmp_path):
    """A NaN feature (NaN probabilities, "class 0") and a label a generator cannot make
    are the data's fault: one line naming the row, as in training."""
    features = np.zeros((3, 64), np.float32)
    features[1, 5] = np.nan
    nan_dir, label_dir = tmp_path / "nan", tmp_path / "labels"
    nan_dir.mkdir()
    label_dir.mkdir()
    flat = pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), 64)
    pq.write_table(pa.table({"id": [7, 8, 9], "features": flat}), nan_dir / "a.parquet")
    pq.write_table(pa.table({"id": [7, 8, 9], "label": [1, 99, 2]}), label_dir / "a.parquet")
    data_cfg = load_job_config("digits-fcn").data
    classifier = bundle.BundleMeta.for_data("classifier", 0, INFO)
    scoring = inspect_scoring_input(str(nan_dir), classifier, data_cfg)
    with pytest.raises(DataError, match=r"a\.parquet: row id 8 has a feature value of nan"):
        scoring.reader.read(scoring.pieces[0])
    generator = bundle.BundleMeta.for_data("generator", 0, INFO, latent_dim=8)
    scoring = inspect_scoring_input(str(label_dir), generator, data_cfg)
    with pytest.raises(DataError, match=r"row id 8 has label 99, outside \[0, 10\)"):
        scoring.reader.read(scoring.pieces[0])
