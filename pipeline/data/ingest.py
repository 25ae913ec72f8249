"""From Parquet files to per-rank batches, by a plan every rank can compute for itself.

Sharding rules (:class:`ShardReader`):

* Each epoch orders the split's Parquet row groups by a permutation drawn from
  ``(seed, epoch)``; the rows, in that order, form the epoch's sequence.
* Rank ``r`` of ``W`` reads the contiguous part ``[r * P, (r + 1) * P)`` of that sequence, where
  ``P = ceil(rows / W)``. The parts are disjoint and cover every row; the last part is topped
  up to ``P`` with copies of the sequence's first rows whose label is :data:`PAD_LABEL` (the
  loss and the metrics give them weight 0). So every rank runs the same number of steps and no
  allreduce waits for a rank that ran out of data.
* Within its part, a rank shuffles windows of ``data.shuffle_buffer`` rows with a permutation
  drawn from ``(seed, epoch, rank, window)``.

Since the whole order follows from ``(seed, epoch, world size)``, a resumed job can skip the
steps it has done without reading them again and sees each remaining sample exactly once.

Why not Ray Data: every pass of its streaming executor carries seconds of fixed start-up on 2
cores (make bench, ingest_vs_raydata), and ``streaming_split`` gives no position to resume an
epoch from. The driver still decides the sharding (the plan's inputs travel with the job); the
workers read their rows directly.
"""

from __future__ import annotations

import hashlib
import itertools
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.data import epoch_plan
from pipeline.data.columns import ColumnMapping
from pipeline.data.contract import (
    FEATURES,
    ID,
    LABEL,
    DatasetInfo,
    SplitInfo,
    check_rows,
    check_schema,
    read_failure,
    single_chunk,
)
from pipeline.data.epoch_plan import Dealing, Remaining, Resize, Segment
from pipeline.errors import DataError
from pipeline.storage import is_local_uri, resolve

#: Label of padding rows: masked out of the loss and of every metric.
PAD_LABEL = -1
COLUMNS = [ID, FEATURES, LABEL]
#: Memory for the footers a streaming reader keeps, as fragments (least recently used
#: dropped), so it stays bounded whatever the number of files and however wide they are; a
#: row group of a file kept costs one request (no footer). A count of files bounded nothing:
#: a parsed footer grows with columns x row groups (23 KB for the scale benchmark's files,
#: 1.8 MB for 200 columns in 10 row groups), and 2,048 files were 49 MB of the first kind.
FOOTER_CACHE_MB = 16
#: A parsed footer's memory per byte of the footer as stored (measured 8-11: 23 KB for 2.1 KB,
#: 1,788 KB for 230 KB).
FOOTER_MEMORY_PER_BYTE = 12
#: Stored bytes of row groups a streaming reader holds or has asked for
#: (``data.read_ahead_mb``), and the bounds of the number of requests that makes at once.
READ_AHEAD_MB = 64
MIN_AHEAD, MAX_AHEAD = 2, 64
#: Row groups asked for ahead of the one being consumed, in requests at once: the plan's order
#: is kept, so a slow request holds the ones behind it; finished ones wait to be consumed while
#: the next are already asked for (the scale benchmark's reader over 1,000,000 rows of 1,000
#: files through a 30 ms store, 64 requests at once, by hand: 330-350k rows/s holding 64 row
#: groups, 415k holding 256).
HOLD_PER_REQUEST = 4


def requests_in_flight(split: SplitInfo, read_ahead_mb: float = READ_AHEAD_MB) -> int:
    """As many row groups in flight as ``read_ahead_mb`` holds, from the split's average
    row group (stored bytes), within [MIN_AHEAD, MAX_AHEAD]: small row groups on a distant
    S3 need many requests at once (each waits its round trips), large ones few."""
    return int(min(MAX_AHEAD, max(MIN_AHEAD, _groups_in(split, read_ahead_mb))))


