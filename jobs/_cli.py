"""What every entry point shares: user errors end in one line and an exit code, bugs keep
their traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from pipeline.errors import PipelineError


def exit_code(main: Callable[[], int | None]) -> int:
    """Run ``main``; a user error (PipelineError) or Ctrl-C becomes one line on stderr and
    its exit code. Any other exception is a bug and keeps its traceback."""
    try:
        return main() or 0
    except PipelineError as exc:
        # Messages may quote a library's multi-line error: the user gets one line.
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """The process's entry point: :func:`exit_code`, then the process ends at once.

    Everything a job does is done by then: its Ray shut down, its run ended, its files closed.
    What is left is the interpreter's teardown, which frees every object of Ray, MLflow, MXNet
    and pyarrow one by one: about 2 s after every training job on 2 cores, waited for before
    the prompt comes back. A bug's traceback (any other exception) unwinds as usual."""
    code = exit_code(main)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
