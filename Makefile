# The user's front door. Every target that needs the virtualenv depends on it, so on a fresh
# clone `make train-distributed` alone installs, prepares the data and trains.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

RECIPE ?= digits-cnn
WORKERS ?= 2
# Each shipped recipe family has its data set, prepared on demand.
DEFAULT_DATA := $(if $(filter fashion-%,$(RECIPE)),data/fashion-mnist,data/digits)
DATA ?= $(DEFAULT_DATA)
ARGS ?=
# The slowest tests are listed at the end of every run: the budget of make test is watched there.
PYTEST_ARGS ?= --durations=15
BENCH_SIZE ?= default
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_UI_WORKERS ?= 1
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export MLFLOW_TRACKING_URI

# One thread per worker process: 2 workers share 2 cores without oversubscription.
export OMP_NUM_THREADS ?= 1
export MXNET_CPU_WORKER_NTHREADS ?= 1

# The default local data sets are prepared on demand; a user's DATA is used as given.
DATA_DEP := $(if $(filter data/digits data/fashion-mnist,$(DATA)),$(DATA)/_manifest.json,)
FASHION_SOURCE := /usr/share/datasets/fashion-mnist

HOROVOD_BUILD_ENV := HOROVOD_WITH_MXNET=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
	HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS=-j2 \
	CMAKE_POLICY_VERSION_MINIMUM=3.5

.PHONY: help setup postgres-package fashion-package data data-fashion manifest train train-distributed submit compress tune predict serve mlflow-ui mlflow-server mlflow-server-stop local-cluster object-store object-store-stop test test-unit test-all bench petastorm-venv bench-report lint format clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'
	@echo "Variables: RECIPE=$(RECIPE) WORKERS=$(WORKERS) DATA=$(DATA) ARGS='--set section.key=value ...'"

setup: $(STAMP) ## Create .venv with the pinned stack and horovod built for MXNet + Gloo

$(STAMP): setup.cfg
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip<26" wheel "setuptools<70"
	@# mxnet and numpy first: horovod's build must see them (no build isolation).
	$(BIN)/pip install --quiet mxnet==1.9.1 numpy==1.23.5
	$(BIN)/pip install --quiet -e '.[dev,server]'
	@if $(BIN)/horovodrun --check-build 2>/dev/null | grep -q '\[X\] MXNet'; then \
		echo "horovod already built with MXNet"; \
	else \
		echo "building horovod 0.28.1 with MXNet + Gloo (about 2 minutes)"; \
		$(HOROVOD_BUILD_ENV) $(BIN)/pip install --quiet --no-build-isolation --no-cache-dir horovod==0.28.1; \
	fi
	$(BIN)/horovodrun --check-build | grep -q '\[X\] MXNet' || { echo "horovod lacks MXNet support"; exit 1; }
	$(BIN)/horovodrun --check-build | grep -q '\[X\] Gloo' || { echo "horovod lacks Gloo support"; exit 1; }
	@touch $@

data/digits/_manifest.json: | $(STAMP)
	$(BIN)/python -m jobs.prepare_data --dataset digits --out data/digits --overwrite

data: $(STAMP) ## Write the digits data set as Parquet to data/digits
	$(BIN)/python -m jobs.prepare_data --dataset digits --out data/digits --overwrite

data/fashion-mnist/_manifest.json: | $(STAMP)
	@$(MAKE) --no-print-directory fashion-package
	$(BIN)/python -m jobs.prepare_data --dataset fashion-mnist --out data/fashion-mnist --overwrite

data-fashion: $(STAMP) fashion-package ## Write Fashion-MNIST (Debian's dataset-fashion-mnist, installed when missing) as Parquet to data/fashion-mnist
	$(BIN)/python -m jobs.prepare_data --dataset fashion-mnist --out data/fashion-mnist --overwrite

fashion-package:
	@if [ ! -f $(FASHION_SOURCE)/train-images-idx3-ubyte.gz ]; then \
		echo "installing Debian's dataset-fashion-mnist (the idx files, no download at run time)"; \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dataset-fashion-mnist; } >/dev/null \
			|| echo "warning: could not install dataset-fashion-mnist; prepare_data will say what is missing"; \
	fi

