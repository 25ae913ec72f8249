"""MLflow: runs, lineage, summaries, the registry.

MLflow prints ``View run <name> at: <tracking URI>/#/...`` whenever a run ends against a
tracking server, the URI's password included. Every command here prints its run's id itself,
so the line is turned off once, when this package is imported: every process that talks to
MLflow through this project imports it (the drivers, rank 0, Tune's trials, the scoring
actors), and what they start inherits it.
"""

import os

os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
