"""The one place that turns a data or storage URI into a pyarrow filesystem and a path.

Accepted: a plain path (relative paths are taken from the current directory), ``file://`` and
``s3://bucket/prefix``. S3 settings come from the standard AWS sources (environment variables,
``AWS_PROFILE`` and the shared config files), with ``AWS_ENDPOINT_URL`` for S3-compatible
servers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.errors import StorageError


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem to use and the path inside it (no scheme)."""

    uri: str
    filesystem: pafs.FileSystem
    path: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def uri_of(self, path: str) -> str:
        """The URI a reader on another machine (a Ray worker) can open ``path`` with."""
        return path if self.is_local else f"s3://{path}"


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})


def resolve(uri: str) -> Location:
    """``uri`` -> :class:`Location`. Raises StorageError for schemes we do not handle."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        local = parsed.path if parsed.scheme == "file" else uri
        return Location(uri, pafs.LocalFileSystem(), str(Path(local).expanduser().resolve()))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri}: an S3 URI needs a bucket, like s3://bucket/prefix")
        path = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        return Location(uri, _s3_filesystem(), path)
    raise StorageError(f"{uri}: unsupported scheme {parsed.scheme!r}; use a path, file:// or s3://")
