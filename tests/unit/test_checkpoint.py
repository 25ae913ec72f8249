"""Checkpoints: exact continuation, fallback past a corrupt or unfinished one, no pickle."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline.train import checkpoint
from pipeline.train.trace import params_digest
from tests.conftest import one_rank_task, random_batches

mx = pytest.importorskip("mxnet")


def _train(task, batches) -> None:
    task.start_epoch(5)  # same noise on both sides
    mx.random.seed(7)  # same dropout masks
    for b in batches:
        task.train_step(b, 0.01)
    mx.nd.waitall()


def _digest(task) -> str:
    """By structural names: Gluon's own names differ between two instances of a model."""
    return "".join(
        params_digest(o.net._collect_params_with_prefix()) for o in task.networks().values()
    )


def _write(task, directory, **state) -> str:
    os.makedirs(directory, exist_ok=True)
    checkpoint.write(str(directory), task.networks(), {"next_epoch": 1, "next_step": 0, **state})
    return str(directory)


#: Two checkpoints of one run, by Ray Train's naming: the names sort by age.
OLDER, NEWEST = "checkpoint_2026-01-01_00-00-01.000000", "checkpoint_2026-01-01_00-00-02.000000"


def _name_in_manifest(directory, name: str, sha256: str = "0" * 64) -> None:
    """Add ``name`` to a checkpoint's manifest, as someone with write access could."""
    path = Path(directory, checkpoint.MANIFEST)
    manifest = json.loads(path.read_text())
    manifest["files"][name] = sha256
    path.write_text(json.dumps(manifest))


def _downloads_nested_in(tmp_path, monkeypatch) -> None:
    """Temporary folders three levels below ``tmp_path``: a download that escapes its folder
    through ``../..`` lands inside ``tmp_path``, where a test can look for it."""
    import tempfile

    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))


def _resume_fresh(hvd, filesystem, run_dir: str, recipe: str = "digits-cnn"):
    """A new task (other initial weights) resumed from the run: (task, state, warnings)."""
    fresh = one_rank_task(hvd, recipe, seed=1)
    warnings: list[str] = []
    state = checkpoint.resume(filesystem, run_dir, fresh.networks(), mx.cpu(), warnings.append)
    return fresh, state, warnings


@pytest.mark.parametrize("recipe", ["digits-cnn", "digits-fcn", "digits-gan"])
def test_restored_training_continues_exactly(hvd, tmp_path, recipe):
    """Parameters and optimizer state (Adam moments and counts, SGD momentum) both come back:
    a fresh task restored from the checkpoint trains on to the same bits."""
    first, then = random_batches(3, 0), random_batches(3, 1)
    original = one_rank_task(hvd, recipe, seed=0)
    _train(original, first)
    _write(original, tmp_path / "ckpt")
    _train(original, then)

    restored = one_rank_task(hvd, recipe, seed=1)  # different initial weights
    assert _digest(restored) != _digest(original)
    state = checkpoint.restore(str(tmp_path / "ckpt"), restored.networks(), mx.cpu())
    assert state["next_epoch"] == 1
    _train(restored, then)
    assert _digest(restored) == _digest(original)


def _flip(path, at: int = 200) -> None:
    path = Path(path)
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(hvd, tmp_path):
    task = one_rank_task(hvd, "digits-cnn", seed=0)
    _write(task, tmp_path / "run" / OLDER, next_epoch=1)
    older = _digest(task)
    _train(task, random_batches(2, 3))
    newest = _write(task, tmp_path / "run" / NEWEST, next_epoch=2)
    _flip(os.path.join(newest, checkpoint.PARAMS))

    fresh, state, warnings = _resume_fresh(hvd, pafs.LocalFileSystem(), str(tmp_path / "run"))
    assert state is not None and state["next_epoch"] == 1
    assert _digest(fresh) == older
    assert len(warnings) == 1
    assert "00-00-02" in warnings[0] and "SHA-256 does not match" in warnings[0]


