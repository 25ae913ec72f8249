"""A leaner ``import mxnet``: without scikit-learn and SciPy's statistics, which it never uses.

MXNet 1.9.1's package ``__init__`` imports every submodule, and two of them reach far:
``mxnet.model`` tries ``from sklearn.base import BaseEstimator`` (the base class of the long-
deprecated ``FeedForward`` API) and ``mxnet.contrib.quantization`` tries ``from scipy import
stats`` (a name it never uses). scikit-learn is installed here (it ships the digits data set),
and with it pandas and ``scipy.stats`` come in, in every process that imports MXNet (each
worker, the driver's preflight, every scoring actor): hundreds of modules and a large share of
the import's time (``python -X importtime -c "import mxnet"`` shows how large). Both imports sit
in ``try: ... except ImportError``, so the finder below answers "not installed" for these two
packages while ``mxnet`` itself is being initialized, and only then: an import of scikit-learn
anywhere else, before or after, is untouched.

Installed by ``pipeline/__init__.py``, so every process that imports ``pipeline`` before MXNet
(all of ours) gets it.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

#: What MXNet's package import tries and can do without.
UNUSED_BY_MXNET = ("sklearn", "scipy.stats")


def _mxnet_initializing() -> bool:
    # importlib marks a module's spec ``_initializing`` while the module's code runs (CPython's
    # import machinery; were the mark gone, this is False and the finder steps aside).
    module = sys.modules.get("mxnet")
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


class LeanMXNetImport(MetaPathFinder):
    """Reports :data:`UNUSED_BY_MXNET` as missing while the ``mxnet`` package initializes.

    A finder is asked only for a module not yet imported, so a process that already has
    scikit-learn gives it to MXNet as before. A thread that imports scikit-learn for the first
    time in the same second as another thread's first ``import mxnet`` would be told it is
    missing: none of ours does (the driver's thread that checks the model imports MXNet
    first; a worker imports it in a thread of its own from its start, while Ray Train's set-up,
    which needs neither package, runs beside it, and before it reads data).
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname in UNUSED_BY_MXNET and _mxnet_initializing():
            raise ModuleNotFoundError(f"{fullname} is not needed by mxnet", name=fullname)
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(f, LeanMXNetImport) for f in sys.meta_path):
        sys.meta_path.insert(0, LeanMXNetImport())
