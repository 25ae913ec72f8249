from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.contract import (
    FEATURES,
    ID,
    LABEL,
    MANIFEST,
    check_unique_ids,
    inspect_dataset,
    make_schema,
    read_failure,
)
from pipeline.data.datasets import Dataset, Split
from pipeline.data.ingest import epoch_pieces, open_source
from pipeline.data.prepare import write_dataset
from pipeline.errors import DataError, StorageUnavailableError
from tests.conftest import REPO, run_cli
from tests.datasets import copy_set, first_id, rewrite_file, with_feature, with_id, with_label


def test_prepare_data_round_trip(tmp_path):
    out = tmp_path / "digits"
    proc = run_cli(
        "jobs.prepare_data",
        "--out",
        str(out),
        "--rows-per-file",
        "100",
        "--row-group-size",
        "32",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr

    info = inspect_dataset(str(out))
    assert info.feature_shape == (1, 8, 8) and info.num_classes == 10
    assert {s: i.rows for s, i in info.splits.items()} == {"train": 1439, "val": 179, "test": 179}
    assert len(info.splits["train"].files) == 15  # several files per split

    ids, labels = [], {}
    for split, split_info in info.splits.items():
        for path in split_info.files:
            table = pq.read_table(path)
            assert table.schema.equals(make_schema((1, 8, 8), 10), check_metadata=True)
            assert pq.ParquetFile(path).metadata.row_group(0).num_rows <= 32
            feats = np.stack(table.column(FEATURES).to_numpy(zero_copy_only=False))
            assert feats.shape[1] == 64 and feats.min() >= 0.0 and feats.max() <= 1.0
            ids += table.column(ID).to_pylist()
            labels.setdefault(split, []).extend(table.column(LABEL).to_pylist())
    assert sorted(ids) == list(range(1797))  # splits are disjoint and cover the data set
    for split_labels in labels.values():  # stratified: every class in every split
        assert set(split_labels) == set(range(10))

    manifest = json.loads((out / MANIFEST).read_text())
    for split, entry in manifest["splits"].items():
        for f in entry["files"]:
            data = (out / split / f["path"]).read_bytes()
            assert f["bytes"] == len(data)
            assert f["sha256"] == hashlib.sha256(data).hexdigest()


def test_prepare_data_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert (
            run_cli("jobs.prepare_data", "--out", str(tmp_path / name), timeout=120).returncode == 0
        )
    a = pq.read_table(tmp_path / "a" / "train").column(ID).to_pylist()
    b = pq.read_table(tmp_path / "b" / "train").column(ID).to_pylist()
    assert a == b


def test_prepare_data_refuses_to_overwrite(tmp_path):
    out = str(tmp_path / "out")
    assert run_cli("jobs.prepare_data", "--out", out, timeout=120).returncode == 0
    proc = run_cli("jobs.prepare_data", "--out", out, timeout=120)
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr


def _small(tmp_path, n=20) -> Path:
    rng = np.random.default_rng(0)
    split = Split(rng.random((n, 1, 2, 2), dtype=np.float32), rng.integers(0, 3, n), np.arange(n))
    splits = {"train": split, "val": split, "test": split}
    write_dataset(str(tmp_path / "ds"), Dataset(splits, (1, 2, 2), 3), rows_per_file=8)
    return tmp_path / "ds"


def test_missing_split_is_named(tmp_path):
    ds = _small(tmp_path)
    for f in (ds / "val").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"no Parquet files under val/"):
        inspect_dataset(str(ds))


def test_missing_dataset_tells_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match=r"jobs\.prepare_data"):
        inspect_dataset(str(tmp_path / "nothing"))


def test_corrupt_file_is_named(tmp_path):
    ds = _small(tmp_path)
    victim = sorted((ds / "train").iterdir())[0]
    victim.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=rf"{victim.name}: not a readable Parquet file"):
        inspect_dataset(str(ds))


def test_wrong_schema_is_named(tmp_path):
    ds = _small(tmp_path)
    victim = sorted((ds / "test").iterdir())[0]
    table = pq.read_table(victim)
    bad = table.set_column(2, LABEL, pa.array(table.column(LABEL).to_numpy().astype(np.float64)))
    pq.write_table(bad, victim)
    (ds / MANIFEST).unlink()  # without one every footer is read
    with pytest.raises(DataError, match=r"column 'label' is double, expected int64"):
        inspect_dataset(str(ds), require_manifest=False)


