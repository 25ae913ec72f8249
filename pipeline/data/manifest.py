"""Writing ``_manifest.json``: the record that a data set is whole and what its files hold.

A manifest lists, per split, every file with its rows, bytes and SHA-256, and is always the
last thing written: a reader that finds it knows the set is complete, and a worker that reads
a file whole checks its checksum. ``jobs.prepare_data`` writes one with the data; for Parquet
written elsewhere, :func:`certify` reads every file, checks every row against the contract
(and ids across splits), and only then writes it (``python -m jobs.write_manifest``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.data.contract import (
    CONTRACT_VERSION,
    IDS_UNIQUE,
    MANIFEST,
    check_rows,
    check_unique_ids,
    ids_proof,
    inspect_dataset,
    read_failure,
    read_manifest,
)
from pipeline.errors import DataError, StorageError
from pipeline.storage import Location, resolve


def new_manifest(feature_shape, num_classes: int, schema: pa.Schema, source: str) -> dict:
    return {
        "contract_version": CONTRACT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "feature_shape": list(feature_shape),
        "num_classes": num_classes,
        "schema": {f.name: str(f.type) for f in schema},
        "splits": {},
    }


def file_entry(name: str, data: bytes | pa.Buffer) -> dict:
    """A Parquet file's line in the manifest: rows, bytes, checksum and the rows of each row
    group (so the driver plans from the manifest without reading any footer). ``data`` is
    the file's bytes, hashed where they are (an Arrow buffer is not copied)."""
    view = memoryview(data)
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return {
        "path": name,
        "rows": meta.num_rows,
        "bytes": view.nbytes,
        "sha256": hashlib.sha256(view).hexdigest(),
        "row_groups": groups,
    }


def save(loc: Location, manifest: dict) -> None:
    """Write the manifest (last, after every data file)."""
    try:
        with loc.filesystem.open_output_stream(loc.join(MANIFEST)) as out:
            out.write(json.dumps(manifest, indent=2).encode())
    except OSError as exc:
        raise StorageError(f"{loc.uri}/{MANIFEST}: write failed ({exc})") from None


def certify(
    uri: str,
    overwrite: bool = False,
    s3: S3Config | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict:
    """Check every row of the Parquet under ``uri`` and write its manifest; return it.

    Refuses (DataError) a set that breaks the contract anywhere (schema, a value, an id used
    twice), and a set that already has a manifest unless ``overwrite``."""
    info = inspect_dataset(uri, s3=s3, require_manifest=False, trust_manifest=False)
    loc = resolve(uri, s3)
    if read_manifest(loc) is not None and not overwrite:
        raise DataError(
            f"{uri} already has a {MANIFEST}; pass --overwrite to check the files again and "
            "replace it"
        )
    check_unique_ids(info, s3, trust_manifest=False)  # this is where the proof is made
    first = pq.read_schema(info.splits["train"].files[0], filesystem=loc.filesystem)
    manifest = new_manifest(info.feature_shape, info.num_classes, first, f"certified {uri}")
    for split, split_info in info.splits.items():
        files = []
        for path in split_info.files:
            where = loc.uri_of(path)
            try:
                with loc.filesystem.open_input_file(path) as fh:
                    data = fh.read_buffer()
                table = pq.read_table(pa.BufferReader(data), use_threads=True)
            except (pa.ArrowException, OSError) as exc:
                raise read_failure(exc, where) from None
            check_rows(table, info.num_classes, where)
            files.append(file_entry(path.rsplit("/", 1)[-1], data))
        manifest["splits"][split] = {"rows": split_info.rows, "files": files}
        progress(f"  {split:<5} {split_info.rows:>9} rows in {len(files)} files: checked")
    manifest[IDS_UNIQUE] = ids_proof(manifest["splits"])
    save(loc, manifest)
    return manifest
