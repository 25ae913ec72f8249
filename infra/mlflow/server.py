"""A shared MLflow tracking server: PostgreSQL backend store, S3 artifact store, basic auth on,
bound to a private interface.

    export MLFLOW_AUTH_ADMIN_PASSWORD=...           # the admin's password, first start only
    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # or an instance profile
    python -m infra.mlflow.server start --host 10.0.0.5 --artifacts s3://team-bucket/mlflow
    python -m infra.mlflow.server stop

With no MLFLOW_BACKEND_STORE_URI in the environment, a PostgreSQL of its own (Debian's
`postgresql` package) is created in --dir on first start, listens on 127.0.0.1 only and
requires a password, which is generated and kept in --dir (mode 0600). With it set (a managed
database such as RDS), runs and users go there. Artifacts are proxied by the server
(`--serve-artifacts`): jobs upload through it with their MLflow credentials and need no S3 keys
of their own. Secrets are read from the environment or files, never from the command line,
where `ps` would show them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.processes import free_port, stop_group
from pipeline.secret_files import ensure_private, write_private

DATABASES = ("mlflow", "mlflow_auth")  # runs and models; users and permissions
ROLE = "mlflow"


class ServerError(RuntimeError):
    """A setup problem the operator can fix; the CLI prints it as one line."""


def check_private(host: str) -> None:
    """Basic auth sends passwords in the clear: only loopback or a private network address."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ServerError(
            f"--host {host}: give the IP address of a private interface (127.0.0.1, 10.x, "
            "172.16-31.x, 192.168.x), not a name"
        ) from None
    if addr.is_unspecified or not (addr.is_loopback or addr.is_private):
        raise ServerError(
            f"--host {host} is not a private interface: basic auth sends passwords in the clear; "
            "bind to 127.0.0.1 or a private address and put TLS in front for anything else"
        )


# PostgreSQL --------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    """Debian keeps the server binaries out of PATH, in /usr/lib/postgresql/<version>/bin."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    for directory in versions:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if not found:
        raise ServerError(
            f"PostgreSQL's {name} not found: install the server (Debian: apt-get install "
            "postgresql) or set MLFLOW_BACKEND_STORE_URI to an existing database"
        )
    return found


