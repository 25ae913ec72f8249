"""What a reviewer sees in MLflow, piece by piece: code version, data digests, descriptions,
per-class scores and pictures, system metrics, rank 0's progress lines."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_job_config
from pipeline.data.contract import DatasetInfo, SplitInfo
from pipeline.data.digest import data_digest, split_digest
from pipeline.model import diagnostics
from pipeline.model.diagnostics import ErrorReport
from pipeline.progress import ProgressBar
from pipeline.tracking import code_version, summary


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "add", "code.py")
    _git(repo, "commit", "-q", "-m", "one")
    _git(repo, "remote", "add", "origin", "https://user:s3cret-token@git.example.com/team/x.git")
    return repo


def test_git_state_names_the_commit_and_sees_uncommitted_changes(checkout):
    state = code_version.git_state(checkout)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True
    ).stdout.strip()
    assert state["commit"] == head and state["dirty"] == "false"
    assert state["branch"] == "main"
    assert state["repo_url"] == "https://git.example.com/team/x.git"  # no token
    (checkout / "new.txt").write_text("untracked files are not code changes\n")
    assert code_version.git_state(checkout)["dirty"] == "false"
    (checkout / "code.py").write_text("x = 2\n")
    assert code_version.git_state(checkout)["dirty"] == "true"
    assert code_version.git_state(checkout.parent) == {}  # not a checkout


def test_a_submitted_job_takes_the_submitters_git_state(checkout, monkeypatch):
    handed = code_version.submit_env(checkout)
    assert set(handed) == {"MXTRAIN_GIT_COMMIT", "MXTRAIN_GIT_DIRTY", "MXTRAIN_GIT_BRANCH"} | {
        "MXTRAIN_GIT_REPO_URL"
    }
    for name, value in handed.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a job's driver
    tags = code_version.source_tags("jobs.train")
    assert tags["mlflow.source.git.commit"] == handed["MXTRAIN_GIT_COMMIT"]
    assert tags["mxtrain.git.dirty"] == "false"
    assert tags["mlflow.source.type"] == "JOB" and tags["mlflow.source.name"] == "jobs.train"
    assert tags["mlflow.user"] and tags["mxtrain.version"]
    assert "s3cret" not in json.dumps(tags)


def test_this_checkout_is_recorded_when_run_from_it(monkeypatch):
    for name in code_version.ENV_NAMES.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    tags = code_version.source_tags("jobs.train")
    assert tags["mlflow.source.type"] == "LOCAL"
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert tags["mxtrain.git.dirty"] in ("true", "false")


def _info(sha: str = "a" * 64) -> DatasetInfo:
    splits = {
        "train": SplitInfo(("/d/train/part-0.parquet",), 100, sha256=(sha,), row_groups=((100,),)),
        "val": SplitInfo(("/d/val/part-0.parquet",), 10, sha256=("b" * 64,), row_groups=((10,),)),
        "test": SplitInfo(("/d/test/part-0.parquet",), 10, sha256=("c" * 64,), row_groups=((10,),)),
    }
    return DatasetInfo("s3://bucket/d", (1, 8, 8), 10, splits)


def test_digests_change_with_the_bytes_and_only_then():
    same, other = _info(), _info(sha="f" * 64)
    assert split_digest(same, "train") == split_digest(_info(), "train")
    assert split_digest(same, "train") != split_digest(other, "train")
    assert split_digest(same, "val") == split_digest(other, "val")
    assert data_digest(same) != data_digest(other)
    assert len(data_digest(same)) == 64


def test_per_class_scores_match_scikit_learn():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 500)
    pred = np.where(rng.random(500) < 0.7, true, rng.integers(0, 4, 500))
    pred[pred == 3] = 2  # class 3 never predicted: precision 0, not NaN
    matrix = confusion_matrix(true, pred, labels=range(4))
    report = diagnostics.per_class(matrix, ["a", "b", "c", "d/e"])
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=range(4), zero_division=0)
    got = report["classes"]
    np.testing.assert_allclose([c["precision"] for c in got], p)
    np.testing.assert_allclose([c["recall"] for c in got], r)
    np.testing.assert_allclose([c["f1"] for c in got], f)
    assert [c["support"] for c in got] == list(s)
    assert report["macro_f1"] == pytest.approx(f.mean())
    assert report["accuracy"] == pytest.approx(np.mean(true == pred))
    metrics = diagnostics.per_class_metrics(report)
    assert metrics["test_f1/3_d_e"] == 0.0 and metrics["test_recall/0_a"] == pytest.approx(r[0])
    assert metrics["test_macro_f1"] == pytest.approx(f.mean())
    assert len(metrics) == 1 + 3 * 4


def test_error_pictures_that_cannot_be_drawn_are_a_warning(monkeypatch, capsys):
    """Rank 0 draws them in a thread while it reports the final checkpoint: a failure there
    is one warning line, the scores still land, and the thread ends (the job goes on)."""
    from types import SimpleNamespace

    from pipeline.train import loop

    logged: list[tuple[str, str]] = []
    logger = SimpleNamespace(
        log_artifact=lambda path, where: logged.append((Path(path).name, where))
    )

    def broken(*_args):
        raise RuntimeError("no font")

    monkeypatch.setattr(diagnostics, "confusion_png", broken)
    matrix = np.array([[8, 2], [1, 9]])
    info = SimpleNamespace(class_names=["a", "b"], feature_shape=(1, 8, 8))
    report = diagnostics.per_class(matrix, info.class_names)
    loop._log_error_pictures(logger, ErrorReport(matrix), report, info)
    assert logged == [("per_class.json", "errors")]
    out = capsys.readouterr().out
    assert "warning: the test split's error pictures were not drawn: no font" in out


def test_confusion_matrix_and_misclassified_images_are_pngs(tmp_path):
    matrix = np.array([[8, 2], [1, 9]])
    diagnostics.confusion_png(matrix, [], str(tmp_path / "cm.png"))
    report = ErrorReport(matrix)
    report.add_misclassified(np.random.rand(3, 64), [0, 0, 1], [1, 1, 0], [5, 6, 7])
    assert diagnostics.misclassified_png(
        report, ["zero", "one"], (1, 8, 8), str(tmp_path / "m.png")
    )
    for name in ("cm.png", "m.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flat = ErrorReport(matrix)
    flat.add_misclassified(np.random.rand(1, 20), [0], [1], [0])
    assert not diagnostics.misclassified_png(flat, [], (20,), str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()
    many = ErrorReport(matrix)
    for _ in range(5):
        many.add_misclassified(np.random.rand(10, 64), [0] * 10, [1] * 10, range(10))
    assert len(many.true) == diagnostics.MAX_EXAMPLES and many.full


def test_the_run_and_version_descriptions_say_what_a_reviewer_needs():
    cfg = load_job_config("digits-cnn", [])
    tags = {
        "mxtrain.data_uri": "s3://bucket/digits",
        "mxtrain.data_digest": "d" * 64,
        "mxtrain.restarts": "1",
        "mlflow.source.git.commit": "abc123" * 6,
        "mxtrain.git.dirty": "true",
        "mxtrain.version": "0.1.0",
    }
    metrics = {"test_accuracy": 0.9721, "val_accuracy": 0.98, "train_loss": 0.1, "epoch": 9.0}
    note = summary.run_description(
        cfg,
        tags,
        metrics,
        "FINISHED",
        "models:/digits-cnn/3 (alias not moved)",
        "test_accuracy 0.9721 < tracking.gate_min 0.98",
    )
    for part in (
        "digits-cnn",
        "FINISHED",
        "s3://bucket/digits",
        "dddddddddddd",
        "2 workers",
        "1 restarts",
        "| test_accuracy | 0.9721 | >= 0.98 (missed) |",
        "Quality gate: test_accuracy 0.9721 < tracking.gate_min 0.98",
        "models:/digits-cnn/3",
        "abc123abc123 with uncommitted changes",
    ):
        assert part in note, part
    assert "| epoch |" not in note  # not a headline metric
    version_tags = summary.version_tags("run1", tags, metrics)
    assert version_tags["mxtrain.source_run"] == "run1"
    assert version_tags["mxtrain.data_digest"] == "d" * 64
    assert version_tags["mxtrain.git.commit"] == "abc123" * 6
    assert version_tags["mxtrain.metric.test_accuracy"] == "0.9721"
    text = summary.version_description(cfg, "run1", tags, metrics)
    assert "run1" in text and "test_accuracy 0.9721" in text and "abc123abc123" in text


def test_rank_zeros_progress_lines_in_samples_per_second(monkeypatch):
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = ProgressBar(
        100, "epoch   3/20", unit="steps", out=out, every_s=10, rate_unit="samples", per_unit=128
    )
    for _ in range(25):
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # every 10 s of the fake clock, not every step
    assert lines[0].startswith("epoch   3/20 [")
    assert "10/100 steps" in lines[0] and "128 samples/s" in lines[0] and "ETA 1:30" in lines[0]


def test_the_test_evaluation_counts_every_row_and_keeps_real_mistakes(hvd, digits_uri):
    import mxnet as mx
    import pyarrow.parquet as pq

    from pipeline.data.contract import inspect_dataset
    from pipeline.data.ingest import ShardReader, open_source
    from pipeline.train.context import WorkerContext
    from pipeline.train.tasks import make_task

    cfg = load_job_config("digits-fcn", [f"data.uri={digits_uri}"])
    info = inspect_dataset(digits_uri)
    mx.random.seed(3)
    task = make_task(WorkerContext(cfg, info, mx.cpu(), hvd, 1, 0))  # untrained: many errors
    source = open_source(info, "test", memory=True)
    reader = ShardReader(source, info.splits["test"], info.num_features, 0, 1, 0)
    metrics = task.evaluate(reader, "test", "t")
    report = task.errors()
    source.close()

    table = pq.read_table(list(info.splits["test"].files))
    x = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    labels = table.column("label").to_numpy()
    ids = table.column("id").to_numpy()
    predicted = task.model.net(mx.nd.array(x)).argmax(axis=1).asnumpy().astype(int)
    expected = np.zeros((10, 10), dtype=np.int64)
    np.add.at(expected, (labels, predicted), 1)
    np.testing.assert_array_equal(report.matrix, expected)
    assert metrics["test_accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert 0 < len(report.true) <= diagnostics.MAX_EXAMPLES
    row_of = {int(i): n for n, i in enumerate(ids)}
    for features, true, guess, i in zip(
        report.features, report.true, report.predicted, report.ids, strict=True
    ):
        n = row_of[i]
        assert true == labels[n] != guess == predicted[n]
        np.testing.assert_allclose(features, x[n], rtol=1e-6)