manifest: $(STAMP) ## Check the Parquet at DATA row by row and write its _manifest.json (ARGS=--overwrite to replace one)
	$(BIN)/python -m jobs.write_manifest $(DATA) $(ARGS)

train: $(STAMP) $(DATA_DEP) ## Train RECIPE with 1 worker
	$(BIN)/python -m jobs.train --recipe $(RECIPE) --data $(DATA) --workers 1 $(ARGS)

train-distributed: $(STAMP) $(DATA_DEP) ## Train RECIPE with WORKERS Horovod workers on a local Ray, or submit it to RAY_ADDRESS; RESUME=<run id> continues one
ifeq ($(RAY_ADDRESS),)
	$(BIN)/python -m jobs.train --recipe $(RECIPE) --data $(DATA) --workers $(WORKERS) $(if $(RESUME),--resume $(RESUME)) $(ARGS)
else
	$(MAKE) --no-print-directory submit
endif

submit: $(STAMP) ## Submit the job to the Ray cluster at RAY_ADDRESS (http://head:8265) via the Ray Jobs API
	$(BIN)/python -m jobs.submit -- --recipe $(RECIPE) --data $(if $(findstring ://,$(DATA)),$(DATA),$(abspath $(DATA))) --workers $(WORKERS) $(if $(RESUME),--resume $(RESUME)) $(ARGS)

MODEL ?=
PRUNE ?= 0.8
QUANTIZE ?= int8
compress: $(STAMP) ## Smaller variants of MODEL=models:/<name>@<alias>: PRUNE=0.8 (magnitude-pruned, fine-tuned) and QUANTIZE=int8, measured and registered
	@test -n "$(MODEL)" || { echo "error: give the model to compress: make compress MODEL=models:/<name>@<alias> (e.g. models:/fashion-cnn@candidate)" >&2; exit 2; }
	$(BIN)/python -m jobs.compress --model "$(MODEL)" $(if $(PRUNE),--prune $(PRUNE)) $(if $(QUANTIZE),--quantize $(QUANTIZE)) $(ARGS)

TRIALS ?=
tune: $(STAMP) $(DATA_DEP) ## Search RECIPE's hyperparameters ([tune] section) with Ray Tune: TRIALS trials of WORKERS workers, ASHA; best model registered @tuned (RESUME=<run id> continues a search)
	$(BIN)/python -m jobs.tune --recipe $(RECIPE) --data $(DATA) --workers $(WORKERS) $(if $(TRIALS),--trials $(TRIALS)) $(if $(RESUME),--resume $(RESUME)) $(ARGS)

OUT ?=
SERVE_PORT ?= 5001
predict: $(STAMP) ## Score DATA (Parquet folder or s3://) with MODEL=models:/<name>@<alias>; predictions as Parquet to OUT (Ray Data, 2 actors)
	@test -n "$(MODEL)" || { echo "error: give the model: make predict MODEL=models:/<name>@<alias> DATA=<parquet> OUT=<folder> (e.g. MODEL=models:/digits-cnn@candidate DATA=data/digits/test OUT=runs/predictions/digits-test)" >&2; exit 2; }
	@test -n "$(OUT)" || { echo "error: give the output folder: make predict MODEL=$(MODEL) DATA=<parquet> OUT=<folder or s3://bucket/prefix>" >&2; exit 2; }
	$(BIN)/python -m jobs.predict --model "$(MODEL)" --data "$(DATA)" --out "$(OUT)" $(ARGS)

serve: $(STAMP) ## Serve MODEL=models:/<name>@<alias> over HTTP on 127.0.0.1:SERVE_PORT (MLflow's scoring server; Ctrl-C stops it)
	@test -n "$(MODEL)" || { echo "error: give the model: make serve MODEL=models:/<name>@<alias> (e.g. models:/digits-cnn@candidate)" >&2; exit 2; }
	$(BIN)/python -m jobs.serve --model "$(MODEL)" --port $(SERVE_PORT) $(ARGS)

mlflow-ui: $(STAMP) ## Serve the MLflow UI on MLFLOW_HOST:MLFLOW_PORT (127.0.0.1:5000): one server process, no GenAI job runner
	@# MLflow 3's server also starts a job runner and 7 huey consumers (GenAI scorers and prompt
	@# jobs, ~300 MB each) and 4 workers; reviewing runs needs none of them.
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_UI_WORKERS)

mlflow-server: $(STAMP) ## Start a shared MLflow server (PostgreSQL, S3 artifacts, basic auth): infra/mlflow/README.md
	$(BIN)/python -m infra.mlflow.server start --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) $(ARGS)

