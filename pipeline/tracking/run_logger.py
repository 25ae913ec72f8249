"""The workers' MLflow logging, made by the driver (pipeline/tracking/relay.py hands it
rank 0's and the samplers' calls): buffered, sent by a background thread, and patient.

Training never waits for the tracking server: calls queue up and a thread sends them in
order. While the server cannot be reached, the thread keeps the calls (at most
``max_pending``; past that the oldest are dropped and counted) and retries with backoff;
when the server is back, they arrive in the order they were made. :meth:`RunLogger.close`
waits for the queue to drain, at most ``outage_wait_s`` seconds of outage, then reports
what it could not deliver. A refusal (a bad value, no permission) is reported once and
that call skipped: it would be refused again.

The calls are numbered as they are queued, and ``on_done`` hears how many have been dealt
with (delivered, skipped or dropped; always the oldest first): the relay removes a worker's
message from the channel only then, so that a driver killed with calls still queued leaves
them for whoever drains the channel.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import TrackingError
from pipeline.redact import redact
from pipeline.tracking.client import client_for, one_line, param_value, tracking_problem
from pipeline.tracking.names import TAG_ATTEMPTS, TAG_DROPPED, TAG_GROUP_SIZE, TAG_RESTARTS
from pipeline.tracking.outage import backoff, is_unreachable

_CLOSE: tuple[str, dict] = ("close", {})
#: Artifacts queued at once, in bytes: past this (a long outage) a new one is dropped and
#: counted, so the driver's memory is bounded whatever the workers send.
MAX_PENDING_ARTIFACT_BYTES = 256 * 2**20


def _say(message: str) -> None:
    print(redact(message), file=sys.stderr, flush=True)


def metric_entries(metrics: dict[str, float], step: int) -> list[list]:
    """``metrics`` at ``step`` as ``[key, value, timestamp ms, step]`` entries."""
    now = int(time.time() * 1000)
    # NaN and infinities are logged too (MLflow stores them): a diverged run must show it.
    return [[k, float(v), now, step] for k, v in metrics.items() if v is not None]


class RunLogger:
    """The driver's handle on the run for the workers' calls: metrics by epoch, params,
    artifacts, the attempt count."""

    def __init__(
        self, uri: str, run_id: str, outage_wait_s: float = 300.0, max_pending: int = 10_000
    ):
        self.uri = uri
        self.run_id = run_id
        self.outage_wait_s = outage_wait_s
        self.max_pending = max_pending
        #: Calls dropped because the buffer was full or the outage outlasted close().
        self.dropped = 0
        self._pending: deque = deque()
        self._cond = threading.Condition()
        self._closing_since: float | None = None
        self._queued = 0  # calls queued so far
        self._artifact_bytes = 0  # the artifacts' bytes among them, not dealt with yet
        self._done = 0  # of those, dealt with (the oldest first)
        #: Called (on the sending thread, or the caller's when the buffer overflows) with the
        #: number of calls dealt with so far, after each one.
        self.on_done: Callable[[int], None] | None = None
        #: Set when the server refused the driver's credentials (401/403); the relay tells
        #: the workers to stop.
        self.refused: TrackingError | None = None
        self._warned = False
        self._thread = threading.Thread(target=self._send, name="mlflow-logger", daemon=True)
        self._thread.start()

    # -- what the relay calls for the workers ----------------------------------------------------

    def count_attempt(self, max_failures: int, world: int = 0) -> None:
        """Count this start of the worker group, of ``world`` workers, in the run's tags
        (``mxtrain.attempts``, ``mxtrain.restarts``, ``mxtrain.group_size``), now: rank 0
        waits for the count before it reports a checkpoint, so a group that a restart
        resumes from was counted. Queued only when the server does not answer, so a group
        that starts during an outage trains on instead of failing and burning a restart;
        TrackingError when the server refuses. The driver tagged the new run with the first
        attempt, so a first group that dies before its count lands is counted still."""
        item = ("count_attempt", {"max_failures": max_failures, "world": world})
        try:
            self._call(client_for(self.uri), *item)
        except Exception as exc:
            if not is_unreachable(exc):  # an answer: no credentials, no permission, ...
                raise self._refusal(exc) from None
            self._put(item)

    # They queue plain values; the sending thread makes MLflow's entities of them.
    def replay(self, entries: list[list]) -> None:
        """Queue metric entries (``[key, value, timestamp ms, step]``, as
        :func:`metric_entries` makes them)."""
        batch = [(k, float(v), int(t), int(s)) for k, v, t, s in entries]
        for start in range(0, len(batch), 1000):  # MLflow's limit per log_batch
            self._put(("log_batch", {"metrics": batch[start : start + 1000]}))

    def log_params(self, params: dict[str, Any]) -> None:
        self._put(("log_batch", {"params": [(k, param_value(v)) for k, v in params.items()]}))

    def log_artifact(self, name: str, data: bytes, artifact_path: str) -> None:
        """Queue the file ``name`` holding ``data`` (a worker's picture, < 16 MB): it is written
        to a temporary folder only for its upload, so a driver killed with it queued leaves
        no file behind."""
        with self._cond:
            waiting = self._artifact_bytes
            full = waiting + len(data) > MAX_PENDING_ARTIFACT_BYTES
            self.dropped += int(full)
        if full:
            _say(f"warning: MLflow artifact {name} dropped: {waiting:,} bytes wait")
            return
        self._put(("log_artifact", {"name": name, "data": data, "artifact_path": artifact_path}))

    @property
    def done(self) -> int:
        """How many calls were dealt with so far (delivered, skipped or dropped)."""
        return self._done

    def mark(self) -> int:
        """How many calls were queued so far: once ``on_done`` heard this many, every call
        queued before now was dealt with."""
        with self._cond:
            return self._queued

    def wait_done(self, mark: int, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` until the calls queued before ``mark`` were dealt with
        (whether they were)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= mark, timeout_s)

    def close(self) -> None:
        """Send everything queued (waiting out an outage for at most ``outage_wait_s``), then
        stop the thread."""
        with self._cond:
            self._closing_since = time.monotonic()
            self._pending.append(_CLOSE)
            self._cond.notify()
        self._thread.join()

    # -- the sending thread --------------------------------------------------------------------

    def _put(self, item: tuple[str, dict]) -> None:
        with self._cond:
            overflow = len(self._pending) >= self.max_pending
            if overflow:
                self._forget(self._pending.popleft())
                self.dropped += 1
            self._pending.append(item)
            self._artifact_bytes += _size(item)
            self._queued += 1
            self._cond.notify()
        if overflow:
            self._tell_done()

    def _pop(self, item: tuple[str, dict], dropped: bool = False) -> None:
        """The oldest call, ``item``, was dealt with (unless a full buffer dropped it since)."""
        with self._cond:
            if not self._pending or self._pending[0] is not item:
                return
            self._forget(self._pending.popleft())
            self.dropped += int(dropped)
            self._cond.notify_all()
        self._tell_done()

    def _forget(self, item: tuple[str, dict]) -> None:
        """``item`` left the queue (the caller holds the lock)."""
        self._done += 1
        self._artifact_bytes -= _size(item)

    def _tell_done(self) -> None:
        if self.on_done is None:
            return
        try:
            self.on_done(self._done)
        except Exception as exc:  # the channel's store (the Ray) went away: nothing to tell
            _say(f"warning: MLflow logger: {one_line(exc)}")

    def _send(self) -> None:
        client = client_for(self.uri)
        failures = 0
        outage_started: float | None = None
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                item = self._pending[0]  # stays queued until it was delivered
            if item is _CLOSE:
                self._finish(client)
                return
            try:
                self._call(client, *item)
            except Exception as exc:
                if is_unreachable(exc) and not self._out_of_time(outage_started):
                    if outage_started is None:
                        outage_started = time.monotonic()
                        _say(
                            f"warning: MLflow tracking at {self.uri} is unreachable; training "
                            f"goes on and its metrics are kept (up to {self.max_pending} calls) "
                            "until the server is back"
                        )
                    time.sleep(backoff(failures))
                    failures += 1
                    continue
                if is_unreachable(exc):  # closing, and the outage outlasted outage_wait_s
                    self._give_up()
                    continue
                if re.search(r"error code 40[13]", str(exc)):
                    # The driver has no (valid) credentials: nothing it logs will land.
                    self.refused = self._refusal(exc)
                if not self._warned:
                    self._warned = True
                    _say(f"warning: MLflow logging to {self.uri} failed: {one_line(exc)}")
            if outage_started is not None:
                _say(
                    f"MLflow tracking at {self.uri} is reachable again after "
                    f"{time.monotonic() - outage_started:.0f} s; sending what was kept"
                )
                outage_started, failures = None, 0
            self._pop(item)

    def _refusal(self, exc: Exception) -> TrackingError:
        """The server's answer to a call for the workers, as rank 0 raises it."""
        return TrackingError(f"during training, {tracking_problem(self.uri, exc)}")

    def _out_of_time(self, outage_started: float | None) -> bool:
        """Only a closing logger gives up; it waits ``outage_wait_s`` of outage for the rest."""
        if self._closing_since is None or outage_started is None:
            return False
        return time.monotonic() - max(outage_started, self._closing_since) > self.outage_wait_s

    def _give_up(self) -> None:
        while self._pending[0] is not _CLOSE:  # nothing is queued after close()
            self._pop(self._pending[0], dropped=True)
        _say(
            f"warning: MLflow tracking at {self.uri} stayed unreachable for "
            f"{self.outage_wait_s:g} s (tracking.outage_wait_s); {self.dropped} logging calls "
            "were not delivered"
        )

    def _finish(self, client) -> None:
        if self.dropped:
            _say(f"warning: {self.dropped} MLflow logging calls were dropped (buffer full)")
            with contextlib.suppress(Exception):
                client.set_tag(self.run_id, TAG_DROPPED, str(self.dropped))

    def _call(self, client, method: str, kwargs: dict) -> None:
        if method == "count_attempt":
            tags = client.get_run(self.run_id).data.tags
            # The first group finds no group size yet: its attempt is the one the driver
            # tagged when it opened the run.
            first = TAG_GROUP_SIZE not in tags
            attempt = max(int(tags.get(TAG_ATTEMPTS, "0")) + (0 if first else 1), 1)
            client.set_tag(self.run_id, TAG_ATTEMPTS, str(attempt))
            client.set_tag(self.run_id, TAG_RESTARTS, str(attempt - 1))
            world, before = kwargs.get("world", 0), int(tags.get(TAG_GROUP_SIZE, "0"))
            if world:
                client.set_tag(self.run_id, TAG_GROUP_SIZE, str(world))
            if attempt > 1 and before and world > before:
                # Only an elastic resize grows a group; it is no failure (Ray Train does not
                # count it against max_failures).
                print(f"worker group grew from {before} to {world} workers (elastic)", flush=True)
            elif attempt > 1:
                print(
                    f"worker group restarted after a failure ({attempt - 1} restarts so far, "
                    f"failures allowed: {kwargs['max_failures']})",
                    flush=True,
                )
            return
        if method == "log_artifact":
            with tempfile.TemporaryDirectory(prefix="mxtrain-artifact-") as folder:
                path = Path(folder, kwargs["name"])
                path.write_bytes(kwargs["data"])
                client.log_artifact(self.run_id, str(path), kwargs["artifact_path"])
            return
        if method == "log_batch":
            from mlflow.entities import Metric, Param

            kwargs = {
                "metrics": [Metric(*entry) for entry in kwargs.get("metrics", [])],
                "params": [Param(*pair) for pair in kwargs.get("params", [])],
            }
        getattr(client, method)(self.run_id, **kwargs)


def _size(item: tuple[str, dict]) -> int:
    return len(item[1]["data"]) if item[0] == "log_artifact" else 0
