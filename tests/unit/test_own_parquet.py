"""The user's own Parquet (pandas part files, Hugging Face image sets), read through the column
keys: splits, ids, classes and pixels as the workers' readers produce them, and every way such
a set can be wrong refused in one line."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_job_config
from pipeline.data.columns import PIXEL_SCALE
from pipeline.data.contract import FEATURES, ID, LABEL
from pipeline.data.ingest import epoch_pieces, open_source
from pipeline.data.own_parquet import inspect_own_parquet
from pipeline.errors import ConfigError, DataError
from tests.datasets import (
    DIGIT_NAMES,
    HF_IMAGE,
    digit_images,
    digits_as_hf_images,
    digits_as_pandas,
    png,
)

TABULAR = ["data.label_column=digit", "data.feature_columns=pixel_*"]
IMAGES = ["data.label_column=label", "data.image_column=image"]


def inspect(uri, keys: list[str], seed: int = 0):
    cfg = load_job_config(None, [f"data.uri={uri}", f"seed={seed}", *keys])
    return inspect_own_parquet(cfg.data, cfg.seed)


def rows_of(info, split: str, memory: bool = True) -> pa.Table:
    """Every row of ``split`` as the workers' reader maps it (contract columns)."""
    source = open_source(info, split, memory)
    try:
        pieces = epoch_pieces(info.splits[split], 0, 0, shuffle=False)
        return pa.concat_tables(source.read_in_order(pieces))
    finally:
        source.close()


@pytest.fixture(scope="module")
def pandas_set(tmp_path_factory):
    return digits_as_pandas(tmp_path_factory.mktemp("own") / "pandas")


@pytest.fixture(scope="module")
def hf_set(tmp_path_factory):
    return digits_as_hf_images(tmp_path_factory.mktemp("own") / "hf")


def test_pandas_part_files_map_to_the_contract_with_named_classes(pandas_set):
    info = inspect(pandas_set, TABULAR)
    assert info.feature_shape == (64,) and info.feature_scale is None
    assert info.class_names == tuple(sorted(DIGIT_NAMES))
    assert info.num_classes == 10
    # Every row lands in exactly one split; the derived ids are unique.
    splits = {s: rows_of(info, s) for s in ("train", "val", "test")}
    ids = np.concatenate([t.column(ID).to_numpy() for t in splits.values()])
    assert len(ids) == len(set(ids.tolist())) == 1797
    assert 0.07 < splits["val"].num_rows / 1797 < 0.13
    assert 0.07 < splits["test"].num_rows / 1797 < 0.13
    # A row's label index names the word the file holds for it; its features are its pixels.
    frame = pq.read_table(pandas_set).to_pandas()
    numbers = sorted(p.name for p in pandas_set.glob("*.parquet"))
    files = [pq.read_table(pandas_set / n).to_pandas() for n in numbers]
    table = splits["train"]
    columns = info.mapping.encoding.columns
    assert any(c.scale != 1.0 for c in columns)
    for row in (0, 500, table.num_rows - 1):
        file, index = divmod(int(table.column(ID)[row].as_py()), 1 << 32)
        original = files[file].iloc[index]
        assert info.class_names[table.column(LABEL)[row].as_py()] == original["digit"]
        pixels = np.asarray(table.column(FEATURES)[row].as_py(), np.float32)
        # Standardized (data.normalize, on by default) with the training split's statistics.
        raw = original[[f"pixel_{i:02d}" for i in range(64)]].to_numpy(np.float64)
        expected = [(v - c.shift) * c.scale for v, c in zip(raw, columns, strict=True)]
        np.testing.assert_allclose(pixels, np.asarray(expected, np.float32), rtol=1e-5, atol=1e-6)
    assert len(frame) == 1797


def test_the_draw_depends_on_the_seed_and_not_on_the_reader(pandas_set):
    first = inspect(pandas_set, TABULAR, seed=0)
    again = inspect(pandas_set, TABULAR, seed=0)
    other = inspect(pandas_set, TABULAR, seed=1)
    test_ids = set(rows_of(first, "test").column(ID).to_pylist())
    assert test_ids == set(rows_of(again, "test", memory=False).column(ID).to_pylist())
    assert test_ids != set(rows_of(other, "test").column(ID).to_pylist())


