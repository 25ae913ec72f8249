from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.data.contract import inspect_dataset, make_schema
from pipeline.data.datasets import Split
from pipeline.data.ingest import (
    PAD_LABEL,
    FileSource,
    MemorySource,
    ShardReader,
    arrow_to_batch,
    epoch_pieces,
    padding_rows,
    steps_per_epoch,
)
from pipeline.data.prepare import _table


def test_padding_makes_totals_divisible():
    assert [padding_rows(n, 2) for n in (10, 11)] == [0, 1]
    assert padding_rows(1439, 4) == 1
    for total in range(1, 40):
        for world in (1, 2, 3, 5):
            assert (total + padding_rows(total, world)) % world == 0
            assert padding_rows(total, world) < world


def test_steps_per_epoch_counts_the_partial_batch():
    assert steps_per_epoch(1439, 2, 32) == 23  # 720 rows per rank
    assert steps_per_epoch(64, 2, 32) == 1
    assert steps_per_epoch(65, 2, 32) == 2


def _table_of(n: int) -> pa.Table:
    feats = np.arange(n * 4, dtype=np.float32).reshape(n, 1, 2, 2)
    return _table(Split(feats, np.arange(n) % 3, np.arange(n) + 100), make_schema((1, 2, 2), 3))


def test_arrow_to_batch_respects_slices():
    table = _table_of(10).slice(3, 4)
    batch = arrow_to_batch(table, 4)
    assert batch.features.shape == (4, 4) and batch.features.dtype == np.float32
    np.testing.assert_array_equal(batch.features[0], [12, 13, 14, 15])
    np.testing.assert_array_equal(batch.ids, [103, 104, 105, 106])


def test_arrow_to_batch_combines_chunks():
    table = pa.concat_tables([_table_of(3), _table_of(2)])
    batch = arrow_to_batch(table, 4)
    assert batch.features.shape == (5, 4)
    np.testing.assert_array_equal(batch.features[3], [0, 1, 2, 3])


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """3 files of 23, 40 and 7 rows in row groups of at most 10: uneven on purpose."""
    root = tmp_path_factory.mktemp("shards")
    (root / "train").mkdir()
    start = 0
    for i, n in enumerate((23, 40, 7)):
        table = _table_of(n)
        table = table.set_column(0, table.schema.field(0), pa.array(np.arange(n) + start))
        pq.write_table(table, root / "train" / f"part-{i}.parquet", row_group_size=10)
        start += n
    return inspect_dataset(str(root), splits=("train",), require_manifest=False).splits["train"]


def _reader(split, rank, world, memory=False, seed=7):
    fs = pafs.LocalFileSystem()
    source = MemorySource(split, fs, 3) if memory else FileSource(split.files, fs, str, 3)
    return ShardReader(source, split, 4, rank, world, seed)


def _epoch(split, world, epoch=0, **kw):
    return [list(_reader(split, r, world).batches(epoch, 8, **kw)) for r in range(world)]


def test_row_groups_come_from_the_footers(split):
    assert split.rows == 70
    assert split.row_groups == ((10, 10, 3), (10, 10, 10, 10), (7,))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("shuffle", [0, 16])
def test_shards_are_disjoint_cover_every_row_and_run_equal_steps(split, world, shuffle):
    ranks = _epoch(split, world, shuffle_rows=shuffle)
    steps = steps_per_epoch(70, world, 8)
    assert [len(batches) for batches in ranks] == [steps] * world
    real = np.concatenate([b.ids[b.labels != PAD_LABEL] for bs in ranks for b in bs])
    assert sorted(real) == list(range(70))
    padding = sum(len(b) - b.num_real for bs in ranks for b in bs)
    assert padding == padding_rows(70, world)
    rows = [sum(len(b) for b in bs) for bs in ranks]
    assert len(set(rows)) == 1


