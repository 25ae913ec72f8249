"""pipeline/mxnet_import.py: MXNet's package import without scikit-learn and scipy.stats, and
nothing else changed. Each case runs in a fresh interpreter (this one may hold MXNet already)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_mxnet_imported_after_pipeline_leaves_out_sklearn_and_scipy_stats():
    out = _run(
        "import sys, pipeline, mxnet\n"
        "print('sklearn' in sys.modules, 'scipy.stats' in sys.modules, 'pandas' in sys.modules)\n"
        # MXNet works as before.
        "print(mxnet.nd.ones((2, 2)).sum().asscalar())\n"
        # And both import as usual afterwards.
        "import sklearn.base, scipy.stats\n"
        "print(scipy.stats.norm.cdf(0.0))"
    )
    assert out.splitlines() == ["False False False", "4.0", "0.5"]


def test_a_process_that_has_sklearn_already_gives_it_to_mxnet():
    out = _run(
        "import pipeline, sklearn.base, mxnet\nprint(mxnet.model.FeedForward.__mro__[1].__name__)"
    )
    assert out == "BaseEstimator"