def test_streamed_and_cached_reads_agree_row_for_row(pandas_set):
    """Row groups of 200 rows hold rows of every split: the stream reader filters each group
    by the same selection the driver counted."""
    info = inspect(pandas_set, TABULAR)
    for split in ("train", "val", "test"):
        assert rows_of(info, split, memory=False).equals(rows_of(info, split, memory=True))
        assert rows_of(info, split).num_rows == info.splits[split].rows


def test_a_split_column_decides_the_splits(tmp_path):
    root = digits_as_pandas(tmp_path / "set", split_column=True)
    info = inspect(root, [*TABULAR, "data.split_column=subset"])
    subset = pq.read_table(root, columns=["subset"]).column("subset").to_pylist()
    assert info.splits["train"].rows == subset.count("train")
    assert info.splits["val"].rows == subset.count("validation")
    assert info.splits["test"].rows == subset.count("test")
    assert "split by column 'subset'" in info.mapping.layout


def test_hf_image_structs_decode_to_the_stored_pixels(hf_set):
    info = inspect(hf_set, IMAGES)
    assert info.feature_shape == (1, 8, 8) and info.feature_scale == PIXEL_SCALE
    assert info.class_names == () and info.num_classes == 10
    assert info.splits["test"].rows == 300  # the test/ folder as it is
    assert info.splits["train"].rows + info.splits["val"].rows == 1497  # val drawn from train/
    images, labels = digit_images()
    table = rows_of(info, "test")
    for row in (0, 299):
        index = int(table.column(ID)[row].as_py()) & 0xFFFFFFFF
        pixels = np.asarray(table.column(FEATURES)[row].as_py(), np.uint8).reshape(8, 8)
        np.testing.assert_array_equal(pixels, images[1497 + index])
        assert table.column(LABEL)[row].as_py() == labels[1497 + index]


def test_images_are_brought_to_the_configured_size_and_channels(hf_set):
    info = inspect(hf_set, [*IMAGES, "data.image_size=[16, 12]", "data.image_channels=3"])
    assert info.feature_shape == (3, 16, 12)
    pixels = np.asarray(rows_of(info, "test").column(FEATURES)[0].as_py()).reshape(3, 16, 12)
    np.testing.assert_array_equal(pixels[0], pixels[1])  # grey to RGB: equal channels
    assert pixels.max() > 0


def _rewrite(root, name: str, change) -> None:
    path = next(root.rglob(name))
    pq.write_table(change(pq.read_table(path)), path)


def _set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


@pytest.mark.parametrize(
    ("keys", "change", "expected"),
    [
        (
            ["data.label_column=digits", "data.feature_columns=pixel_*"],
            None,
            "no column 'digits' (data.label_column); did you mean 'digit'?",
        ),
        (
            ["data.label_column=digit", "data.feature_columns=pxl_*"],
            None,
            "pattern 'pxl_*' matches no column",
        ),
        (
            ["data.label_column=pixel_00", "data.feature_columns=pixel_01"],
            None,
            "column 'pixel_00' (data.label_column) is double, expected integers or strings",
        ),
        (
            TABULAR,
            lambda t: _set_column(t, "digit", pa.array([None, *t["digit"].to_pylist()[1:]])),
            "1 rows have a null label ('digit')",
        ),
        (
            [*TABULAR, "data.val_fraction=0"],
            None,
            "the val split has no rows (raise data.val_fraction)",
        ),
        (
            [*TABULAR, "data.id_column=pixel_00"],
            None,
            "column 'pixel_00' (data.id_column) is double, expected integers",
        ),
        (
            [*TABULAR, "data.id_column=n"],
            lambda t: t.append_column("n", pa.array(np.zeros(t.num_rows, np.int64))),
            "id 0 ('n') appears in",
        ),
    ],
    ids=["missing", "pattern", "label-type", "null-label", "empty-val", "id-type", "id-repeat"],
)
def test_a_bad_tabular_set_is_one_line(tmp_path, keys, change, expected):
    root = digits_as_pandas(tmp_path / "set", files=1)
    if change is not None:
        _rewrite(root, "part-00000-c000.snappy.parquet", change)
    with pytest.raises(DataError) as err:
        inspect(root, keys)
    assert expected in str(err.value) and "\n" not in str(err.value), err.value


