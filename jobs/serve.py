"""Serve a registered model over HTTP on this machine: MLflow's scoring app (its REST
formats) on 127.0.0.1, run by uvicorn behind a guard (pipeline/predict/serving.py).

    python -m jobs.serve --model models:/digits-cnn@candidate --port 5001
    make serve MODEL=models:/digits-cnn@candidate

The model is resolved here first, so a missing model or alias is one line, not a traceback.
Only its bundle is taken from the registry, as data; the server runs this installation's
loader (pipeline/model/installed.py), never code stored with the version. Then the
server runs in the foreground until Ctrl-C, and a ready-made ``curl`` call with two rows of
the model's example is printed. The server has no authentication: it listens on the loopback
interface only and answers only requests addressed to a loopback name; to offer it to other
machines, put an authenticating reverse proxy in front of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from jobs._cli import run_main
from pipeline.config import TrackingConfig
from pipeline.data.table_encoding import TableEncoding
from pipeline.distributed.ray_runtime import stop_on_sigterm
from pipeline.errors import ConfigError
from pipeline.model.bundle import BundleMeta
from pipeline.predict.serving import MAX_BYTES_ENV, MODEL_ENV
from pipeline.tracking.model_source import fetch_source_model

LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Bounds of the options: (lowest, highest).
WORKERS = (1, 64)
TIMEOUT_S = (1, 3600)
MAX_REQUEST_MB = (1, 1024)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.serve",
        description="Serve a registered model with MLflow's scoring app on this machine "
        "(POST /invocations with dataframe_split, dataframe_records, inputs or instances; "
        "GET /ping, /health, /version).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The server has no authentication: it listens on 127.0.0.1 only and answers "
        "only requests addressed to 127.0.0.1 or localhost (421 otherwise). It runs this "
        "installation's model loader, never code stored with the model version.\n\n"
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
        "--workers",
        type=int,
        default=1,
        help=f"server worker processes, {WORKERS[0]}-{WORKERS[1]} (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=int,
        default=60,
        help=f"seconds per request, {TIMEOUT_S[0]}-{TIMEOUT_S[1]} (default: %(default)s)",
    )
    p.add_argument(
        "--max-request-mb",
        type=int,
        default=64,
        help="largest request body in MB; larger ones get 413 unread "
        f"({MAX_REQUEST_MB[0]}-{MAX_REQUEST_MB[1]}, default: %(default)s)",
    )
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every option in its bounds, or one line that says which."""
    if args.host not in LOOPBACK:
        raise ConfigError(
            f"--host {args.host}: the scoring server has no authentication, so it listens "
            "on 127.0.0.1 only; to serve other machines put an authenticating reverse proxy "
            "in front of it"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: not a TCP port (1-65535)")
    for flag, value, (low, high) in (
        ("--workers", args.workers, WORKERS),
        ("--timeout", args.timeout, TIMEOUT_S),
        ("--max-request-mb", args.max_request_mb, MAX_REQUEST_MB),
    ):
        if not low <= value <= high:
            raise ConfigError(f"{flag} {value}: must be between {low} and {high}")


def example_rows(version_dir: Path, meta: BundleMeta):
    """Two rows for the printed curl call and the served model's signature: the version's
    logged serving example when it holds finite rows of the model's width, or for a model of
    table columns rows its encoding takes (it is the registry's data, checked as such); else
    zeros, or a table's fill values and first categories."""
    if meta.table is not None:
        return _table_rows(version_dir, meta.table)
    fallback = np.zeros((2, meta.num_features), np.float32)
    try:
        body = json.loads((version_dir / "serving_input_example.json").read_text())
        rows = np.asarray(body["inputs"][:2], dtype=np.float32)
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return fallback
    if rows.ndim != 2 or rows.shape[1] != meta.num_features or not np.isfinite(rows).all():
        return fallback
    return rows


def _table_rows(version_dir: Path, table: TableEncoding):
    import pandas as pd

    from pipeline.model.gluon_pyfunc import frame_columns

    fallback = pd.DataFrame(table.example_columns())
    try:
        body = json.loads((version_dir / "serving_input_example.json").read_text())
        split = body["dataframe_split"]
        frame = pd.DataFrame(split["data"][:2], columns=split["columns"])[list(table.names)]
        frame = frame.astype({c: fallback[c].dtype for c in fallback.columns})
        table.encode(frame_columns(frame, table), "the logged example")
    except (OSError, ValueError, TypeError, KeyError, IndexError):  # EncodingError included
        return fallback
    return frame if len(frame) else fallback


def curl_example(model_dir: Path, host: str, port: int) -> str:
    """A curl call with two rows of the served model's example, shell-quoted."""
    example = model_dir / "serving_input_example.json"
    body = json.loads(example.read_text()) if example.exists() else {"inputs": []}
    for key in ("inputs", "instances"):
        if isinstance(body.get(key), list):
            body[key] = body[key][:2]
    split = body.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        split["data"] = split["data"][:2]
        split.pop("index", None)
    payload = shlex.quote(json.dumps(body, separators=(",", ":")))
    return (
        f"curl -s http://{host}:{port}/invocations -H 'Content-Type: application/json' -d {payload}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    uri = TrackingConfig().resolved_uri()
    # uvicorn stops on SIGINT and SIGTERM, then raises the signal again with the handler it
    # found; Python's default for SIGTERM ends the process on the spot, and the model's
    # temporary folder stayed behind after every server stopped by it. The jobs' handler
    # unwinds as Ctrl-C does (which uvicorn.run takes as the end of serving).
    stop_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):  # stopped before it served
        _serve(args, uri)
    print("server stopped", file=sys.stderr, flush=True)
    return 0


def _serve(args: argparse.Namespace, uri: str) -> None:
    import uvicorn

    from pipeline.model.installed import save_for_serving

    with tempfile.TemporaryDirectory(prefix="mxtrain-serve-") as tmp:
        source = fetch_source_model(args.model, uri, Path(tmp, "source"))
        served = save_for_serving(
            source.plain, Path(tmp, "served"), example_rows(source.path, source.plain.meta)
        )
        print(f"serving {args.model} = {source.uri} (run {source.run_id})", flush=True)
        print(f"try:  {curl_example(served, args.host, args.port)}", flush=True)
        os.environ[MODEL_ENV] = str(served)
        os.environ[MAX_BYTES_ENV] = str(args.max_request_mb * 1024**2)
        os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(args.timeout)
        # uvicorn stops on SIGINT and SIGTERM, its workers with it.
        uvicorn.run(
            "pipeline.predict.serving:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="warning",
            server_header=False,
        )


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