def test_order_follows_seed_and_epoch(split):
    def ids(epoch, seed=7):
        return np.concatenate(
            [b.ids for b in _reader(split, 0, 2, seed=seed).batches(epoch, 8, 16)]
        )

    np.testing.assert_array_equal(ids(0), ids(0))
    assert not np.array_equal(ids(0), ids(1))
    assert not np.array_equal(ids(0), ids(0, seed=8))
    unshuffled = np.concatenate([b.ids for b in _reader(split, 0, 1).batches(0, 8)])
    np.testing.assert_array_equal(unshuffled, np.arange(70))


@pytest.mark.parametrize("skip", [0, 1, 2, 3, 5])
def test_skipping_steps_resumes_exactly_where_the_epoch_stood(split, skip):
    full = list(_reader(split, 1, 2).batches(3, 8, shuffle_rows=16))
    resumed = list(_reader(split, 1, 2).batches(3, 8, shuffle_rows=16, skip_steps=skip))
    assert len(resumed) == len(full) - skip
    for a, b in zip(full[skip:], resumed, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.features, b.features)


def test_memory_and_storage_give_the_same_batches(split):
    for memory_batch, file_batch in zip(
        _reader(split, 0, 3, memory=True).batches(2, 8, 16),
        _reader(split, 0, 3).batches(2, 8, 16),
        strict=True,
    ):
        np.testing.assert_array_equal(memory_batch.ids, file_batch.ids)
        np.testing.assert_array_equal(memory_batch.features, file_batch.features)


def test_features_stay_with_their_ids(split):
    starts = np.array([0, 23, 63])  # the files' first ids; features restart in every file
    for batch in _reader(split, 0, 2).batches(1, 8, 16):
        row_in_file = batch.ids - starts[np.searchsorted(starts, batch.ids, side="right") - 1]
        np.testing.assert_array_equal(batch.features[:, 0], 4 * row_in_file)


def test_a_read_error_names_the_file(split, tmp_path):
    from pipeline.errors import DataError

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    import dataclasses

    bad = dataclasses.replace(split, files=(str(broken), *split.files[1:]))
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable Parquet file"):
        list(_reader(bad, 0, 1).batches(0, 8))


class _Fragments:
    """ingest's Parquet format, recording each fragment made (each a footer read) with the
    size it was given."""

    def __init__(self, real):
        self.real = real
        self.made: list[tuple[str, int | None]] = []

    def make_fragment(self, path, filesystem, file_size=None):
        if threading.current_thread() is threading.main_thread() or self.threads:
            self.made.append((path, file_size))
        return self.real.make_fragment(path, filesystem, file_size=file_size)

    threads = False


def _footer_costs(split) -> list[int]:
    from pipeline.data import ingest

    fs = pafs.LocalFileSystem()
    costs = []
    for path in split.files:
        fragment = ingest._PARQUET.make_fragment(path, fs)
        fragment.ensure_complete_metadata()
        costs.append(ingest.footer_memory(fragment))
    return costs


def test_a_file_read_again_reuses_its_footer_and_the_cache_is_bounded(split, monkeypatch):
    from pipeline.data import ingest

    costs = _footer_costs(split)  # files of 3, 4 and 1 row groups: their footers differ
    assert costs[0] < costs[1] and sum(costs) > costs[1] + costs[2]
    # ahead=0 reads on this thread; a read-ahead thread an earlier test left finishing its
    # in-flight row group also makes fragments (CI saw one), so only this thread's count.
    fragments = _Fragments(ingest._PARQUET)
    monkeypatch.setattr(ingest, "_PARQUET", fragments)
    budget = costs[1] + costs[2]  # the two most recent of the first three
    source = FileSource(split.files, pafs.LocalFileSystem(), str, 3, ahead=0,
                        footer_cache_bytes=budget)  # fmt: skip
    pieces = epoch_pieces(split, 0, 0, shuffle=False)
    one_per_file = [next(p for p in pieces if p.file == f) for f in range(3)]
    for piece in [*one_per_file, one_per_file[2], one_per_file[0]]:
        source.read(piece)
    # Files 0, 1, 2 read their footers (0 dropped to make room for 2); 2 again from the
    # cache; 0 again, for which 1, the least recently used, was dropped.
    files = split.files
    assert [path for path, _ in fragments.made] == [files[0], files[1], files[2], files[0]]
    assert list(source._opened) == [2, 0]
    assert source._opened_bytes == costs[2] + costs[0] <= budget


