"""What tests that run a job in the background share: the job itself (its own folder, output
in files, a trace folder, an MLflow store), a poll with a deadline for any condition, the
wait for a job's first complete checkpoint, and a tiny generator bundle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.conftest import REPO, fresh_mlflow_store

#: A checkpoint is complete once its MANIFEST.json is written (the last file).
CHECKPOINT_DONE = "*/checkpoint_*/MANIFEST.json"


def wait_for(
    condition: Callable[[], object],
    what: str,
    timeout_s: float = 300,
    interval_s: float = 0.05,
    alive: Callable[[], str | None] | None = None,
):
    """Poll ``condition`` until it returns something true (returned); AssertionError naming
    ``what`` after ``timeout_s``, or as soon as ``alive()`` returns a reason the wait is
    pointless (a process that ended)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        if alive is not None:
            reason = alive()
            assert reason is None, f"waiting for {what}: {reason}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(interval_s)


def checkpoints(storage: Path) -> list[Path]:
    """The complete checkpoints under a job's storage (their MANIFEST.json files)."""
    return sorted(storage.glob(CHECKPOINT_DONE))


class BackgroundJob:
    """``python -m <module> ARGS`` (``jobs.train`` by default) running in the background
    with its own folder: ``storage`` (``--storage``), ``trace`` (the workers' trace events),
    an MLflow store of its own (``uri``) unless ``env`` names one, stdout and stderr in files
    (a full pipe would stall the job while nobody reads it)."""

    def __init__(
        self,
        directory: Path,
        args: Sequence[str],
        module: str = "jobs.train",
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ):
        from pipeline.train import trace

        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = self.dir / "runs"
        self.trace = self.dir / "trace"
        self.uri = (env or {}).get("MLFLOW_TRACKING_URI") or fresh_mlflow_store(self.dir / "store")
        self._out = (self.dir / "stdout").open("w")
        self._err = (self.dir / "stderr").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env={
                **os.environ,
                "MLFLOW_TRACKING_URI": self.uri,
                trace.ENV: str(self.trace),
                **(env or {}),
            },
            stdout=self._out,
            stderr=self._err,
            text=True,
            start_new_session=new_session,
        )

    def ended(self) -> str | None:
        """Why waiting on this job is pointless: it ended (with the tail of its stderr)."""
        if self.proc.poll() is None:
            return None
        return f"the job ended with {self.proc.returncode}: {self.stderr()[-3000:]}"

    def wait_for_checkpoint(self, timeout_s: float = 300) -> list[Path]:
        """Block until the job has a complete checkpoint; fail if it ends first."""
        return wait_for(
            lambda: checkpoints(self.storage), "complete checkpoint", timeout_s, alive=self.ended
        )

    def wait(self, timeout_s: float = 600) -> subprocess.CompletedProcess:
        self.proc.wait(timeout=timeout_s)
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, self.stdout(), self.stderr()
        )

    def stdout(self) -> str:
        self._out.flush()
        return (self.dir / "stdout").read_text()

    def stderr(self) -> str:
        self._err.flush()
        return (self.dir / "stderr").read_text()

    def the_run(self, experiment: str = "mxtrain"):
        """(client, run) of the job's one MLflow run (a job keeps one across restarts)."""
        from mlflow import MlflowClient

        client = MlflowClient(self.uri)
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert len(runs) == 1, f"a job keeps one MLflow run, found {len(runs)}"
        return client, runs[0]


def tiny_generator_bundle(directory: Path):
    """digits-gan's generator (8x8 images, 10 classes), untrained, exported as a bundle (the
    GAN's registered half): what scoring, compression and the pyfunc tests load."""
    import mxnet as mx

    from models import build_gan
    from pipeline.config import load_job_config
    from pipeline.data.contract import DatasetInfo, SplitInfo
    from pipeline.model import bundle

    info = DatasetInfo("memory://", (1, 8, 8), 10, {"train": SplitInfo((), 64)})
    arch = load_job_config("digits-gan", []).model.arch
    generator, _, _ = build_gan(arch, info.feature_shape, info.num_classes)
    generator.initialize(mx.init.Xavier())
    generator.hybridize()
    generator(mx.nd.zeros((2, arch.latent_dim)), mx.nd.zeros((2, info.num_classes)))
    meta = bundle.BundleMeta.for_data("generator", 0, info, latent_dim=arch.latent_dim)
    return bundle.write(directory, generator, meta)
