"""The trained model as a thing of its own, apart from where it is recorded: the bundle format
a network leaves training in (``bundle.py``), the pyfunc loaders logged with it and the
installed loader that reads a registered version as data (``installed.py``), pruning masks
(``prune.py``) and what judges a classifier (``diagnostics.py``, ``pictures.py``).

Below ``train/``, ``tracking/``, ``compress/`` and ``predict/``, which all use it; it imports
nothing of theirs, nothing of Ray or Horovod, and MLflow only as a file format (the pyfunc
loaders, a model's signature, a folder to serve), never a tracking server."""