def test_unknown_split_names_and_unseen_classes_are_refused(tmp_path):
    root = digits_as_pandas(tmp_path / "set", split_column=True, files=1)
    keys = [*TABULAR, "data.split_column=subset"]
    _rewrite(
        root, "*.parquet", lambda t: _set_column(t, "subset", pa.array(["holdout"] * t.num_rows))
    )
    with pytest.raises(DataError, match="split column 'subset' holds 'holdout'"):
        inspect(root, keys)

    def only_in_test(t: pa.Table) -> pa.Table:
        digit = t["digit"].to_pylist()
        subset = ["train"] * (t.num_rows - 2) + ["validation", "test"]
        digit[-1] = "eleven"
        return _set_column(_set_column(t, "subset", pa.array(subset)), "digit", pa.array(digit))

    _rewrite(root, "*.parquet", only_in_test)
    with pytest.raises(DataError, match="label 'eleven' of the test split has no training rows"):
        inspect(root, [*keys])


def test_bad_image_sets_are_one_line(tmp_path):
    root = digits_as_hf_images(tmp_path / "set")
    stray = root / "extra.parquet"
    pq.write_table(pq.read_table(root / "test"), stray)
    with pytest.raises(DataError, match="no Parquet beside them"):
        inspect(root, IMAGES)
    stray.unlink()
    with pytest.raises(DataError, match="nothing to split"):
        inspect(root, [*IMAGES, "data.split_column=label"])
    with pytest.raises(DataError, match=r"'label' \(data.image_column\) is int64, expected binary"):
        inspect(root, ["data.label_column=label", "data.image_column=label"])

    # A path without bytes is never followed; bytes that are not PNG/JPEG are refused by the
    # reader that decodes them.
    def path_only(t: pa.Table) -> pa.Table:
        rows = [{"bytes": None, "path": "/etc/passwd"}, *t["image"].to_pylist()[1:]]
        return _set_column(t, "image", pa.array(rows, HF_IMAGE))

    _rewrite(root, "train-*.parquet", path_only)
    with pytest.raises(DataError, match="row 0 of image column 'image' has no image bytes"):
        rows_of(inspect(root, IMAGES), "train")

    def not_png(t: pa.Table) -> pa.Table:
        rows = t["image"].to_pylist()
        rows[5] = {"bytes": b"GIF89a....", "path": None}
        return _set_column(t, "image", pa.array(rows, HF_IMAGE))

    root = digits_as_hf_images(tmp_path / "other")
    _rewrite(root, "test-*.parquet", not_png)
    with pytest.raises(DataError, match="row 5: not a PNG or JPEG image"):
        rows_of(inspect(root, IMAGES), "test", memory=False)


