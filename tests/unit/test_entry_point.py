"""jobs/_cli.py: how every entry point ends its process."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# A program whose teardown would print: atexit handlers and object finalizers run only when
# the interpreter tears down.
PROGRAM = """
import atexit, sys
from jobs._cli import run_main
from pipeline.errors import ConfigError

atexit.register(lambda: print("torn down", flush=True))

class Finalized:
    def __del__(self):
        print("finalized", flush=True)

kept = Finalized()

def main():
    print("the job's last line", end="")  # left in the buffer: run_main must flush it
    if sys.argv[1] == "user-error":
        raise ConfigError("optim.epochs: must be > 0, got 0")
    if sys.argv[1] == "bug":
        raise RuntimeError("a bug")
    return int(sys.argv[1])

run_main(main)
"""


def _run(arg: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, arg], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_a_finished_job_ends_its_process_without_the_interpreters_teardown():
    done = _run("3")
    assert done.returncode == 3
    assert done.stdout == "the job's last line"  # flushed; no atexit handler, no finalizer


def test_a_user_error_is_one_line_and_its_exit_code_and_ends_at_once():
    done = _run("user-error")
    assert done.returncode == 2
    assert done.stdout == "the job's last line"
    assert done.stderr == "error: optim.epochs: must be > 0, got 0\n"


def test_a_bug_keeps_its_traceback_and_the_usual_teardown():
    done = _run("bug")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: a bug" in done.stderr
    assert "torn down" in done.stdout
