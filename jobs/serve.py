"""Serve a registered model over HTTP on this machine: MLflow's scoring server
(``mlflow models serve --env-manager local``) on 127.0.0.1.

    python -m jobs.serve --model models:/digits-cnn@candidate --port 5001
    make serve MODEL=models:/digits-cnn@candidate

The model is resolved here first, so a missing model or alias is one line, not a traceback;
then the server runs in the foreground until Ctrl-C, and a ready-made ``curl`` call built
from the model's logged input example is printed. MLflow's scoring server has no
authentication: it listens on the loopback interface only; to offer it to other machines,
put an authenticating reverse proxy in front of it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from jobs._cli import run_main
from pipeline.config import TrackingConfig
from pipeline.errors import ConfigError
from pipeline.tracking.model_source import fetch_source_model

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.serve",
        description="Serve a registered model with MLflow's scoring server on this machine "
        "(POST /invocations with dataframe_split, dataframe_records, inputs or instances; "
        "GET /ping, /health, /version).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The server has no authentication and listens on 127.0.0.1 only.\n\n"
        "environment:\n"
        "  MLFLOW_TRACKING_URI   the registry (default sqlite:///<repo>/mlflow.db)\n",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="URI",
        help="models:/<name>@<alias> or models:/<name>/<version>",
    )
    p.add_argument("--port", type=int, default=5001, help="port (default: %(default)s)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface; loopback only, the server has no authentication (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="server worker processes (default: %(default)s)"
    )
    p.add_argument(
        "--timeout", type=int, default=60, help="seconds per request (default: %(default)s)"
    )
    return p


def curl_example(model_dir: Path, host: str, port: int) -> str:
    """A curl call with the model's logged serving example (its first two rows)."""
    example = model_dir / "serving_input_example.json"
    body = json.loads(example.read_text()) if example.exists() else {"inputs": []}
    for key in ("inputs", "instances"):
        if isinstance(body.get(key), list):
            body[key] = body[key][:2]
    split = body.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        split["data"] = split["data"][:2]
        split.pop("index", None)
    return (
        f"curl -s http://{host}:{port}/invocations -H 'Content-Type: application/json' "
        f"-d '{json.dumps(body, separators=(',', ':'))}'"
    )


def serve_command(model_dir: Path, host: str, port: int, workers: int, timeout: int) -> list[str]:
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow),
        "models",
        "serve",
        "-m",
        str(model_dir),
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
        "-w",
        str(workers),
        "-t",
        str(timeout),
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.host not in LOOPBACK:
        raise ConfigError(
            f"--host {args.host}: MLflow's scoring server has no authentication, so it listens "
            "on 127.0.0.1 only; to serve other machines put an authenticating reverse proxy "
            "in front of it"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: not a TCP port")
    uri = TrackingConfig().resolved_uri()
    with tempfile.TemporaryDirectory(prefix="mxtrain-serve-") as tmp:
        source = fetch_source_model(args.model, uri, tmp)
        print(f"serving {args.model} = {source.uri} (run {source.run_id})", flush=True)
        print(f"try:  {curl_example(source.path, args.host, args.port)}", flush=True)
        # MLflow starts its server as `bash -c "exec uvicorn ..."`: this environment's
        # scripts must come first on PATH (make runs us without activating the venv).
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        server = subprocess.Popen(
            serve_command(source.path, args.host, args.port, args.workers, args.timeout),
            env=env,
            start_new_session=True,
        )

        def stop(_signum, _frame) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            _stop_group(server)


def _stop_group(server: subprocess.Popen) -> None:
    """The server and its uvicorn workers, by process group."""
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