def test_an_image_too_large_to_decode_is_refused_unread(tmp_path):
    from pipeline.data import images

    huge = png(np.zeros((4100, 4100), np.uint8))  # 16.8M pixels, 17 KB of PNG
    assert len(huge) < 100_000
    with pytest.raises(DataError, match="larger than"):
        images.decode(pa.array([huge], pa.binary()), (1, 8, 8), "resize", "f.parquet")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only its signature, IHDR and an empty IDAT: ~60 bytes claiming any size."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_any_image_bytes_give_pixels_or_one_data_error(tmp_path):
    """A PNG declaring 20000x20000 (Pillow's own bomb error came first) and mutated PNGs
    (Pillow raises SyntaxError on some) end as DataError, never another
    exception: scoring would print a traceback, training would retry the worker."""
    from pipeline.data import images

    bomb = _png_header(20000, 20000)
    assert len(bomb) < 100
    with pytest.raises(DataError, match="more than the 16,777,216 pixels"):
        images.decode(pa.array([bomb], pa.binary()), (1, 8, 8), "resize", "f.parquet")
    outcomes = {"decoded": 0, "refused": 0}
    # Seeded: 3 of these 3,000 mutations made Pillow raise SyntaxError. (PNG only: saving a
    # JPEG here breaks once MXNet, which links its own libjpeg, is loaded in the process.)
    original = png(digit_images()[0][1])
    rng = np.random.default_rng(0)
    for _ in range(3000):
        mutated = bytearray(original)
        for at in rng.integers(0, len(mutated), size=int(rng.integers(1, 6))):
            mutated[at] = int(rng.integers(0, 256))
        try:
            images.decode(pa.array([bytes(mutated)], pa.binary()), (1, 8, 8), "resize", "f")
            outcomes["decoded"] += 1
        except DataError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["decoded"] > 0, outcomes


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["data.feature_columns=a"], "data.label_column: must name the label column"),
        (["data.label_column=y"], "data.feature_columns: name the feature columns or"),
        (
            ["data.label_column=y", "data.feature_columns=a", "data.image_column=i"],
            "data.feature_columns: name the feature columns or",
        ),
        (["data.label_column=y", "data.image_column=i", "data.image_channels=2"], "1 (grey)"),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "sum < 1"),
    ],
)
def test_column_keys_that_cannot_work_are_config_errors(keys, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_job_config(None, keys)


def test_one_list_column_is_the_feature_vector(tmp_path):
    """An embedding stored as a list per row (pandas writes numpy arrays as list<double>);
    integer labels, an id column and a split column of HF's names."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 5))
    table = pa.table(
        {
            "embedding": pa.array(list(vectors), pa.list_(pa.float64())),
            "y": pa.array(rng.integers(0, 3, 300), pa.int32()),
            "row": pa.array(np.arange(1000, 1300), pa.int64()),
            "split": pa.array(["train"] * 200 + ["validation"] * 50 + ["test"] * 50),
        }
    )
    (tmp_path / "set").mkdir()
    pq.write_table(table, tmp_path / "set" / "data.parquet", row_group_size=64)
    keys = ["data.label_column=y", "data.feature_columns=embedding", "data.id_column=row"]
    info = inspect(tmp_path / "set", [*keys, "data.split_column=split"])
    assert info.feature_shape == (5,) and info.num_classes == 3 and info.class_names == ()
    test = rows_of(info, "test", memory=False)
    assert test.column(ID).to_pylist() == list(range(1250, 1300))
    got = np.asarray(test.column(FEATURES).to_pylist(), np.float32)
    np.testing.assert_allclose(got, vectors[250:].astype(np.float32))

    short = table.set_column(0, "embedding", pa.array([[1.0, 2.0], *list(vectors[1:])]))
    pq.write_table(short, tmp_path / "set" / "data.parquet")
    info = inspect(tmp_path / "set", [*keys, "data.split_column=split"])  # the shape: row 0
    with pytest.raises(DataError, match="row 1 of list column 'embedding' holds 5 values, the"):
        rows_of(info, "train")


def test_a_label_that_would_make_too_many_classes_is_refused_by_row(tmp_path):
    """One stray label of 10**12 was a network of a trillion outputs that no worker could
    allocate (after Ray started, retried); now one line names its row and the bound."""
    keys = ["data.label_column=y", "data.feature_columns=x"]
    stray = tmp_path / "stray"
    stray.mkdir()
    pq.write_table(
        pa.table({"x": np.arange(40.0), "y": [0, 1] * 19 + [10**12, 1]}), stray / "a.parquet"
    )
    with pytest.raises(DataError) as refused:
        inspect(stray, keys)
    assert str(refused.value) == (
        f"{stray / 'a.parquet'}: row 38 has label 1000000000000 ('y'), which would make "
        "1,000,000,000,001 classes; fix the label or raise data.max_classes (now 10,000)"
    )
    words = tmp_path / "words"
    words.mkdir()
    pq.write_table(
        pa.table({"x": np.arange(40.0), "y": [f"c{i % 5}" for i in range(40)]}), words / "a.parquet"
    )
    assert inspect(words, keys).num_classes == 5
    with pytest.raises(DataError, match=r"more than 4 distinct strings .* data\.max_classes"):
        inspect(words, [*keys, "data.max_classes=4"])
    negative = tmp_path / "negative"
    negative.mkdir()
    pq.write_table(
        pa.table({"x": np.arange(40.0), "y": [0, 1] * 15 + [-3] + [1] * 9}), negative / "a.parquet"
    )
    with pytest.raises(DataError, match=r"a\.parquet, row 30: label column 'y' holds -3"):
        inspect(negative, keys)