def test_the_manifest_plans_the_row_groups_with_one_footer_read(tmp_path, monkeypatch):
    from pipeline.data import contract

    ds = _small(tmp_path)
    from_footers = inspect_dataset(str(ds), trust_manifest=False)
    reads = []
    footer_facts = contract._footer_facts
    monkeypatch.setattr(contract, "_footer_facts", lambda *a: reads.append(a) or footer_facts(*a))
    planned = inspect_dataset(str(ds))
    assert len(reads) == 1
    assert planned == from_footers
    assert planned.splits["train"].row_groups == ((8,), (8,), (4,))


def test_a_file_changed_after_the_plan_is_refused_by_the_streaming_reader(tmp_path):
    ds = _small(tmp_path)
    info = inspect_dataset(str(ds))  # planned from the manifest
    victim = sorted((ds / "train").iterdir())[-1]  # 4 rows in one row group
    table = pq.read_table(victim)
    pq.write_table(table, victim, row_group_size=3)  # same rows, other row groups
    source = open_source(info, "train", memory=False)
    piece = epoch_pieces(info.splits["train"], 0, 0, shuffle=False)[-1]
    with pytest.raises(DataError, match=rf"{victim.name} \(row group 0\): 3 rows where"):
        source.read(piece)
    bad = table.set_column(2, LABEL, pa.array(table.column(LABEL).to_numpy().astype(np.int32)))
    pq.write_table(bad, victim)
    source = open_source(info, "train", memory=False)
    with pytest.raises(DataError, match=rf"{victim.name}: column 'label' is int32"):
        source.read(piece)


def test_missing_column_is_named(tmp_path):
    ds = _small(tmp_path)
    victim = sorted((ds / "train").iterdir())[0]
    pq.write_table(pq.read_table(victim).drop_columns([FEATURES]), victim)
    with pytest.raises(DataError, match=r"missing column 'features'"):
        inspect_dataset(str(ds))


def test_missing_metadata_is_named(tmp_path):
    ds = _small(tmp_path)
    victim = sorted((ds / "train").iterdir())[0]
    table = pq.read_table(victim)
    pq.write_table(table.replace_schema_metadata(None), victim)
    with pytest.raises(DataError, match=r"mxtrain.feature_shape"):
        inspect_dataset(str(ds))


@pytest.mark.parametrize(
    "names",
    [b"not json", b'["one", "two"]', b'["a", "a", "b"]'],
    ids=["not-json", "too-few", "repeated"],
)
def test_class_names_that_do_not_name_each_class_once_are_one_line(tmp_path, names):
    ds = _small(tmp_path)
    for victim in sorted((ds / "train").iterdir()):
        table = pq.read_table(victim)
        meta = {**table.schema.metadata, b"mxtrain.class_names": names}
        pq.write_table(table.replace_schema_metadata(meta), victim)
    with pytest.raises(DataError) as err:
        inspect_dataset(str(ds), require_manifest=False)
    assert "mxtrain.class_names must be a JSON list of 3 distinct names" in str(err.value)


def test_manifest_mismatch_is_detected(tmp_path):
    ds = _small(tmp_path)
    sorted((ds / "train").iterdir())[-1].unlink()
    with pytest.raises(DataError, match=r"train/ does not match _manifest.json"):
        inspect_dataset(str(ds))


# -- row values, ids, the manifest: refused with one line that names the place -----------------


@pytest.fixture
def digits_copy(digits_uri, tmp_path) -> Path:
    return copy_set(digits_uri, tmp_path / "copy")


