"""Riding out a tracking server that is briefly unreachable.

Training must not fail, nor lose what it logs, because the MLflow server restarts or its
network blips: the driver buffers the workers' calls (:mod:`pipeline.tracking.run_logger`) and
retries its own (:func:`retry_while_unreachable`) for up to ``tracking.outage_wait_s``.
Only "could not reach the server" is retried; a refusal (401, 403, a bad value) is an answer
and is reported at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from pipeline.errors import TrackingError
from pipeline.process_env import environment
from pipeline.redact import redact

T = TypeVar("T")

#: What MLflow's REST client and requests say when no answer came back (no connection, reset,
#: timeout, a proxy's 502/503/504).
_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "ConnectionError",
    "Connection aborted",
    "Connection reset",
    "RemoteDisconnected",
    "Read timed out",
    "timed out",
    "error code 502",
    "error code 503",
    "error code 504",
    "too many 502",
    "too many 503",
    "too many 504",
)

#: Environment for processes whose MLflow calls we retry ourselves: MLflow's own retries
#: (7 by default, with exponential backoff) would block one call for minutes.
FAST_FAILING = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextlib.contextmanager
def fast_failing() -> Iterator[None]:
    """:data:`FAST_FAILING` in this process's environment for a block (MLflow reads it on
    every call), restored afterwards."""
    with environment(FAST_FAILING):
        yield


def is_unreachable(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(mark in text for mark in _UNREACHABLE)


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): 0.5, 1, 2, 4, then 5."""
    return min(5.0, 0.5 * 2**attempt)


def retry_while_unreachable(
    call: Callable[[], T],
    uri: str,
    what: str,
    wait_s: float,
    progress: Callable[[str], None] = lambda _msg: None,
) -> T:
    """``call()``, retried while the server at ``uri`` cannot be reached, for up to ``wait_s``
    seconds; then a TrackingError that says what could not be done."""
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            if time.monotonic() >= deadline:
                raise TrackingError(
                    f"MLflow tracking at {uri} was unreachable for {wait_s:g} s while {what} "
                    f"(tracking.outage_wait_s); the checkpoints are kept: once the server is "
                    "back, continue with --resume <run id>"
                ) from None
            if attempt == 0:
                progress(
                    redact(
                        f"MLflow tracking at {uri} is unreachable while {what}; retrying for up "
                        f"to {wait_s:g} s"
                    )
                )
            time.sleep(backoff(attempt))
            attempt += 1
