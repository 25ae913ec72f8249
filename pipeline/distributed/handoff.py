"""The MLflow run's id, handed to the workers after they have started.

A new job's driver opens its MLflow run (the experiment, every parameter, the data set's
description: MLflow's import and a tracking store, two to three seconds of one core) while
Ray Train starts the controller and the workers (seconds more, in processes of their own),
instead of before. The workers' payload is pickled when Ray Train starts them, before the
run exists, so the id travels through the key-value store in Ray's GCS, which every process
of the job reaches: the driver puts it there once the run is open, and a worker that needs it
(rank 0, before it trains) reads it, waiting if need be. It is needed only after the worker
has started, and by then the run has usually been open for a while. (The workers' MLflow
calls are made by the driver: pipeline/tracking/relay.py.)

If the run cannot be opened, the driver says so there instead, and the worker that waits
raises a :class:`~pipeline.errors.TrackingError` (not retried: pipeline/distributed/
failures.py), which ends the training; the driver then reports its own error, which says why.

Only the id and that verdict travel: never a URI, a credential or an error's text.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass

from pipeline.errors import TrackingError

#: The key-value store's namespace for the job's keys.
NAMESPACE = "mxtrain"
#: What a run id from the store must look like (MLflow's are 32 hex digits).
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class RunIdHandoff:
    """Where a worker finds the job's run id: ``known`` when the driver had it before the
    workers started (a resumed run, an untracked job), else the store's ``key``."""

    key: str = ""
    known: str = ""

    @classmethod
    def pending(cls) -> RunIdHandoff:
        """A handoff for a run the driver is still opening (published later, in this Ray)."""
        return cls(key=f"run-id-{uuid.uuid4().hex}")

    @classmethod
    def of(cls, run_id: str) -> RunIdHandoff:
        return cls(known=run_id)

    # -- the driver (connected to Ray) ---------------------------------------------------------

    def publish(self, run_id: str) -> None:
        self._put({"run_id": run_id})

    def fail(self) -> None:
        """The run could not be opened: a worker waiting for it stops waiting and fails."""
        self._put({"failed": True})

    def withdraw(self) -> None:
        """Remove the key at the job's end (a cluster's GCS outlives the job)."""
        if self.key:
            from ray.experimental import internal_kv

            internal_kv._internal_kv_del(self.key, namespace=NAMESPACE)

    def _put(self, value: dict) -> None:
        if not self.key:
            return
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(
            self.key, json.dumps(value), overwrite=True, namespace=NAMESPACE
        )

    # -- a worker ------------------------------------------------------------------------------

    def wait(self, timeout_s: float, poll_s: float = 0.05) -> str:
        """The run id, once the driver has published it; TrackingError if the driver could
        not open the run, or did not say within ``timeout_s``."""
        if self.known or not self.key:
            return self.known
        from ray.experimental import internal_kv

        deadline = time.monotonic() + timeout_s
        while True:
            raw = internal_kv._internal_kv_get(self.key, namespace=NAMESPACE)
            if raw:
                return _run_id(raw)
            if time.monotonic() > deadline:
                raise TrackingError(
                    f"the driver did not open the job's MLflow run within {timeout_s:.0f} s "
                    "of the workers' start; its output says why"
                )
            time.sleep(poll_s)


def _run_id(raw: bytes) -> str:
    """The id in a stored value, checked: the store is shared with everything on the Ray."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = {}
    run_id = value.get("run_id") if isinstance(value, dict) else None
    if isinstance(run_id, str) and RUN_ID.fullmatch(run_id):
        return run_id
    raise TrackingError(
        "the driver could not open the job's MLflow run, so nothing can be recorded; its "
        "output says why"
    )
