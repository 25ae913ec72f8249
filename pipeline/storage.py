"""The one place that turns a URI into a pyarrow filesystem and a boto3 client.

Accepted: a plain path (relative to the current directory), ``file://`` and
``s3://bucket/prefix``. S3 credentials come only from the standard AWS sources (environment,
``AWS_PROFILE`` and the shared config files, or an IAM role), so no secret ever passes through
our configuration, logs or MLflow. Endpoint and region come from :class:`S3Config` or,
when it leaves them empty, from ``AWS_ENDPOINT_URL(_S3)`` and ``AWS_REGION``/``AWS_DEFAULT_REGION``.

Both clients retry transient faults (connection resets, 5xx, SlowDown) with backoff: boto3
in retry mode ``standard``, pyarrow with its standard AWS retry strategy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.config import S3Config
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

    @property
    def bucket(self) -> str:
        return "" if self.is_local else self.path.split("/", 1)[0]

    @property
    def key_prefix(self) -> str:
        return "" if self.is_local else [*self.path.split("/", 1), ""][1]

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def uri_of(self, path: str) -> str:
        """The URI of ``path`` as a user would write it."""
        return path if self.is_local else f"s3://{path}"


def endpoint_url(s3: S3Config) -> str:
    return (
        s3.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3", "")
        or os.environ.get("AWS_ENDPOINT_URL", "")
    )


def region(s3: S3Config) -> str | None:
    return s3.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def s3_filesystem(s3: S3Config) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem; credentials resolved by the AWS SDK's default chain."""
    kwargs: dict = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s3.max_attempts),
        "connect_timeout": s3.connect_timeout_s,
    }
    if region(s3):
        kwargs["region"] = region(s3)
    endpoint = endpoint_url(s3)
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
        if not region(s3):
            kwargs["region"] = "us-east-1"  # S3-compatible servers ignore it; the SDK wants one
    return pafs.S3FileSystem(**kwargs)


def s3_client(s3: S3Config):
    """A boto3 S3 client with retry mode ``standard`` and our timeouts."""
    import boto3
    import botocore.config

    config = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": s3.max_attempts},
        connect_timeout=s3.connect_timeout_s,
        read_timeout=max(30.0, s3.connect_timeout_s),
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url(s3) or None,
        region_name=region(s3) or ("us-east-1" if endpoint_url(s3) else None),
        config=config,
    )


def is_local_uri(uri: str) -> bool:
    """Whether ``uri`` names local files (a path or file://), without making a filesystem."""
    return urlparse(uri).scheme in ("", "file")


def resolve(uri: str, s3: S3Config | None = None) -> Location:
    """``uri`` -> :class:`Location`. Raises StorageError for schemes we do not handle."""
    parsed = urlparse(uri)
    if is_local_uri(uri):
        local = parsed.path if parsed.scheme == "file" else uri
        return Location(uri, pafs.LocalFileSystem(), str(Path(local).expanduser().resolve()))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri}: an S3 URI needs a bucket, like s3://bucket/prefix")
        path = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        return Location(uri, s3_filesystem(s3 or S3Config()), path)
    raise StorageError(f"{uri}: unsupported scheme {parsed.scheme!r}; use a path, file:// or s3://")


def check_access(uri: str, s3: S3Config | None = None) -> None:
    """Fail fast, with one line naming the bucket and endpoint, when ``uri``'s bucket cannot be
    used: endpoint unreachable (after retries), no or wrong credentials, missing bucket.

    Local paths pass. Reads nothing but one listing request.
    """
    loc = resolve(uri, s3)
    if loc.is_local:
        return
    import botocore.exceptions as bex

    s3 = s3 or S3Config()
    where = f"bucket {loc.bucket!r} at {endpoint_url(s3) or 'AWS S3'}"
    client = s3_client(s3)
    try:
        client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key_prefix, MaxKeys=1)
    except bex.NoCredentialsError:
        raise StorageError(
            f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE"
        ) from None
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError) as exc:
        raise StorageError(
            f"cannot reach {where} after {s3.max_attempts} attempts ({type(exc).__name__}); "
            "check the endpoint (AWS_ENDPOINT_URL or s3.endpoint_url) and that the server runs"
        ) from None
    except bex.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",) or status == 404:
            raise StorageError(f"{where} does not exist; create it or fix the URI {uri}") from None
        if (
            code
            in (
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "InvalidToken",
                "ExpiredToken",
                "Forbidden",
            )
            or status == 403
        ):
            raise StorageError(
                f"access denied to {where} ({code or status}): check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's permissions"
            ) from None
        raise StorageError(f"S3 request to {where} failed: {code or status} {exc}") from None


def check_writable(uri: str, s3: S3Config | None = None) -> None:
    """Prove that the job can write where its checkpoints go: put a small probe object (or
    file) and delete it. Without this, read-only credentials pass the listing check and the
    job fails at its first checkpoint, after an epoch of work."""
    import uuid

    check_access(uri, s3)
    loc = resolve(uri, s3)
    probe = loc.join(f".mxtrain-write-probe-{uuid.uuid4().hex}")
    if loc.is_local:
        try:
            loc.filesystem.create_dir(loc.path, recursive=True)
            with loc.filesystem.open_output_stream(probe) as out:
                out.write(b"probe")
            loc.filesystem.delete_file(probe)
        except OSError as exc:
            raise StorageError(
                f"{uri}: cannot write here ({exc}); choose a writable folder"
            ) from None
        return
    import botocore.exceptions as bex

    s3 = s3 or S3Config()
    key = probe.split("/", 1)[1]
    client = s3_client(s3)
    try:
        client.put_object(Bucket=loc.bucket, Key=key, Body=b"probe")
        client.delete_object(Bucket=loc.bucket, Key=key)
    except bex.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        raise StorageError(
            f"{uri}: the credentials may read bucket {loc.bucket!r} but not write to it "
            f"({code}); checkpoints need s3:PutObject and s3:DeleteObject there, or point "
            "storage.path at a writable location"
        ) from None
    except bex.BotoCoreError as exc:
        raise StorageError(f"{uri}: a test write failed ({type(exc).__name__})") from None