def test_a_footer_larger_than_the_whole_cache_is_not_kept(split):
    """However wide a file (a parsed footer grows with columns x row groups), the cache's
    memory stays within its bytes: such a footer is read again each time instead."""
    smallest = min(_footer_costs(split))
    source = FileSource(split.files, pafs.LocalFileSystem(), str, 3, ahead=0,
                        footer_cache_bytes=smallest - 1)  # fmt: skip
    for piece in epoch_pieces(split, 0, 0, shuffle=False):
        source.read(piece)
    assert not source._opened and source._opened_bytes == 0


class _CountingHandler(pafs.FileSystemHandler):
    """Local files behind pyarrow's Python filesystem, counting what S3 would answer with a
    request: size lookups (a HEAD) and opens."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()
        self.infos: list[str] = []
        self.opens = 0

    def get_type_name(self):
        return "counting"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        self.infos.extend(paths)
        return self.local.get_file_info(paths)

    def open_input_file(self, path):
        self.opens += 1
        return self.local.open_input_file(path)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def _unused(self, *args):
        raise NotImplementedError

    get_file_info_selector = create_dir = delete_dir = delete_dir_contents = _unused
    delete_root_dir_contents = delete_file = move = copy_file = _unused
    open_output_stream = open_append_stream = _unused


@pytest.mark.parametrize("known", [True, False], ids=["sizes-listed", "sizes-asked"])
def test_on_object_storage_a_footer_is_read_once_and_a_listed_size_never_asked(
    split, monkeypatch, known
):
    """pyarrow's S3 file sends a HEAD request when opened by name, for the size; the driver's
    listing has every file's size, and a fragment given it asks nothing before its first
    footer read. A footer is read once for all the file's row groups (shuffled reading comes
    back to a file for each), over epochs, whichever thread wants it first."""
    from pipeline.data import ingest

    fragments = _Fragments(ingest._PARQUET)
    fragments.threads = True
    monkeypatch.setattr(ingest, "_PARQUET", fragments)
    handler = _CountingHandler()
    sizes = tuple(handler.local.get_file_info(f).size for f in split.files)
    assert split.sizes == sizes  # the listing's
    fs = pafs.PyFileSystem(handler)
    source = FileSource(split.files, fs, str, 3, ahead=4, sizes=sizes if known else ())
    pieces = epoch_pieces(split, 0, 0, shuffle=True)
    assert len(pieces) > len(split.files)  # several row groups a file
    for epoch in range(2):
        assert len(list(source.read_in_order(pieces))) == len(pieces), epoch
    source.close()
    assert sorted(fragments.made) == sorted(zip(split.files, sizes, strict=True))
    assert len(handler.infos) == (0 if known else len(split.files))  # a HEAD each on S3
    assert handler.opens == len(split.files) + 2 * len(pieces)  # footers, then a row group each


def test_requests_in_flight_follow_the_memory_setting_within_bounds():
    from pipeline.data.contract import SplitInfo
    from pipeline.data.ingest import MAX_AHEAD, MIN_AHEAD, requests_in_flight

    def split(groups: int, group_bytes: int) -> SplitInfo:
        return SplitInfo(("f",), groups, groups * group_bytes, row_groups=((1,) * groups,))

    assert requests_in_flight(split(100, 2**20), 16) == 16  # 16 MB of 1 MB row groups
    assert requests_in_flight(split(100, 32 * 2**10), 64) == MAX_AHEAD  # small: capped
    assert requests_in_flight(split(4, 512 * 2**20), 64) == MIN_AHEAD  # huge: 2 at least


def test_row_groups_held_follow_the_memory_setting_beyond_the_requests():
    from pipeline.data.contract import SplitInfo
    from pipeline.data.ingest import HOLD_PER_REQUEST, MAX_AHEAD, MIN_AHEAD, row_groups_held

    def split(groups: int, group_bytes: int) -> SplitInfo:
        return SplitInfo(("f",), groups, groups * group_bytes, row_groups=((1,) * groups,))

    assert row_groups_held(split(100, 2**20), 16) == 16  # 16 MB of 1 MB row groups: no more
    assert row_groups_held(split(100, 2**19), 64) == 128  # 64 MB of 512 KB: past the 64 requests
    assert row_groups_held(split(100, 32 * 2**10), 64) == HOLD_PER_REQUEST * MAX_AHEAD
    assert row_groups_held(split(4, 512 * 2**20), 64) == MIN_AHEAD  # huge: the requests' 2


def test_a_slow_row_group_does_not_stop_the_requests_behind_it(split):
    """The plan's order is kept, so the first row group's late answer holds the others; while
    it is late, the reader asks for the row groups after them up to ``hold``."""
    started: list[int] = []
    release = threading.Event()
    source = FileSource(split.files, pafs.LocalFileSystem(), str, 3, ahead=2, hold=5)
    real_read = source.read

    def read(piece):
        started.append(piece.group + 10 * piece.file)
        if len(started) == 1:
            assert release.wait(10), "the reader never asked for more than the first"
        return real_read(piece)

    source.read = read  # type: ignore[method-assign]
    pieces = epoch_pieces(split, 0, 0, shuffle=False)

    def watch():
        while len(started) < 5:  # the 4 behind the late one are asked for and read
            threading.Event().wait(0.01)
        release.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert len(list(source.read_in_order(pieces))) == len(pieces)
    source.close()
    assert release.is_set()


def test_row_groups_in_flight_get_as_many_of_pyarrows_io_threads(split, monkeypatch):
    """pre_buffer's requests run on pyarrow's IO pool (8 threads by default): a reader with
    more row groups in flight than that raises it, or its requests wait their turn."""
    counts = [4]
    monkeypatch.setattr(pa, "io_thread_count", lambda: counts[-1])
    monkeypatch.setattr(pa, "set_io_thread_count", counts.append)
    source = FileSource(split.files, pafs.LocalFileSystem(), str, 3, ahead=6)
    pieces = epoch_pieces(split, 0, 0, shuffle=False)
    assert len(list(source.read_in_order(pieces))) == len(pieces)
    source.close()
    assert counts == [4, 6]
    fewer = FileSource(split.files, pafs.LocalFileSystem(), str, 3, ahead=3)
    assert len(list(fewer.read_in_order(pieces))) == len(pieces)
    fewer.close()
    assert counts == [4, 6]  # never lowered


def test_a_streaming_source_on_s3_has_its_io_threads_before_its_filesystem(monkeypatch):
    """pyarrow's S3 filesystem pools as many connections as pyarrow has IO threads when it is
    made (25 at least): the pool grows first, or 64 requests share 25 connections."""
    from pipeline.data import ingest
    from pipeline.data.contract import DatasetInfo, SplitInfo
    from pipeline.storage import Location

    counts = [8]
    monkeypatch.setattr(pa, "io_thread_count", lambda: counts[-1])
    monkeypatch.setattr(pa, "set_io_thread_count", counts.append)
    made_with: list[int] = []

    def resolve(uri, s3=None):
        made_with.append(counts[-1])
        return Location(uri, pafs.LocalFileSystem(), "bucket/set")

    monkeypatch.setattr(ingest, "resolve", resolve)
    split = SplitInfo(("bucket/set/train/a.parquet",), 4000, 4 * 2**20, row_groups=((1000,) * 4,))
    info = DatasetInfo("s3://bucket/set", (16,), 10, {"train": split})
    source = ingest.open_source(info, "train", memory=False, read_ahead_mb=64)
    assert source.ahead == ingest.requests_in_flight(split, 64) == 64
    assert made_with == [64]
    assert counts == [8, 64]
