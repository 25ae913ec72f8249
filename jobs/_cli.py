"""What every entry point shares: user errors end in one line and an exit code, bugs keep
their traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.errors import PipelineError


def run_main(main: Callable[[], int | None]) -> None:
    try:
        code = main() or 0
    except PipelineError as exc:
        # Messages may quote a library's multi-line error: the user gets one line.
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr, flush=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        code = 130
    sys.exit(code)
