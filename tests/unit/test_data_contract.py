from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.contract import FEATURES, ID, LABEL, MANIFEST, inspect_dataset, make_schema
from pipeline.data.prepare import Split, write_dataset
from pipeline.errors import DataError
from tests.conftest import run_cli


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
    write_dataset(
        str(tmp_path / "ds"),
        {"train": split, "val": split, "test": split},
        (1, 2, 2),
        3,
        rows_per_file=8,
    )
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
    with pytest.raises(DataError, match=r"column 'label' is double, expected int64"):
        inspect_dataset(str(ds))


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


def test_manifest_mismatch_is_detected(tmp_path):
    ds = _small(tmp_path)
    sorted((ds / "train").iterdir())[-1].unlink()
    with pytest.raises(DataError, match=r"train/ does not match _manifest.json"):
        inspect_dataset(str(ds))
