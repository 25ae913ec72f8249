"""Data sets from their original files, and uint8 features: a quarter of the bytes on disk,
over S3 and in memory, the same floats on the device."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import mxnet as mx
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data.contract import FEATURES, inspect_dataset
from pipeline.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    load_fashion_mnist,
    read_idx,
)
from pipeline.data.ingest import ShardReader, open_source
from pipeline.data.prepare import write_dataset
from pipeline.errors import DataError
from tests.conftest import run_cli


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def small_fashion(tmp_path) -> Path:
    """The four idx files, shaped like Fashion-MNIST's, 600 training and 100 test images."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 600), ("test", 100)):
        images, labels = FASHION_MNIST_FILES[split]
        _idx(tmp_path / images, rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / labels, np.arange(n) % 10)
    return tmp_path


def test_idx_files_are_read_as_written(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # float32, not uint8
    with pytest.raises(DataError, match="not an idx file of unsigned bytes"):
        read_idx(tmp_path / "bad")
    data = gzip.decompress((tmp_path / "a.gz").read_bytes())[:-3]
    (tmp_path / "short").write_bytes(data)
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_keeps_the_official_test_set_and_carves_a_stratified_val(small_fashion):
    dataset = load_fashion_mnist(small_fashion, val_rows=50)
    train, val, test = (dataset.splits[s] for s in ("train", "val", "test"))
    assert (len(train.labels), len(val.labels), len(test.labels)) == (550, 50, 100)
    assert np.bincount(val.labels).tolist() == [5] * 10  # stratified
    test_images = read_idx(small_fashion / FASHION_MNIST_FILES["test"][0])
    np.testing.assert_array_equal(test.features[:, 0], test_images)  # in the official order
    ids = np.concatenate([train.ids, val.ids, test.ids])
    assert len(np.unique(ids)) == 700
    assert dataset.feature_shape == (1, 28, 28) and dataset.feature_scale == 1 / 255
    assert train.features.dtype == np.uint8


def test_a_missing_package_is_one_line_that_says_how_to_get_it(tmp_path, monkeypatch):
    from pipeline.data import datasets

    source = tmp_path / "nothing"
    proc = run_cli(
        "jobs.prepare_data", "--dataset", "fashion-mnist", "--source", str(source),
        "--out", str(tmp_path / "out"), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no train-images-idx3-ubyte.gz" in lines[0], lines
    assert "--source" in lines[0]
    # Without --source: the Debian package's folder, and how to install it.
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", source)
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist(source)


def test_uint8_features_are_a_quarter_of_the_bytes_and_the_same_floats(small_fashion, tmp_path):
    dataset = load_fashion_mnist(small_fashion, val_rows=50)
    write_dataset(str(tmp_path / "u8"), dataset, rows_per_file=200, row_group_size=100)
    info = inspect_dataset(str(tmp_path / "u8"))
    assert info.feature_scale == 1 / 255
    assert info.class_names == FASHION_MNIST_CLASSES and info.class_names[7] == "Sneaker"
    first = info.splits["train"].files[0]
    assert str(pq.read_schema(first).field(FEATURES).type) == "fixed_size_list<element: uint8>[784]"

    for memory in (True, False):
        source = open_source(info, "test", memory=memory)
        reader = ShardReader(
            source, info.splits["test"], info.num_features, 0, 1, 0, info.feature_scale
        )
        batch = next(reader.batches(0, 100, device=mx.cpu()))
        assert batch.features.dtype == np.uint8
        expected = dataset.splits["test"].features.reshape(100, -1).astype(np.float32) / 255
        np.testing.assert_allclose(batch.x.asnumpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(batch.float_features(), expected, rtol=1e-6)
        source.close()


def test_fashion_copies_are_varied_real_images_with_ids_of_their_own(small_fashion, tmp_path):
    from pipeline.data.datasets import fashion_copies

    streamed = fashion_copies(small_fashion, seed=0, copies=3, rows_per_file=200, val_rows=50)
    manifest = write_dataset(str(tmp_path / "x3"), streamed, rows_per_file=200)
    info = inspect_dataset(str(tmp_path / "x3"))
    assert {s: i.rows for s, i in info.splits.items()} == {"train": 1650, "val": 50, "test": 100}
    assert info.ids_unique and "ids_unique" in manifest
    table = pq.read_table(tmp_path / "x3" / "train")
    ids = table.column("id").to_numpy()
    images = np.stack(table.column(FEATURES).to_numpy(zero_copy_only=False)).reshape(-1, 28, 28)
    by_id = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    for original_id in ids[ids < 70_000][:20]:
        original, copy = images[by_id[original_id]], images[by_id[original_id + 70_000]]
        padded = np.pad(original, 2)
        variants = [
            v
            for dy in range(5)
            for dx in range(5)
            for v in (
                padded[dy : dy + 28, dx : dx + 28],
                padded[dy : dy + 28, dx : dx + 28][:, ::-1],
            )
        ]
        assert any(np.array_equal(copy, v) for v in variants)  # a shifted or mirrored image
    assert (
        sum(
            not np.array_equal(images[by_id[i]], images[by_id[i + 70_000]])
            for i in ids[:100]
            if i < 70_000
        )
        > 50
    )


def test_a_streamed_set_is_written_holding_only_the_files_in_flight(tmp_path):
    import tracemalloc

    from pipeline.data.datasets import synthetic_files

    rows, shape = 200_000, (64,)  # 51 MB of float32 features
    streamed = synthetic_files(rows, shape, 4, seed=0, rows_per_file=2000)
    tracemalloc.start()
    try:
        manifest = write_dataset(str(tmp_path / "s"), streamed, 2000, 500, threads=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(s["rows"] for s in manifest["splits"].values()) == rows
    assert len(manifest["splits"]["train"]["files"]) == 80 and "ids_unique" in manifest
    # 4 files of 512 KB in flight, their Parquet bytes, 12 bytes an id for the id check.
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MB held to write a 51 MB set"