def row_groups_held(split: SplitInfo, read_ahead_mb: float = READ_AHEAD_MB) -> int:
    """Row groups a reader may hold or have asked for: as many as ``read_ahead_mb`` holds, up
    to :data:`HOLD_PER_REQUEST` per request in flight, and never fewer than those requests."""
    ahead = requests_in_flight(split, read_ahead_mb)
    return int(min(HOLD_PER_REQUEST * ahead, max(ahead, _groups_in(split, read_ahead_mb))))


def _groups_in(split: SplitInfo, read_ahead_mb: float) -> float:
    groups = sum(len(g) for g in split.row_groups) or 1
    average = max(1, split.bytes) / groups
    return read_ahead_mb * 2**20 // average


def padding_rows(total: int, world_size: int) -> int:
    """How many rows make ``total`` a multiple of ``world_size``."""
    return (-total) % world_size


def rows_per_rank(total: int, world_size: int) -> int:
    return -(-total // world_size)


def steps_per_epoch(total: int, world_size: int, batch_size: int) -> int:
    """Batches each rank iterates per epoch (the last one may be partial)."""
    return -(-rows_per_rank(total, world_size) // batch_size)


def should_cache(info: DatasetInfo, policy: str, max_mb: int) -> bool:
    """Whether each worker reads the data set into memory once (see ``data.cache``).

    From memory an epoch costs no I/O; large data sets stream row group by row group instead
    (make bench's rss_growth measures how far a worker's memory still grows with them).
    """
    if policy == "auto":
        return sum(s.bytes for s in info.splits.values()) <= max_mb * 2**20
    return policy == "memory"


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """One Parquet row group: the unit the epoch order permutes and a reader fetches."""

    file: int
    group: int
    rows: int


def epoch_pieces(split: SplitInfo, seed: int, epoch: int, shuffle: bool) -> list[Piece]:
    pieces = [  # a row group with no rows of this split (own Parquet's row selections) is none
        Piece(f, g, rows)
        for f, groups in enumerate(split.row_groups)
        for g, rows in enumerate(groups)
        if rows
    ]
    if shuffle:
        rng = np.random.default_rng([seed, epoch, 0x5EED])
        pieces = [pieces[i] for i in rng.permutation(len(pieces))]
    return pieces


# -- where the rows come from -------------------------------------------------------------------


class FileSource:
    """Row groups read from storage when asked for (``data.cache=stream``).

    :meth:`read_in_order` keeps ``ahead`` requests in flight on a thread pool and up to
    ``hold`` row groups asked for, so object storage latency overlaps the decoding and the
    training step. No Parquet reader is kept open (keeping every file's reader made a
    worker's memory grow with the number of files: make bench, rss_growth); footers are kept
    instead, up to ``footer_cache_bytes`` of them, so a file read again costs its row
    group's request only. A file whose size is known (``sizes``, from the driver's listing)
    is opened without asking S3 for it: pyarrow's S3 file sends a HEAD request when opened
    by name, one more round trip before each first footer. Each row group's values are
    checked (:func:`~pipeline.data.contract.check_rows`) the first time this worker reads
    it. The user's own Parquet is mapped onto the contract's columns (``mapping``) as it is
    read, on these threads (image decoding included).
    """

    def __init__(
        self,
        files: tuple[str, ...],
        filesystem,
        uri_of: Callable[[str], str],
        num_classes: int,
        ahead: int = MIN_AHEAD,
        mapping: ColumnMapping | None = None,
        split: str = "train",
        schema_facts: tuple | None = None,
        sizes: tuple[int, ...] = (),
        hold: int = 0,
        footer_cache_bytes: int = FOOTER_CACHE_MB * 2**20,
    ):
        self.files = files
        self.filesystem = filesystem
        self.uri_of = uri_of
        self.num_classes = num_classes
        self.ahead = ahead
        #: Row groups asked for at most (in flight or read, not yet consumed): >= ``ahead``.
        self.hold = max(hold, ahead)
        self.mapping = mapping
        self.split = split
        self.sizes = sizes
        self.columns = mapping.columns(split) if mapping else COLUMNS
        #: (feature shape, classes, scale) every file must have: the driver read one footer
        #: and planned the rest from the manifest, so each file's is checked as it is opened.
        self.schema_facts = schema_facts
        self._pool: ThreadPoolExecutor | None = None
        #: file -> bit set of its row groups checked: a few bytes a file (a set of pieces
        #: took ~150 bytes a row group, and grew with a shard's row groups).
        self._checked: dict[int, int] = {}
        #: file -> (its fragment with the footer read, the memory counted for it), least
        #: recently used first; ``_opened_bytes`` in all, at most ``footer_cache_bytes``.
        self._opened: OrderedDict[int, tuple[ds.ParquetFileFragment, int]] = OrderedDict()
        self._opened_bytes = 0
        self.footer_cache_bytes = footer_cache_bytes
        #: file -> the lock of the thread opening it for the first time.
        self._opening: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def read(self, piece: Piece) -> pa.Table:
        try:
            fragment = self._fragment(piece.file)
            table = fragment.subset(row_group_ids=[piece.group]).to_table(
                columns=self.columns, use_threads=False, fragment_scan_options=_SCAN
            )
        except (pa.ArrowException, OSError) as exc:
            raise read_failure(exc, self.uri_of(self.files[piece.file])) from None
        where = f"{self.uri_of(self.files[piece.file])} (row group {piece.group})"
        if self.mapping is None and table.num_rows != piece.rows:
            raise DataError(
                f"{where}: {table.num_rows} rows where the plan (_manifest.json) says "
                f"{piece.rows}; the file was changed after the manifest was written: re-run "
                "jobs.prepare_data or jobs.write_manifest"
            )
        if self.mapping is not None:
            meta = fragment.metadata
            first_row = sum(meta.row_group(g).num_rows for g in range(piece.group))
            path = self.files[piece.file]
            table = self.mapping.to_contract(table, path, first_row, self.split, where)
        bit = 1 << piece.group
        if not self._checked.get(piece.file, 0) & bit:
            check_rows(table, self.num_classes, where)
            # Unlocked: two threads racing on one file may lose a bit, which costs a re-check.
            self._checked[piece.file] = self._checked.get(piece.file, 0) | bit
        return table

    def _fragment(self, file: int) -> ds.ParquetFileFragment:
        """``file`` as a fragment whose footer is read, from what this worker kept of it when
        it read it before (an epoch's shuffled order reads a file again for each of its row
        groups): one or two requests saved. The schema is checked the first time. Threads
        that want a file no one has opened yet wait for the first to open it (one footer per
        file, not one per thread)."""
        kept = self._kept(file)
        if kept is None:
            with self._lock:
                gate = self._opening.setdefault(file, threading.Lock())
            with gate:
                kept = self._kept(file)  # opened by the thread this one waited for
                if kept is None:
                    return self._first_open(file)
        return kept

    def _kept(self, file: int) -> ds.ParquetFileFragment | None:
        with self._lock:
            kept = self._opened.get(file)
            if kept is None:
                return None
            self._opened.move_to_end(file)
            return kept[0]

    def _first_open(self, file: int) -> ds.ParquetFileFragment:
        path = self.files[file]
        # Without the size, pyarrow's S3 file would ask for it at every open: once is enough.
        size = self.sizes[file] if self.sizes else self.filesystem.get_file_info(path).size
        fragment = _PARQUET.make_fragment(path, self.filesystem, file_size=size)
        fragment.ensure_complete_metadata()
        self._check_schema(fragment, file)
        cost = footer_memory(fragment)
        with self._lock:
            if cost <= self.footer_cache_bytes:  # a footer larger than all of it is not kept
                self._opened[file] = (fragment, cost)
                self._opened_bytes += cost
                while self._opened_bytes > self.footer_cache_bytes:
                    _, (_, dropped) = self._opened.popitem(last=False)
                    self._opened_bytes -= dropped
            self._opening.pop(file, None)
        return fragment

    def _check_schema(self, fragment: ds.ParquetFileFragment, file: int) -> None:
        if self.schema_facts is None or self.mapping is not None:
            return
        where = self.uri_of(self.files[file])
        facts = check_schema(fragment.physical_schema, where)
        if facts != self.schema_facts:
            raise DataError(
                f"{where}: feature_shape/num_classes/scale {facts} where the data set has "
                f"{self.schema_facts}; the file was changed after the manifest was written: "
                "re-run jobs.prepare_data or jobs.write_manifest"
            )

    def read_in_order(self, pieces: list[Piece]) -> Iterator[pa.Table]:
        if self.ahead <= 0:
            yield from map(self.read, pieces)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.ahead, thread_name_prefix="row-group-read")
            enough_io_threads(self.ahead)
        # Up to ``hold`` row groups asked for; the pool's ``ahead`` threads fetch them.
        pending: deque = deque()
        todo = iter(pieces)
        try:
            for piece in itertools.islice(todo, self.hold):
                pending.append(self._pool.submit(self.read, piece))
            while pending:
                table = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(self._pool.submit(self.read, nxt))
                yield table
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def footer_memory(fragment: ds.ParquetFileFragment) -> int:
    """What a kept fragment is counted as: its parsed footer's memory, estimated."""
    return FOOTER_MEMORY_PER_BYTE * fragment.metadata.serialized_size


def enough_io_threads(requests: int) -> None:
    """At least ``requests`` threads in pyarrow's IO pool, never fewer than it has.

    pre_buffer's requests run on that pool (8 threads by default): without this, 64 row
    groups "in flight" were 8 requests to S3 (make bench, scale: 0.57 of loopback's rows/s
    through a 30 ms store with 8, 0.7-0.8 with 64). And pyarrow's S3 filesystem pools as many
    connections as the pool has threads when it is made, 25 at least: one made before the
    pool grew kept 64 requests to 25 connections for the whole job (the scale benchmark's
    reader through a 30 ms store, by hand: 25 connections seen, 204k rows/s; 64, 300-381k)."""
    if pa.io_thread_count() < requests:
        pa.set_io_thread_count(requests)


#: How a streaming reader reads a row group: one coalesced request for its columns
#: (pre_buffer) instead of one per column.
_PARQUET = ds.ParquetFileFormat()
_SCAN = ds.ParquetFragmentScanOptions(pre_buffer=True)


class MemorySource:
    """Every file read once, whole, with its SHA-256 checked against the manifest and its
    rows' values checked (``data.cache=memory``); the user's own Parquet is mapped onto the
    contract's columns (images decoded) once, here."""

    def __init__(
        self,
        split: SplitInfo,
        filesystem,
        num_classes: int,
        uri_of: Callable[[str], str] = lambda path: path,
        mapping: ColumnMapping | None = None,
        split_name: str = "train",
    ):
        columns = mapping.columns(split_name) if mapping else COLUMNS
        self.tables: list[pa.Table] = []
        self.offsets: list[list[int]] = []
        expected = split.sha256 or (None,) * len(split.files)
        for path, sha, groups in zip(split.files, expected, split.row_groups, strict=True):
            try:
                with filesystem.open_input_file(path) as fh:
                    data = fh.read_buffer()
                if sha and hashlib.sha256(data).hexdigest() != sha:
                    raise DataError(
                        f"{uri_of(path)}: SHA-256 does not match _manifest.json; the file was "
                        "changed or corrupted: re-run jobs.prepare_data"
                    )
                table = pq.read_table(pa.BufferReader(data), columns=columns, use_threads=False)
            except (pa.ArrowException, OSError) as exc:
                raise read_failure(exc, uri_of(path)) from None
            if mapping is not None:
                table = mapping.to_contract(table, path, 0, split_name, uri_of(path))
            check_rows(table, num_classes, uri_of(path))
            self.tables.append(table)
            self.offsets.append(np.concatenate([[0], np.cumsum(groups)]).tolist())

    def read(self, piece: Piece) -> pa.Table:
        return self.tables[piece.file].slice(self.offsets[piece.file][piece.group], piece.rows)

    def read_in_order(self, pieces: list[Piece]) -> Iterator[pa.Table]:
        return map(self.read, pieces)

    def close(self) -> None:
        pass


Source = FileSource | MemorySource


def open_source(
    info: DatasetInfo,
    split: str,
    memory: bool,
    s3: S3Config | None = None,
    read_ahead_mb: float = READ_AHEAD_MB,
) -> Source:
    chosen = info.splits[split]
    local = is_local_uri(info.uri)
    ahead = MIN_AHEAD if local else requests_in_flight(chosen, read_ahead_mb)
    if not memory:
        enough_io_threads(ahead)  # before the filesystem is made: it sizes its connections
    loc = resolve(info.uri, s3)
    filesystem = loc.filesystem or pafs.LocalFileSystem()
    if memory:
        return MemorySource(chosen, filesystem, info.num_classes, loc.uri_of, info.mapping, split)
    return FileSource(
        chosen.files,
        filesystem,
        loc.uri_of,
        info.num_classes,
        # Local disk answers at once: more threads would only contend for the cores.
        ahead=ahead,
        mapping=info.mapping,
        split=split,
        schema_facts=(info.feature_shape, info.num_classes, info.feature_scale),
        sizes=chosen.sizes,
        hold=MIN_AHEAD if local else row_groups_held(chosen, read_ahead_mb),
    )


# -- batches ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One batch as numpy arrays: features (N, D) as stored (float32, or uint8 with
    ``scale``), labels (N,) int64, ids (N,).

    ``x`` and ``y`` (features as float32, scaled; labels as float32) are the same rows as MXNet
    NDArrays on the device when the reader was given one, else None.
    """

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    x: Any = None
    y: Any = None
    #: uint8 features: the value of one unit; None for float32 features.
    scale: float | None = None

    def float_features(self) -> np.ndarray:
        """The features as the model sees them: float32, scaled (a host copy)."""
        if self.scale is None:
            return self.features
        return self.features.astype(np.float32) * np.float32(self.scale)

    @property
    def mask(self) -> np.ndarray:
        """1.0 for real rows, 0.0 for padding."""
        return (self.labels != PAD_LABEL).astype(np.float32)

    @property
    def num_real(self) -> int:
        return int(np.count_nonzero(self.labels != PAD_LABEL))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: slice | np.ndarray) -> Batch:
        on_device = self.x is not None
        return Batch(
            self.features[index],
            self.labels[index],
            self.ids[index],
            _device_rows(self.x, index) if on_device else None,
            _device_rows(self.y, index) if on_device else None,
            self.scale,
        )

    def on_device(self, device) -> Batch:
        """This batch with ``x``/``y`` copied to ``device``. uint8 features travel as bytes (a
        quarter of float32's) and become float32 on the device, once for the whole window."""
        x = to_ndarray(self.features, device)
        if self.scale is not None:
            x = x.astype("float32") * self.scale
        y = to_ndarray(self.labels.astype(np.float32), device)
        return Batch(self.features, self.labels, self.ids, x, y, self.scale)


def _device_rows(array, index: slice | np.ndarray):
    """``array[index]`` for an NDArray. A run of rows is a view made by MXNet's C slice
    directly: NDArray's Python indexing spends tens of microseconds on checks per call, and
    the reader makes two such views per batch (features, labels)."""
    if isinstance(index, slice) and index.step in (None, 1):
        return array._slice(*index.indices(array.shape[0])[:2])
    return array[index]


def to_ndarray(array: np.ndarray, device):
    """numpy -> NDArray on ``device`` in one synchronous copy.

    ``mx.nd.array`` goes through NDArray's Python indexing code: 150 us for a 64 x 64 batch
    here, against 36 us for an empty array plus MXNDArraySyncCopyFromCPU. Per batch of 64
    rows that difference was most of the ingest path's cost.
    """
    import mxnet as mx

    array = np.ascontiguousarray(array)
    out = mx.nd.empty(array.shape, ctx=device, dtype=array.dtype)
    out._sync_copyfrom(array)
    return out


def arrow_to_batch(table: pa.Table, num_features: int, scale: float | None = None) -> Batch:
    """A pyarrow table -> numpy, without per-row Python objects (uint8 features stay uint8,
    with ``scale``).

    The features column is a fixed-size list: its flat child array reshapes to (N, D) with
    no copy when the table is a single chunk.
    """
    feats = single_chunk(table.column(FEATURES))
    if feats.null_count:
        raise ValueError("features column holds nulls")
    flat = feats.flatten()  # respects the slice offset, unlike .values
    x = flat.to_numpy(zero_copy_only=False).reshape(len(feats), num_features)
    y = pc.cast(table.column(LABEL), pa.int64()).to_numpy()
    ids = table.column(ID).to_numpy()
    return Batch(x, y, ids, scale=scale)


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return Batch(
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.ids for p in parts]),
        scale=parts[0].scale,
    )