def _as_db_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; as root, run it as Debian's `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``pgdata``, on 127.0.0.1:``port``, socket in ``pgdata``."""

    pgdata: Path
    port: int

    def uri(self, database: str, password: str) -> str:
        return f"postgresql://{ROLE}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, cmd: list[str], what: str, stdin: str | None = None) -> str:
        proc = subprocess.run(_as_db_owner(cmd), capture_output=True, text=True, input=stdin)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ServerError(f"PostgreSQL {what} failed: {tail[0]} (log: {self.pgdata}/log)")
        return proc.stdout

    def init(self, password: str) -> None:
        """A new cluster: local socket connections trusted (the socket dir is the owner's
        only), TCP connections by password; one role owning the two databases."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.pgdata, "postgres", "postgres")
        self.pgdata.chmod(0o700)
        self._run(
            [_pg_bin("initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-instructions"],
            "initdb",
        )  # fmt: skip
        self.start()
        escaped = password.replace("'", "''")
        statements = [f"CREATE ROLE {ROLE} LOGIN PASSWORD '{escaped}'"]
        statements += [f"CREATE DATABASE {db} OWNER {ROLE}" for db in DATABASES]
        for sql in statements:  # on stdin: a command line is visible to every user (ps)
            self._run(self._psql(), "setup", stdin=sql)

    def _psql(self) -> list[str]:
        """psql reading its SQL from stdin."""
        return [
            _pg_bin("psql"), "-h", str(self.pgdata), "-p", str(self.port), "-U", "postgres",
            "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-f", "-",
        ]  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.pgdata} -c listen_addresses=127.0.0.1"
        self._run(
            [_pg_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "log"), "-w",
             "-t", "60", "-o", options, "start"],
            "start",
        )  # fmt: skip

    def running(self) -> bool:
        status = [_pg_bin("pg_ctl"), "-D", str(self.pgdata), "status"]
        return subprocess.run(_as_db_owner(status), capture_output=True).returncode == 0

    def stop(self) -> None:
        if self.running():
            self._run(
                [_pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"], "stop"
            )


# The tracking server -----------------------------------------------------------------------


@dataclass
class TrackingServer:
    host: str
    port: int
    pid: int
    postgres: Postgres | None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        stop_group(self.pid, grace_s=10)
        if self.postgres is not None:
            self.postgres.stop()


def _auth_config(directory: Path, database_uri: str) -> Path:
    """MLflow's basic-auth settings. The admin's password is not written here: MLflow reads
    MLFLOW_AUTH_ADMIN_PASSWORD when it creates the admin user on the first start."""
    path = directory / "basic_auth.ini"
    text = (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A training job makes hundreds of requests; without a cache each one runs a
        # deliberately slow password hash. A changed or revoked password takes effect on the
        # other server workers within this many seconds.
        "auth_cache_ttl_seconds = 30\n"
    )
    write_private(path, text)
    return path


def _mlflow_bin() -> str:
    candidate = Path(sys.executable).with_name("mlflow")
    return str(candidate) if candidate.exists() else "mlflow"


def _wait_healthy(server: TrackingServer, proc: subprocess.Popen, log: Path, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise ServerError(f"mlflow server exited with {proc.returncode}: {' | '.join(tail)}")
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise ServerError(f"mlflow server did not answer on {server.uri}; see {log}")
        time.sleep(0.5)


def start(
    directory: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    artifacts: str = "s3://mxtrain/mlflow-artifacts",
    pgdata: Path | None = None,
    workers: int = 2,
    timeout_s: float = 180.0,
) -> TrackingServer:
    check_private(host)
    if not artifacts.startswith("s3://"):
        raise ServerError(f"--artifacts {artifacts}: give an s3:// URI (bucket and prefix)")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()

    postgres = None
    backend = os.environ.get("MLFLOW_BACKEND_STORE_URI")
    auth_db = os.environ.get("MLFLOW_AUTH_DATABASE_URI", backend)
    if not backend:
        postgres = Postgres(pgdata.resolve() if pgdata else directory / "postgres", free_port())
        first = not (postgres.pgdata / "PG_VERSION").exists()
        if first and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
            raise ServerError(
                "set MLFLOW_AUTH_ADMIN_PASSWORD: the first start creates the user `admin` "
                "with that password (later starts ignore it)"
            )
        password = ensure_private(directory / "postgres-password", lambda: secrets.token_hex(24))
        if first:
            postgres.init(password)
        else:
            postgres.start()
        backend, auth_db = (postgres.uri(db, password) for db in DATABASES)
    assert auth_db is not None

    # Signs the auth app's forms (CSRF); every server behind one address needs the same key.
    flask_key = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or ensure_private(
        directory / "flask-secret-key", lambda: secrets.token_hex(32)
    )
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(directory, auth_db)),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_key,
    }
    log = directory / "mlflow-server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [_mlflow_bin(), "server", "--app-name", "basic-auth", "--host", host,
             "--port", str(port), "--workers", str(workers), "--serve-artifacts",
             "--artifacts-destination", artifacts],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = TrackingServer(host, port, proc.pid, postgres)
    try:
        _wait_healthy(server, proc, log, timeout_s)
    except BaseException:
        if postgres is not None:
            postgres.stop()
        raise
    state = {"pid": proc.pid, "host": host, "port": port}
    if postgres is not None:
        state |= {"pgdata": str(postgres.pgdata), "pgport": postgres.port}
    (directory / "server.json").write_text(json.dumps(state))
    return server


def _running(directory: Path) -> bool:
    path = directory / "server.json"
    if not path.exists():
        return False
    try:
        os.killpg(json.loads(path.read_text())["pid"], 0)
    except ProcessLookupError:
        return False
    return True


def stop(directory: Path) -> bool:
    """Stop what ``start`` left running in ``directory``; False if nothing was."""
    path = directory / "server.json"
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    postgres = Postgres(Path(state["pgdata"]), state["pgport"]) if "pgdata" in state else None
    TrackingServer(state["host"], state["port"], state["pid"], postgres).stop()
    path.unlink()
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m infra.mlflow.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("--dir", type=Path, default=Path(".mlflow-server"), help="state and logs")
    p.add_argument("--host", default="127.0.0.1", help="a loopback or private IP address")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument(
        "--artifacts", default="s3://mxtrain/mlflow-artifacts", help="where artifacts go"
    )
    p.add_argument("--pgdata", type=Path, help="PostgreSQL data directory (default: DIR/postgres)")
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    args = p.parse_args(argv)
    try:
        if args.action == "stop":
            print("stopped" if stop(args.dir) else f"no server running from {args.dir}")
            return 0
        if _running(args.dir):
            raise ServerError(f"a server from {args.dir} is running: stop it first")
        stop(args.dir)  # what a crashed server left behind (its PostgreSQL, say)
        server = start(args.dir, args.host, args.port, args.artifacts, args.pgdata, args.workers)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"MLflow tracking server on {server.uri} (basic auth; admin user: admin)")
    print(f"  jobs:  MLFLOW_TRACKING_URI={server.uri} MLFLOW_TRACKING_USERNAME=<user> \\")
    print("         MLFLOW_TRACKING_PASSWORD=<password> make train-distributed")
    print(f"  users: {server.uri}/signup, or mlflow.server.auth.client.AuthServiceClient")
    print(f"  stop:  python -m infra.mlflow.server stop --dir {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
