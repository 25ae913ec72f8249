"""Every name this project writes into MLflow besides the config's own keys: run tags, model
version tags, dataset input tags, the params a search adds. One prefix, ``mxtrain.``, and
one module, so a reader (the UI, a search query, a test) finds each name in one place and
no two modules can spell one thing two ways. MLflow's own names (``mlflow.*``) are here too
where we set them.

Runs recorded before these names were unified carry ``pipeline.*`` tags (recipe, data_uri,
world_size, resume_key, attempts, restarts, ...): ``--resume`` of such a run finds nothing
to resume (its resume key is not found) and starts a new run.
"""

from __future__ import annotations

PREFIX = "mxtrain."

# -- MLflow's own tags ---------------------------------------------------------------------------
#: The description the UI shows on a run or model version page.
TAG_NOTE = "mlflow.note.content"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_COMMIT = "mlflow.source.git.commit"
TAG_BRANCH = "mlflow.source.git.branch"
TAG_REPO_URL = "mlflow.source.git.repoURL"

# -- a training run ------------------------------------------------------------------------------
TAG_RECIPE = "mxtrain.recipe"
TAG_DATA_URI = "mxtrain.data_uri"
TAG_WORLD_SIZE = "mxtrain.world_size"
#: What identifies "the same job" for --resume (recipe, data, settings).
TAG_RESUME_KEY = "mxtrain.resume_key"
#: pipeline/data/digest.py's fingerprint of the splits read (runs and model versions).
TAG_DATA_DIGEST = "mxtrain.data_digest"
TAG_RESUMES = "mxtrain.resumes"
#: Ray Train's name for the run: its checkpoints are under <storage.path>/<name>/ (a run
#: without it, from before the tag, used "<recipe>-<the run id's first 8 digits>").
TAG_TRAIN_RUN = "mxtrain.train_run"
#: The channel in Ray's key-value store through which the job's workers hand their MLflow
#: calls to its driver (pipeline/tracking/relay.py): what a driver killed mid-run left there
#: is taken by whoever outlives it on the same Ray (a search's driver, for its trials).
TAG_RELAY = "mxtrain.relay"
#: Per-rank metrics of each epoch (``rank/<r>/samples_per_sec`` ...: pipeline/train/rank_timing.py)
#: and the epoch's slowest rank.
RANK_PREFIX = "rank/"
SLOWEST_RANK = "slowest_rank"
#: checkpoint.keep_best: the epoch (1-based) whose model was registered, and its metric
#: (``best_val_accuracy``).
BEST_EPOCH = "best_epoch"
BEST_PREFIX = "best_"
#: A fine-tuning run (``jobs.compress --prune``): the model version it fine-tunes.
TAG_FINETUNE_OF = "mxtrain.finetune_of"
#: The live driver (host, pid, start time) and its last heartbeat.
TAG_DRIVER = "mxtrain.driver"
TAG_HEARTBEAT = "mxtrain.heartbeat"
#: Ray Train attempts, worker-group restarts, the latest group's size.
TAG_ATTEMPTS = "mxtrain.attempts"
TAG_RESTARTS = "mxtrain.restarts"
TAG_GROUP_SIZE = "mxtrain.group_size"
#: Tracking calls rank 0 dropped during an outage longer than its queue.
TAG_DROPPED = "mxtrain.tracking_dropped"
#: The code: uncommitted changes, the package version.
TAG_DIRTY = "mxtrain.git.dirty"
TAG_VERSION = "mxtrain.version"
#: What a run is: "predict", "tune" (a training run has none).
TAG_KIND = "mxtrain.kind"

# -- a model version -------------------------------------------------------------------------
#: ``pending``, ``passed`` or why not (the gate of tracking.gate_metric / gate_min).
TAG_GATE = "mxtrain.gate"
TAG_SOURCE_RUN = "mxtrain.source_run"
TAG_VERSION_COMMIT = "mxtrain.git.commit"
#: A headline metric on the version: ``mxtrain.metric.<name>``.
METRIC_TAG_PREFIX = "mxtrain.metric."
#: A smaller variant (int8, pruned) and the version it was made from.
TAG_VARIANT = "mxtrain.variant"
TAG_SOURCE_VERSION = "mxtrain.source_version"
TAG_ACCURACY_DELTA = "mxtrain.accuracy_delta"
TAG_DTYPE = "mxtrain.dtype"
TAG_SPARSITY = "mxtrain.sparsity"

# -- a scoring run -------------------------------------------------------------------------------
TAG_MODEL = "mxtrain.model"

# -- a search ------------------------------------------------------------------------------------
TAG_TRIAL = "mxtrain.tune.trial_id"
TAG_STOPPED = "mxtrain.tune.stopped_early"
TAG_TUNE_PARENT = "mxtrain.tune.parent_run_id"
TAG_RECIPE_TRIAL = "mxtrain.tune.recipe_trial"
TAG_BEST_TRIAL = "mxtrain.tune.best_trial"
TAG_BEST_RUN = "mxtrain.tune.best_run_id"
#: ``mxtrain.tune.best.<key>``: the best trial's value of a searched key.
TAG_BEST_PREFIX = "mxtrain.tune.best."
TAG_REGISTERED = "mxtrain.tune.registered"
#: Where Tune keeps the search's state (a param; recomputed on --resume, never trusted).
PARAM_STORAGE = "tune.experiment_path"

# -- a dataset input -------------------------------------------------------------------------
INPUT_ROWS = "mxtrain.rows"
