"""Writing predictions so that a result that looks whole is whole.

The output folder gets ``part-00000.parquet``, ``part-00001.parquet``... and then, last,
``_manifest.json`` (every part with its rows, bytes and SHA-256, the model and the data
scored): a reader that finds the manifest knows the result is complete; a crash leaves parts
without one, and a job that fails in Python deletes the parts it wrote.

An existing output is never replaced silently: a folder that holds anything is refused unless
``overwrite``, and then only this job's kind of files (parts and manifest) are deleted; a
folder holding anything else is refused even then.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.data.contract import MANIFEST
from pipeline.errors import ConfigError, StorageError
from pipeline.storage import Location, check_writable, resolve

PART = re.compile(r"part-\d{5}\.parquet")
#: A part is cut at about this many bytes of Arrow data (it is built in memory, then written
#: in one request).
PART_BYTES = 64 * 2**20


class PredictionWriter:
    def __init__(self, uri: str, s3: S3Config | None = None, overwrite: bool = False) -> None:
        self.uri = uri
        self._s3 = s3 or S3Config()
        self._overwrite = overwrite
        self._loc: Location | None = None
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self.parts: list[dict] = []
        self.rows = 0

    @property
    def loc(self) -> Location:
        assert self._loc is not None, "prepare() first"
        return self._loc

    def prepare(self) -> None:
        """Check the output location before any work: writable, and empty (or, with
        ``overwrite``, holding only an earlier result, which is deleted)."""
        check_writable(self.uri, self._s3)
        self._loc = loc = resolve(self.uri, self._s3)
        try:
            found = loc.filesystem.get_file_info(
                pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
            )
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot list the output location ({exc})") from None
        names = sorted(i.path[len(loc.path) :].lstrip("/") for i in found if i.is_file)
        if not names:
            return
        finished = MANIFEST in names
        if not self._overwrite:
            state = "a finished result" if finished else f"{len(names)} files, no {MANIFEST}"
            raise ConfigError(
                f"--out {self.uri} already holds {state}; pass --overwrite to replace it, or "
                "choose another --out"
            )
        foreign = [n for n in names if n != MANIFEST and not PART.fullmatch(n)]
        if foreign:
            raise ConfigError(
                f"--out {self.uri} holds files this job does not write ({foreign[0]}"
                f"{', ...' if len(foreign) > 1 else ''}); --overwrite deletes only earlier "
                "predictions: choose an empty folder"
            )
        # The manifest first: from then on the old result no longer looks whole.
        for name in sorted(names, key=lambda n: n != MANIFEST):
            self._delete(loc.join(name))

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self._pending_bytes >= PART_BYTES:
            self._flush()

    def finish(self, facts: dict) -> dict:
        """Write what is pending, then the manifest (``facts`` added to it); return it."""
        self._flush()
        manifest = {
            "kind": "predictions",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **facts,
            "rows": self.rows,
            "files": self.parts,
        }
        try:
            with self.loc.filesystem.open_output_stream(self.loc.join(MANIFEST)) as out:
                out.write(json.dumps(manifest, indent=2).encode())
        except OSError as exc:
            raise StorageError(f"{self.uri}/{MANIFEST}: write failed ({exc})") from None
        return manifest

    def abort(self) -> None:
        """Delete the parts written so far (the job failed: nothing half-written stays)."""
        self._pending.clear()
        for part in self.parts:
            with contextlib.suppress(OSError, StorageError):
                self._delete(self.loc.join(part["path"]))
        self.parts.clear()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._pending, self._pending_bytes = [], 0
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=65536, compression="zstd")
        data = sink.getvalue()
        name = f"part-{len(self.parts):05d}.parquet"
        try:
            with self.loc.filesystem.open_output_stream(self.loc.join(name)) as out:
                out.write(data)
        except OSError as exc:
            raise StorageError(f"{self.uri}/{name}: write failed ({exc})") from None
        self.parts.append(
            {
                "path": name,
                "rows": table.num_rows,
                "bytes": data.size,
                "sha256": hashlib.sha256(memoryview(data)).hexdigest(),
            }
        )

    def _delete(self, path: str) -> None:
        try:
            self.loc.filesystem.delete_file(path)
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot delete {path} ({exc})") from None