def _check_all_rows(root: Path) -> None:
    """What the driver (local, cached) and the workers (streamed) run on every row."""
    info = inspect_dataset(str(root))
    check_unique_ids(info)
    for split in info.splits:
        open_source(info, split, memory=True).close()
        source = open_source(info, split, memory=False)
        for piece in epoch_pieces(info.splits[split], 0, 0, shuffle=False):
            source.read(piece)
        source.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: with_label(t, 5, 10), r"has label 10, outside \[0, 10\)"),
        (lambda t: with_label(t, 5, -1), r"has label -1, outside \[0, 10\)"),
        (lambda t: with_label(t, 5, None), r"1 rows have a null 'label'"),
        (lambda t: with_feature(t, 5, float("nan")), r"has a feature value of nan"),
        (lambda t: with_feature(t, 5, float("inf")), r"has a feature value of inf"),
    ],
    ids=["label-10", "label-negative", "label-null", "feature-nan", "feature-inf"],
)
@pytest.mark.parametrize("memory", [True, False], ids=["cached", "streamed"])
def test_a_bad_value_is_refused_naming_file_and_row(digits_copy, change, message, memory):
    victim = rewrite_file(digits_copy, "train", 2, change)
    bad_id = int(pq.read_table(victim).column(ID)[5].as_py())
    info = inspect_dataset(str(digits_copy))  # footers and manifest agree: passes
    with pytest.raises(DataError, match=message) as err:
        source = open_source(info, "train", memory=memory)  # cached: checked on load
        for piece in epoch_pieces(info.splits["train"], 0, 0, shuffle=False):
            source.read(piece)
    assert victim.name in str(err.value)
    if "null" not in message:
        assert f"row id {bad_id} " in str(err.value)


def test_a_null_inside_the_features_list_is_refused(digits_copy):
    def null_value(table: pa.Table) -> pa.Table:
        feats = table.column(FEATURES).combine_chunks()
        values = feats.flatten().to_pylist()
        values[3] = None
        column = pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), 64)
        return table.set_column(1, table.schema.field(FEATURES), column)

    rewrite_file(digits_copy, "val", 0, null_value)
    with pytest.raises(DataError, match=r"1 null values inside 'features'"):
        _check_all_rows(digits_copy)


@pytest.mark.parametrize("other", ["train", "test"])
def test_an_id_used_twice_is_refused_naming_both_files(digits_copy, other):
    """Within a split and across splits (a test row that is also trained on)."""
    taken = first_id(digits_copy, other)
    victim = rewrite_file(digits_copy, "train", 1, lambda t: with_id(t, 0, taken))
    info = inspect_dataset(str(digits_copy))
    with pytest.raises(DataError, match=rf"id {taken} appears in .* and again in") as err:
        check_unique_ids(info)
    assert f"train/{victim.name}" in str(err.value) and "unique across" in str(err.value)


def test_a_clean_set_passes_every_row_check(digits_copy):
    _check_all_rows(digits_copy)


def test_a_set_without_manifest_is_refused_unless_the_user_opts_out(digits_copy):
    (digits_copy / MANIFEST).unlink()
    with pytest.raises(DataError, match=r"no _manifest.json.*jobs.write_manifest"):
        inspect_dataset(str(digits_copy))
    info = inspect_dataset(str(digits_copy), require_manifest=False)
    assert info.splits["train"].sha256 == ()


def test_a_malformed_manifest_is_one_line(digits_copy):
    (digits_copy / MANIFEST).write_text(json.dumps({"splits": {"train": {"files": 3}}}))
    with pytest.raises(DataError, match=r"not a manifest this pipeline wrote"):
        inspect_dataset(str(digits_copy))


def test_an_overwrite_killed_midway_leaves_a_set_training_refuses(tmp_path):
    """prepare_data --overwrite deletes the manifest first: killed (SIGKILL) once it is gone,
    it leaves a partial set without one, which training refuses."""
    out = tmp_path / "set"
    assert run_cli("jobs.prepare_data", "--out", str(out), timeout=120).returncode == 0
    args = ["--dataset", "synthetic", "--rows", "400000", "--out", str(out), "--overwrite"]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.prepare_data", *args], cwd=REPO)
    try:
        deadline = time.monotonic() + 60

        # Killed once its new train/ has files: a partial set that would otherwise look whole.
        def written() -> int:  # train/ itself is gone for a moment while it is emptied
            try:
                return len(list((out / "train").glob("*.parquet")))
            except FileNotFoundError:
                return 0

        while time.monotonic() < deadline and ((out / MANIFEST).exists() or written() < 3):
            time.sleep(0.005)
        assert proc.poll() is None, "prepare_data finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / MANIFEST).exists()
    with pytest.raises(DataError, match=r"no _manifest.json"):
        inspect_dataset(str(out), splits=("train",))