def _as_padding(batch: Batch) -> Batch:
    labels = np.full(len(batch), PAD_LABEL, dtype=np.int64)
    return Batch(batch.features, labels, batch.ids, scale=batch.scale)


class ShardReader:
    """One rank's view of one split: per epoch, its batches in the planned order."""

    def __init__(
        self,
        source: Source,
        split: SplitInfo,
        num_features: int,
        rank: int,
        world_size: int,
        seed: int,
        feature_scale: float | None = None,
        transform: Callable[[Batch, int], Batch] | None = None,
    ):
        self.source = source
        self.split = split
        self.num_features = num_features
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.feature_scale = feature_scale
        #: Applied to each window of the epoch (augmentation), in the read-ahead thread.
        self.transform = transform

    def steps(self, batch_size: int, remaining: Remaining | None = None) -> int:
        """Batches per epoch (of ``remaining`` rows, an epoch resumed with another world)."""
        rows = self.split.rows if remaining is None else remaining.rows
        return steps_per_epoch(rows, self.world_size, batch_size)

    def remaining(
        self, epoch: int, batch_size: int, shuffle_rows: int, resizes: Sequence[Resize] = ()
    ) -> Remaining:
        """The rows of ``epoch`` that the worlds of ``resizes`` left untrained (all of them
        when there were none): what this world deals among its ranks."""
        deal = Dealing(
            batch_size, window_rows(batch_size, shuffle_rows), shuffle_rows > 0, self.seed, epoch
        )
        return epoch_plan.remaining(self.split.rows, resizes, deal)

    def batches(
        self,
        epoch: int,
        batch_size: int,
        shuffle_rows: int = 0,
        skip_steps: int = 0,
        prefetch: int | None = None,
        device=None,
        resizes: Sequence[Resize] = (),
    ) -> Iterator[Batch]:
        """The rank's batches of ``epoch``, starting after ``skip_steps`` batches; of the rows
        that earlier worlds left untrained when the epoch was resumed with another world size
        (``resizes``, see :mod:`pipeline.data.epoch_plan`).

        ``shuffle_rows`` > 0 permutes the row groups and windows of that many rows (rounded up
        to whole batches); ``prefetch`` windows are read ahead on a thread, so reading and
        decoding overlap the step (pyarrow releases the GIL). By default only storage is read
        ahead: from memory the thread only competes for the GIL (measured: 1-4% of an MLP's
        step rate). With ``device``, each window goes
        to the device in one copy and the batches carry views of it (``Batch.x``/``y``).
        """
        shuffle = shuffle_rows > 0
        window = window_rows(batch_size, shuffle_rows)
        left = self.remaining(epoch, batch_size, shuffle_rows, resizes)
        skip_rows = skip_steps * batch_size
        first = skip_rows // window
        windows = self._windows(epoch, shuffle, window, first, left)
        if prefetch is None:  # a transform is work worth taking off the training thread
            prefetch = 2 if isinstance(self.source, FileSource) or self.transform else 0
        if prefetch:
            windows = _read_ahead(windows, prefetch)
        drop = skip_rows - first * window
        for rows in windows:
            if device is not None:
                rows = rows.on_device(device)
            for lo in range(drop, len(rows), batch_size):
                yield rows[lo : lo + batch_size]
            drop = 0

    def _windows(
        self, epoch: int, shuffle: bool, window: int, first: int, left: Remaining
    ) -> Iterator[Batch]:
        parts: list[Batch] = []
        held = 0
        index = first
        for part in self._rows(epoch, shuffle, first * window, left):
            parts.append(part)
            held += len(part)
            while held >= window:
                rows = _concat(parts)
                yield self._shuffled(rows[:window], epoch, index, shuffle)
                index += 1
                parts, held = [rows[window:]], held - window
        if held:
            yield self._shuffled(_concat(parts), epoch, index, shuffle)

    def _shuffled(self, rows: Batch, epoch: int, index: int, shuffle: bool) -> Batch:
        if self.transform is not None:
            rows = self.transform(rows, epoch)
        if not shuffle:
            return rows
        rng = np.random.default_rng([self.seed, epoch, self.rank, index])
        return rows[rng.permutation(len(rows))]

    def _rows(self, epoch: int, shuffle: bool, offset: int, left: Remaining) -> Iterator[Batch]:
        """The rank's rows from ``offset`` on: its part of the rows ``left`` to train, then its
        padding (copies of the first of them)."""
        pieces = epoch_pieces(self.split, self.seed, epoch, shuffle)
        start, real, pad = epoch_plan.rank_part(left.rows, self.world_size, self.rank)
        if offset < real:
            yield from self._slice(pieces, left.locate(start + offset, start + real))
        pad_from = max(offset - real, 0)
        for part in self._slice(pieces, left.locate(pad_from, pad)):
            yield _as_padding(part)

    def _slice(self, pieces: list[Piece], segments: list[Segment]) -> Iterator[Batch]:
        """The rows of ``segments`` (ranges of the epoch sequence), reading only the row
        groups needed, each once for consecutive segments in it."""
        bounds = np.cumsum([0] + [piece.rows for piece in pieces])
        wanted: list[tuple[int, int, int]] = []  # (piece index, first row, rows)
        for start, end in segments:
            i = int(np.searchsorted(bounds, start, side="right")) - 1
            while start < end:
                hi = int(bounds[i + 1])
                take = min(end, hi) - start
                wanted.append((i, start - int(bounds[i]), take))
                start += take
                i += 1
        distinct = [w[0] for k, w in enumerate(wanted) if k == 0 or wanted[k - 1][0] != w[0]]
        tables = self.source.read_in_order([pieces[i] for i in distinct])
        table = pa.table({})
        current = -1
        for i, begin, rows in wanted:
            if i != current:
                table, current = next(tables), i
            yield arrow_to_batch(table.slice(begin, rows), self.num_features, self.feature_scale)


def window_rows(batch_size: int, shuffle_rows: int) -> int:
    """Rows of a rank's shuffle window: ``shuffle_rows`` (4,096 at least) in whole batches."""
    return batch_size * max(1, -(-max(shuffle_rows, 4096) // batch_size))


def _read_ahead(items: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """``items`` produced on a thread, at most ``depth`` ahead; errors re-raised here."""
    done = object()
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def offer(item) -> bool:
        """Put ``item`` unless the consumer has gone (then a blocking put would never end)."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(done)
        except BaseException as exc:  # handed to the consumer
            offer(exc)

    thread = threading.Thread(target=produce, daemon=True, name="shard-read-ahead")
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