def test_unfinished_checkpoint_is_skipped_and_none_means_start_fresh(hvd, tmp_path):
    task = one_rank_task(hvd, "digits-fcn", seed=0)
    only = _write(task, tmp_path / "run" / "checkpoint_2026-01-01_00-00-01.000000")
    os.remove(os.path.join(only, checkpoint.MANIFEST))
    warnings: list[str] = []
    before = _digest(task)
    state = checkpoint.resume(
        pafs.LocalFileSystem(), str(tmp_path / "run"), task.networks(), mx.cpu(), warnings.append
    )
    assert state is None and _digest(task) == before
    assert len(warnings) == 1 and "no MANIFEST.json" in warnings[0]
    assert checkpoint.resume(pafs.LocalFileSystem(), str(tmp_path / "none"), {}, mx.cpu()) is None


def _rewrite_with_valid_checksum(directory: str, name: str, data: bytes) -> None:
    """Replace a checkpoint file and fix its checksum, as a buggy writer would leave it."""
    import hashlib

    Path(directory, name).write_bytes(data)
    _name_in_manifest(directory, name, hashlib.sha256(data).hexdigest())


def _state_without_optimizers(directory: str) -> bytes:
    state = json.loads(Path(directory, checkpoint.STATE).read_text())
    del state["optimizers"]
    return json.dumps(state).encode()


def _truncated_params(directory: str) -> bytes:
    return Path(directory, checkpoint.PARAMS).read_bytes()[:-100]  # MXNet header intact


@pytest.mark.parametrize(
    "breakage", [_state_without_optimizers, _truncated_params], ids=["missing-key", "mxnet-parse"]
)
def test_a_checkpoint_that_verifies_but_cannot_be_read_falls_back(hvd, tmp_path, breakage):
    """Checksums right, content unusable (a missing key, an array MXNet cannot parse): the
    previous checkpoint is used, and nothing of the broken one reaches the networks."""
    task = one_rank_task(hvd, "digits-cnn", seed=0)
    _write(task, tmp_path / "run" / OLDER, next_epoch=1)
    older = _digest(task)
    _train(task, random_batches(2, 3))
    newest = _write(task, tmp_path / "run" / NEWEST, next_epoch=2)
    name = checkpoint.STATE if breakage is _state_without_optimizers else checkpoint.PARAMS
    _rewrite_with_valid_checksum(newest, name, breakage(newest))
    checkpoint.verify(newest)  # the manifest vouches for it

    fresh, state, warnings = _resume_fresh(hvd, pafs.LocalFileSystem(), str(tmp_path / "run"))
    assert state is not None and state["next_epoch"] == 1
    assert _digest(fresh) == older
    assert len(warnings) == 1 and "00-00-02" in warnings[0], warnings

    # With no older one to fall back to, the networks keep their own fresh weights.
    alone = tmp_path / "alone" / NEWEST
    Path(alone).parent.mkdir()
    os.rename(newest, alone)
    untouched = one_rank_task(hvd, "digits-cnn", seed=1)
    before = _digest(untouched)
    assert (
        checkpoint.resume(
            pafs.LocalFileSystem(),
            str(alone.parent),
            untouched.networks(),
            mx.cpu(),
            lambda _m: None,
        )
        is None
    )
    assert _digest(untouched) == before


