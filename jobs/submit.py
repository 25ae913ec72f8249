"""Submit the training job to a Ray cluster through the Ray Jobs API (`ray job submit`
semantics): this folder as the job's working directory, ``python -m jobs.train ARGS`` as its
entrypoint. The job's log is streamed here, and the exit code is the job's.

    python -m jobs.submit --address http://head:8265 -- --recipe digits-cnn --workers 4
    RAY_ADDRESS=http://head:8265 make submit RECIPE=digits-cnn WORKERS=4

The cluster's nodes must hold the pinned stack (the images in infra/docker). Secrets stay on
the cluster: only the non-secret settings named in FORWARDED travel with the job, and S3
credentials come from the nodes' own AWS sources (instance profile, IRSA).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from pathlib import Path

from jobs._cli import run_main
from jobs.train import build_parser as train_parser
from jobs.train import config_from_args
from pipeline.errors import ConfigError, PipelineError, TrainingError
from pipeline.redact import has_password, redact
from pipeline.tracking import code_version

REPO = Path(__file__).resolve().parents[1]
#: Settings a job needs to find its services; never credentials.
FORWARDED = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
#: Not uploaded with the working directory (gitignore patterns, "/" = the top level): local
#: state, data, and the secrets of a local MLflow server or object store.
EXCLUDES = [
    "/.git", "/.venv", "/data", "/runs", "/.bench", "/mlflow.db", "/mlruns", "*.parquet",
    "/.mlflow-server", "/.object-store",
]  # fmt: skip


#: How long a submission waits for the head's job agent, which comes up a few seconds after
#: `ray start --head` returns (Ray answers 500 "No available agent" until then).
AGENT_WAIT_S = 60


class SubmitError(PipelineError):
    """The cluster cannot be reached or refused the job."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.submit",
        description="Submit `python -m jobs.train ARGS` to the Ray cluster at --address "
        "through the Ray Jobs API, stream its log, and exit with the job's status "
        "(0 when it SUCCEEDED).",
        epilog="Everything after -- goes to jobs.train (see python -m jobs.train --help); it "
        "is checked here first. Forwarded from this environment when set: "
        + ", ".join(FORWARDED)
        + ". Credentials are never forwarded: the cluster's nodes bring their own.",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="the cluster's dashboard address, e.g. http://head:8265 (default: $RAY_ADDRESS)",
    )
    p.add_argument(
        "--no-wait", action="store_true", help="print the job id and return without waiting"
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then jobs.train's options")
    return p


def _train_args(raw: list[str], address: str) -> list[str]:
    args = raw[1:] if raw[:1] == ["--"] else raw
    cfg = config_from_args(train_parser().parse_args(args))  # a config error fails here
    if not _on_this_machine(address):
        _refuse_local_outputs(cfg)
    return args


def _on_this_machine(address: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def _refuse_local_outputs(cfg) -> None:
    """On a remote cluster, a local path or a sqlite file lives in the job's working
    directory on the head node: gone with the job, and out of the workers' reach."""
    storage = cfg.storage.path
    if not storage.startswith("s3://"):
        raise ConfigError(
            f"storage.path={storage or '(default: ./runs)'} is a local folder, which a remote "
            "cluster's workers and a restarted driver cannot share; set --storage "
            "s3://bucket/prefix"
        )
    uri = cfg.tracking.resolved_uri()
    if not uri.startswith(("http://", "https://", "databricks")):
        raise ConfigError(
            f"the tracking URI {redact(uri)} is a local store, which a job on a remote cluster "
            "would write on its head node and lose; set MLFLOW_TRACKING_URI to the team's "
            "MLflow server (http://host:5000, see infra/mlflow)"
        )


def _refuse_passwords(env: dict[str, str], train_args: list[str]) -> None:
    """A job's env and command line are stored by the cluster and shown in its dashboard:
    a URI with a secret in either (what :func:`~pipeline.redact.redact` hides) is refused,
    not sent."""
    where = [name for name, value in env.items() if has_password(value)]
    where += [f"argument {redact(a)!r}" for a in train_args if has_password(a)]
    if where:
        raise ConfigError(
            f"{where[0]} holds a secret in a URI (user:password@, token@ or a signed query),"
            " and credentials are never sent with a job: drop it from the URI and give the"
            " cluster MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or its own S3"
            " credentials (see infra/k8s/rayjob.yaml)"
        )


def _auth_headers() -> dict[str, str]:
    """Ray clusters require a token by default since Ray 2.52: like `ray job submit`, send
    the one in RAY_AUTH_TOKEN or ~/.ray/auth_token, if there is one."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def submit(address: str, train_args: list[str]) -> tuple[object, str]:
    from ray.job_submission import JobSubmissionClient

    env = {name: os.environ[name] for name in FORWARDED if os.environ.get(name)}
    # The uploaded copy has no .git: the run's code tags come from this checkout.
    env.update(code_version.submit_env())
    _refuse_passwords(env, train_args)
    try:
        client = JobSubmissionClient(address, headers=_auth_headers())
    except Exception as exc:  # connection refused, bad scheme, auth
        text = _first_line(exc)
        if re.search(r"\b40[13]\b|[Uu]nauthori[sz]ed|[Aa]uthentication", str(exc)):
            raise SubmitError(
                f"the Ray cluster at {address} refused the request without a valid token: set"
                " RAY_AUTH_TOKEN (or put the cluster's token in ~/.ray/auth_token)"
            ) from None
        raise SubmitError(f"cannot reach the Ray cluster at {address}: {text}") from None
    entrypoint = " ".join(["python", "-m", "jobs.train", *map(_quote, train_args)])
    deadline = time.monotonic() + AGENT_WAIT_S
    waited = False
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env},
                metadata={"submitted_by": "jobs.submit"},
            )
            return client, job_id
        except Exception as exc:  # the Jobs API's answer, as RuntimeError/ConnectionError
            if "No available agent" not in str(exc):
                raise SubmitError(
                    f"the Ray cluster at {address} did not take the job: {_first_line(exc)}"
                ) from None
            if time.monotonic() > deadline:
                raise SubmitError(
                    f"the Ray cluster at {address} has no job agent after {AGENT_WAIT_S} s (a"
                    " head just started brings one up within seconds); see the head's"
                    " logs/dashboard_agent.log: another Ray on that machine may hold the"
                    " agent's port (ray start --dashboard-agent-listen-port=<free port>)"
                ) from None
        if not waited:
            print(
                f"waiting for the cluster's job agent (a head just started; up to "
                f"{AGENT_WAIT_S} s)",
                flush=True,
            )
            waited = True
        time.sleep(1.0)


def follow(client, job_id: str) -> str:
    """Stream the job's log until it ends; return its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())
    status = str(client.get_job_status(job_id))
    while status in ("PENDING", "RUNNING"):  # the log can end a moment before the status
        time.sleep(0.5)
        status = str(client.get_job_status(job_id))
    return status.rsplit(".", 1)[-1]


def _last_error(logs: str) -> str:
    lines = [ln.strip() for ln in logs.splitlines() if ln.strip()]
    ours = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error:")]
    others = [ln for ln in lines if "Error" in ln]
    return (ours or others or lines or ["(no output)"])[-1]


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.address:
        raise ConfigError("no cluster: set RAY_ADDRESS or --address (e.g. http://head:8265)")
    train_args = _train_args(args.train_args, args.address)
    client, job_id = submit(args.address, train_args)
    print(f"submitted job {job_id} to {args.address}", flush=True)
    if args.no_wait:
        return 0
    try:
        status = follow(client, job_id)
    except Exception as exc:  # the connection to the dashboard, lost while following
        raise SubmitError(
            f"lost the Ray cluster at {args.address} while following job {job_id}"
            f" ({_first_line(exc)}); the job goes on there: `ray job logs {job_id}` or the"
            " dashboard shows it"
        ) from None
    if status != "SUCCEEDED":
        raise TrainingError(f"job {job_id} {status}: {_last_error(client.get_job_logs(job_id))}")
    print(f"job {job_id} SUCCEEDED", flush=True)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
