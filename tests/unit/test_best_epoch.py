"""checkpoint.keep_best: the best epoch's parameters are kept, carried by later checkpoints,
taken up on resume and swapped in at the end; the score Ray Train ranks by; the summary."""

from __future__ import annotations

import math

import pyarrow.fs as pafs
import pytest

from pipeline.config import load_job_config
from pipeline.errors import ConfigError
from pipeline.tracking import summary
from pipeline.train import checkpoint
from pipeline.train.best_epoch import BestEpoch
from pipeline.train.trace import params_digest
from tests.conftest import one_rank_task, random_batches

mx = pytest.importorskip("mxnet")


def _digest(task) -> str:
    return "".join(
        params_digest(o.net._collect_params_with_prefix()) for o in task.networks().values()
    )


def _train(task, seed: int) -> None:
    for b in random_batches(2, seed):
        task.train_step(b, 0.05)
    mx.nd.waitall()


def test_off_by_default_and_the_metric_follows_the_gate():
    assert BestEpoch.from_config(load_job_config("digits-fcn", [])) is None
    best = BestEpoch.from_config(load_job_config("digits-fcn", ["checkpoint.keep_best=2"]))
    assert best is not None and (best.metric, best.mode) == ("val_accuracy", "max")
    cfg = load_job_config(
        "digits-fcn",
        ["checkpoint.keep_best=1", "checkpoint.best_metric=val_loss", "checkpoint.best_mode=min"],
    )
    best = BestEpoch.from_config(cfg)
    assert best is not None and best.score(0.2) > best.score(0.3)
    assert best.score(math.nan) == -math.inf


def test_the_best_epoch_is_swapped_in_at_the_end_and_carried_until_then(hvd):
    task = one_rank_task(hvd, "digits-fcn", seed=0)
    best = BestEpoch("val_accuracy", "max")
    assert best.observe(0, {"val_accuracy": 0.5}, task.networks()) == 0.5
    assert best.for_checkpoint(0) is None  # this checkpoint's own parameters are the best
    _train(task, 1)
    first = best._params
    best.observe(1, {"val_accuracy": 0.9}, task.networks())
    at_best = _digest(task)
    assert best.epoch == 1 and best._params is not first
    _train(task, 2)
    best.observe(2, {"val_accuracy": 0.7}, task.networks())
    assert best.epoch == 1 and best.value == 0.9
    assert best.for_checkpoint(None) is best._params  # a mid-epoch checkpoint carries them
    assert best.for_checkpoint(2) is best._params
    assert _digest(task) != at_best
    assert best.use_best(2, task.networks())
    assert _digest(task) == at_best
    assert best.for_checkpoint(2) is None  # the networks now hold the best


def test_the_last_epoch_being_best_changes_nothing(hvd):
    task = one_rank_task(hvd, "digits-fcn", seed=0)
    best = BestEpoch("val_loss", "min")
    best.observe(0, {"val_loss": 0.5}, task.networks())
    _train(task, 1)
    best.observe(1, {"val_loss": 0.4}, task.networks())
    before = _digest(task)
    assert not best.use_best(1, task.networks()) and _digest(task) == before


def test_a_metric_the_job_does_not_log_is_one_clear_line():
    best = BestEpoch("val_generated_accuracy", "max")
    with pytest.raises(ConfigError) as raised:
        best.observe(0, {"val_accuracy": 0.5, "train_loss": 1.0, "rank/0/step_ms": 3}, {})
    message = str(raised.value)
    assert "'val_generated_accuracy', which this job does not log per epoch" in message
    assert "(it logs train_loss, val_accuracy); set checkpoint.best_metric" in message


def test_a_resumed_group_takes_up_the_best_so_far_from_best_nd(hvd, tmp_path):
    task = one_rank_task(hvd, "digits-cnn", seed=0)
    best = BestEpoch("val_accuracy", "max")
    best.observe(0, {"val_accuracy": 0.9}, task.networks())
    at_best = _digest(task)
    _train(task, 1)
    best.observe(1, {"val_accuracy": 0.8}, task.networks())
    run = tmp_path / "run" / "checkpoint_2026-01-01_00-00-01.000000"
    run.mkdir(parents=True)
    state = {"next_epoch": 2, "next_step": 0, "best": best.state()}
    checkpoint.write(str(run), task.networks(), state, best.for_checkpoint(1))
    last = _digest(task)

    fresh = one_rank_task(hvd, "digits-cnn", seed=1)
    restored = checkpoint.resume(
        pafs.LocalFileSystem(), str(tmp_path / "run"), fresh.networks(), mx.cpu()
    )
    assert restored is not None and _digest(fresh) == last
    again = BestEpoch("val_accuracy", "max")
    again.resume(restored, fresh.networks())
    assert (again.epoch, again.value) == (0, 0.9)
    assert again.use_best(2, fresh.networks()) and _digest(fresh) == at_best
    # Another metric than the record's: not taken up.
    other = BestEpoch("val_loss", "min")
    other.resume(restored, fresh.networks())
    assert other.epoch is None


def test_a_checkpoint_of_the_best_epoch_itself_carries_no_copy(hvd, tmp_path):
    task = one_rank_task(hvd, "digits-fcn", seed=0)
    best = BestEpoch("val_accuracy", "max")
    best.observe(0, {"val_accuracy": 0.9}, task.networks())
    directory = tmp_path / "ckpt"
    directory.mkdir()
    state = {"next_epoch": 1, "next_step": 0, "best": best.state()}
    checkpoint.write(str(directory), task.networks(), state, best.for_checkpoint(0))
    assert not (directory / checkpoint.BEST).exists()
    fresh = one_rank_task(hvd, "digits-fcn", seed=1)
    restored = checkpoint.restore(str(directory), fresh.networks(), mx.cpu())
    again = BestEpoch("val_accuracy", "max")
    again.resume(restored, fresh.networks())
    _train(fresh, 3)
    assert again.epoch == 0 and again.use_best(1, fresh.networks())
    assert _digest(fresh) == _digest(task)


def test_a_best_nd_outside_the_manifest_is_not_read(hvd, tmp_path):
    task = one_rank_task(hvd, "digits-fcn", seed=0)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    checkpoint.write(str(directory), task.networks(), {"next_epoch": 1, "next_step": 0})
    mx.nd.save(str(directory / checkpoint.BEST), checkpoint.snapshot(task.networks()))
    state = checkpoint.restore(str(directory), task.networks(), mx.cpu())
    assert "best_params" not in state


def test_the_run_and_the_version_say_which_epoch_was_registered():
    cfg = load_job_config("digits-fcn", ["checkpoint.keep_best=1"])
    metrics = {"test_accuracy": 0.97, "best_epoch": 3, "best_val_accuracy": 0.981}
    note = summary.run_description(cfg, {}, metrics, "FINISHED")
    assert "Model: epoch 3's, the best, val_accuracy 0.9810 (checkpoint.keep_best)" in note
    assert "epoch 3's" in summary.version_description(cfg, "r1", {}, metrics)
    assert "Model:" not in summary.run_description(cfg, {}, {"test_accuracy": 0.9}, "FINISHED")
