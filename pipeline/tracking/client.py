"""The MLflow client and what every module that talks to a tracking server shares: one
client per URI, MLflow's INFO lines held, a failure in one line that says what to set, values
as MLflow records them (redacted). The base of ``pipeline/tracking/``: it imports none of
its siblings."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pipeline.redact import redact


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def request_user(uri: str) -> str:
    """The MLflow user a request goes as: the URI's own, else MLFLOW_TRACKING_USERNAME."""
    from urllib.parse import urlsplit

    return urlsplit(uri).username or os.environ.get("MLFLOW_TRACKING_USERNAME", "")


def tracking_problem(uri: str, exc: Exception) -> str:
    """One line; for a server with authentication, which variables to set."""
    text = str(exc)
    if "error code 401" in text:
        return (
            f"MLflow tracking at {uri} refused the credentials (401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server"
        )
    if "error code 403" in text:
        return (
            f"MLflow tracking at {uri}: user {request_user(uri)!r} may not write to experiment(s) "
            "it does not own (403); ask the server's admin for EDIT permission or use another "
            "tracking.experiment"
        )
    return f"MLflow tracking at {uri} cannot be used: {one_line(exc)}"


def param_value(value: Any) -> str:
    """As MLflow records it: a URI's password replaced (see pipeline/redact.py)."""
    return "" if value is None else redact(str(value))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def quiet_mlflow():
    """MLflow's INFO lines ("Registered model ...", download progress) off for a block."""
    import logging

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