mlflow-server-stop: $(STAMP) ## Stop the shared MLflow server (and its PostgreSQL)
	$(BIN)/python -m infra.mlflow.server stop

NODES ?= 2
local-cluster: $(STAMP) ## A Ray cluster of NODES nodes (own raylets, token auth) on this machine, in the foreground; prints how a job joins it; Ctrl-C stops it
	$(BIN)/python -m infra.local.ray_cluster --nodes $(NODES) $(ARGS)

LATENCY_MS ?= 0
object-store: $(STAMP) ## Start a local S3 server (SeaweedFS) on 127.0.0.1:8333 with bucket s3://mxtrain; LATENCY_MS=30 makes it a distant one
	$(BIN)/python -m infra.local.seaweedfs start --dir .object-store --s3-port 8333 --bucket mxtrain --latency-ms $(LATENCY_MS)

object-store-stop: $(STAMP) ## Stop the local S3 server
	$(BIN)/python -m infra.local.seaweedfs stop --dir .object-store

# The MLflow server test runs Debian's PostgreSQL; installed here when missing (as root).
# The package starts a default cluster of its own: stopped again, nothing is left running.
postgres-package:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing Debian's postgresql for the MLflow server test"; \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; } >/dev/null \
			|| echo "warning: could not install postgresql; the MLflow server test will say what is missing"; \
		pg_ctlcluster --force $$(ls /usr/lib/postgresql) main stop 2>/dev/null || true; \
	fi

test: $(STAMP) postgres-package fashion-package ## Unit and integration tests (real Ray, Horovod, MLflow); under 30 minutes
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-unit: $(STAMP) ## The unit tests only (about 2 minutes): the edit-run loop; make test is the gate
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-all: $(STAMP) postgres-package fashion-package ## Every test, the slow ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

PETASTORM_VENV := .bench/petastorm-venv
BENCH_ONLY ?=

bench: $(STAMP) data/fashion-mnist/_manifest.json $(PETASTORM_VENV)/.installed ## Benchmarks: ratios against baselines from the same run -> .bench/results.json (BENCH_ONLY=tta,... runs some groups)
	$(BIN)/python -m jobs.benchmarks.run --size $(BENCH_SIZE) --out .bench/results.json $(if $(BENCH_ONLY),--only $(BENCH_ONLY),)

petastorm-venv: $(PETASTORM_VENV)/.installed ## Petastorm's own virtualenv for the ingest benchmark (it needs pyarrow < 15)

$(PETASTORM_VENV)/.installed: jobs/benchmarks/petastorm-requirements.txt
	rm -rf $(PETASTORM_VENV)
	$(PYTHON) -m venv $(PETASTORM_VENV)
	$(PETASTORM_VENV)/bin/pip install --quiet --upgrade pip
	$(PETASTORM_VENV)/bin/pip install --quiet --no-deps petastorm==0.13.1
	$(PETASTORM_VENV)/bin/pip install --quiet -r jobs/benchmarks/petastorm-requirements.txt
	touch $@

bench-report: $(STAMP) ## Copy .bench/results.json into docs/performance.md's table and the figures README.md quotes
	$(BIN)/python -m jobs.benchmarks.report --results .bench/results.json --page docs/performance.md

lint: $(STAMP) ## ruff (lint + format check) and mypy on pipeline/ and models/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pipeline models

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove the venv, data, local runs and caches
	rm -rf $(VENV) data runs mlruns mlflow.db .mlflow-server .pytest_cache .mypy_cache .ruff_cache .bench .object-store
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