def test_files_reach_the_disk_before_the_manifest_names_them(hvd, tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    directory = _write(one_rank_task(hvd, "digits-fcn", seed=0), tmp_path / "ckpt")
    names = [Path(p).name for p in synced]
    data_files = {checkpoint.PARAMS, checkpoint.OPTIMIZER, checkpoint.STATE}
    manifest_at = names.index(checkpoint.MANIFEST + ".tmp")
    assert data_files <= set(names[:manifest_at])
    assert names[-1] == Path(directory).name  # the folder itself, after the rename


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("victim", [checkpoint.OPTIMIZER, checkpoint.PARAMS, checkpoint.STATE])
def test_a_pickle_in_a_checkpoint_is_refused_not_executed(hvd, tmp_path, victim):
    task = one_rank_task(hvd, "digits-cnn", seed=0)
    ckpt = _write(task, tmp_path / "ckpt")
    marker = tmp_path / "executed"
    with open(os.path.join(ckpt, victim), "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    # The attacker can rewrite the manifest too: the checksum alone must not be the guard.
    manifest_path = Path(ckpt, checkpoint.MANIFEST)
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][victim] = checkpoint._sha256(os.path.join(ckpt, victim))
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(checkpoint.CheckpointError, match="pickle"):
        checkpoint.restore(ckpt, task.networks(), mx.cpu())
    assert not marker.exists()


def test_no_checkpoint_file_is_a_pickle(hvd, tmp_path):
    task = one_rank_task(hvd, "digits-gan", seed=0)
    ckpt = _write(task, tmp_path / "ckpt")
    for name in os.listdir(ckpt):
        with open(os.path.join(ckpt, name), "rb") as f:
            assert f.read(1) != b"\x80", name
    assert set(json.loads(Path(ckpt, checkpoint.MANIFEST).read_text())["files"]) == {
        checkpoint.PARAMS,
        checkpoint.OPTIMIZER,
        checkpoint.STATE,
    }


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/outside.bin", "sub/inner.bin", ".."])
def test_a_manifest_naming_a_path_is_refused_and_resume_falls_back(hvd, tmp_path, name):
    task = one_rank_task(hvd, "digits-cnn", seed=0)
    run = tmp_path / "run"
    _write(task, run / OLDER, next_epoch=1)
    newest = _write(task, run / NEWEST, next_epoch=2)
    _name_in_manifest(newest, name)

    with pytest.raises(checkpoint.CheckpointError, match="not a file name"):
        checkpoint.verify(newest)
    _, state, warnings = _resume_fresh(hvd, pafs.LocalFileSystem(), str(run))
    assert state is not None and state["next_epoch"] == 1
    assert len(warnings) == 1 and "not a file name" in warnings[0]


def test_a_planted_key_outside_the_manifest_is_never_written(hvd, tmp_path, monkeypatch):
    """Object stores accept keys like ``checkpoint_X/../../escaped.bin`` (AWS S3 does); turned
    into a local path, such a key writes outside the download folder. Here an in-memory
    filesystem (fsspec, which keeps such keys as S3 does) holds the run."""
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    task = one_rank_task(hvd, "digits-cnn", seed=0)
    _write(task, tmp_path / OLDER, next_epoch=1)
    _write(task, tmp_path / NEWEST, next_epoch=2)
    _name_in_manifest(tmp_path / NEWEST, "../../escaped.bin")
    memory = fsspec.filesystem("memory")
    run = f"/bucket-{tmp_path.name}/run"
    for name in (OLDER, NEWEST):
        for file in os.listdir(tmp_path / name):
            memory.pipe(f"{run}/{name}/{file}", (tmp_path / name / file).read_bytes())
    memory.pipe(f"{run}/{NEWEST}/../../escaped.bin", b"written where a key pointed")

    _downloads_nested_in(tmp_path, monkeypatch)
    _, state, warnings = _resume_fresh(hvd, PyFileSystem(FSSpecHandler(memory)), run)
    assert state is not None and state["next_epoch"] == 1
    assert len(warnings) == 1 and "not a file name" in warnings[0]
    assert list(tmp_path.rglob("escaped.bin")) == []


@pytest.mark.parametrize("torn", [b"", b'{"checkpoint_results": [', b"\xff\xfe"])
def test_a_torn_ray_train_snapshot_is_dropped_and_a_whole_one_kept(tmp_path, torn):
    fs = pafs.LocalFileSystem()
    snapshot = tmp_path / checkpoint.TRAIN_SNAPSHOT
    assert not checkpoint.drop_torn_train_snapshot(fs, str(tmp_path))  # none: nothing to do
    snapshot.write_text('{"ray_version": "2.60.0"}')
    assert not checkpoint.drop_torn_train_snapshot(fs, str(tmp_path))
    assert snapshot.exists()
    snapshot.write_bytes(torn)
    assert checkpoint.drop_torn_train_snapshot(fs, str(tmp_path))
    assert not snapshot.exists()