def test_write_manifest_certifies_users_parquet(digits_copy):
    (digits_copy / MANIFEST).unlink()
    proc = run_cli("jobs.write_manifest", str(digits_copy), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1797 rows in 15" in proc.stdout or "1797 rows" in proc.stdout
    info = inspect_dataset(str(digits_copy))
    assert all(len(s.sha256) == len(s.files) and all(s.sha256) for s in info.splits.values())
    again = run_cli("jobs.write_manifest", str(digits_copy), timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_write_manifest_refuses_a_bad_row_and_writes_nothing(digits_copy):
    rewrite_file(digits_copy, "test", 0, lambda t: with_label(t, 0, 10))
    (digits_copy / MANIFEST).unlink()
    proc = run_cli("jobs.write_manifest", str(digits_copy), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "has label 10" in lines[0] and "Traceback" not in proc.stderr
    assert not (digits_copy / MANIFEST).exists()


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7", "unavailable"),
        ("AWS Error SLOW_DOWN during GetObject operation", "unavailable"),
        ("Couldn't deserialize thrift: don't know what type", "data"),
        ("AWS Error ACCESS_DENIED during GetObject operation", "data"),
    ],
)
def test_storage_that_did_not_answer_is_not_called_a_bad_file(text, kind):
    error = read_failure(OSError(text), "s3://b/train/part-0.parquet")
    if kind == "unavailable":
        assert isinstance(error, StorageUnavailableError) and error.retryable
        assert "replace" not in str(error) and "did not answer" in str(error)
    else:
        assert isinstance(error, DataError) and not error.retryable


def test_write_manifest_hashes_each_file_where_it_was_read(tmp_path):
    """A file is read into one Arrow buffer and hashed there: no Python copy of it (it was
    held twice: the buffer and its bytes)."""
    import tracemalloc

    from pipeline.data.datasets import synthetic_splits
    from pipeline.data.manifest import certify
    from pipeline.data.prepare import write_dataset

    out = tmp_path / "big"
    dataset = synthetic_splits(rows=40_000, feature_shape=(64,), num_classes=4, seed=1)
    write_dataset(str(out), dataset, rows_per_file=40_000, row_group_size=10_000)
    (out / MANIFEST).unlink()
    largest = max(p.stat().st_size for p in out.rglob("*.parquet"))
    assert largest > 5_000_000
    tracemalloc.start()
    try:
        manifest = certify(str(out))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Before: the file again as bytes (its size), beside the row check's temporaries.
    assert peak < largest / 2, f"Python held {peak:,} bytes for a {largest:,}-byte file"
    entry = manifest["splits"]["train"]["files"][0]
    path = next(out.glob("train/*.parquet"))
    assert entry["bytes"] == path.stat().st_size
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_proves_the_ids_unique_once(digits_copy, monkeypatch):
    """prepare_data checks the ids when it writes them and records the proof (bound to every
    file entry); the driver then reads no id column. A file changed since voids the proof,
    and write_manifest always reads: it is where the proof is made."""
    from pipeline.data import contract
    from pipeline.data.contract import IDS_UNIQUE
    from tests.datasets import rewrite_file

    info = inspect_dataset(str(digits_copy))
    assert info.ids_unique
    reads: list[str] = []
    real = contract.pq.read_table

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(contract.pq, "read_table", counting)
    check_unique_ids(info)
    assert reads == []  # trusted: no id column read
    # A test id copied into a training file, the manifest's entry updated by hand.
    test_id = int(pq.read_table(next((digits_copy / "test").glob("*.parquet"))).column(ID)[0])
    rewrite_file(
        digits_copy,
        "train",
        0,
        lambda t: t.set_column(
            0, ID, pa.array([test_id, *t.column(ID).to_pylist()[1:]], pa.int64())
        ),
    )
    changed = inspect_dataset(str(digits_copy))
    assert not changed.ids_unique
    with pytest.raises(DataError, match=f"id {test_id} appears in"):
        check_unique_ids(changed)
    assert reads  # read, this time
    manifest = json.loads((digits_copy / MANIFEST).read_text())
    assert IDS_UNIQUE in manifest  # the stale proof is still there, and no longer trusted
