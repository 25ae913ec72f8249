"""A training worker's MXNet import begins in Ray's setup hook
(pipeline/distributed/early_imports.py). The whole path, through Ray Train's worker group:
test_distributed_training."""

import subprocess
import sys

# A fresh interpreter: this one may have imported MXNet already.
HOOK_AS_RAY_CALLS_IT = """
import sys, threading
from ray._private.runtime_env.setup_hook import load_and_execute_setup_hook
from pipeline.distributed import early_imports

assert "mxnet" not in sys.modules and early_imports.started_at() is None
((name, hook),) = early_imports.runtime_env_vars().items()
assert load_and_execute_setup_hook(hook) is None  # Ray's own loader finds and runs it
assert early_imports.started_at() is not None
early_imports.start()  # a second call starts nothing more
(thread,) = [t for t in threading.enumerate() if t.name == "early-imports"]
assert thread.daemon  # a worker never waits for it to end
thread.join()
print(name, *[m for m in ("mxnet", "horovod.mxnet", "sklearn") if m in sys.modules])
"""


def test_the_hook_ray_runs_imports_mxnet_and_horovod_in_a_thread_once():
    out = subprocess.run(
        [sys.executable, "-c", HOOK_AS_RAY_CALLS_IT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

    # The variable Ray's worker reads at its start; MXNet's import the lean one (no sklearn).
    assert out.stdout.split() == [WORKER_PROCESS_SETUP_HOOK_ENV_VAR, "mxnet", "horovod.mxnet"]
