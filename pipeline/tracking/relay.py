"""The workers' MLflow logging, done by the driver: the workers never import MLflow and
never hold the tracking URI or its credentials.

Rank 0 (its metrics, params, the attempt count, artifacts) and each node's system metrics
sampler hand their calls to the driver through the job's channel in Ray's key-value store
(pipeline/distributed/kv_channel.py): plain JSON values, no MLflow object. The driver,
which has MLflow imported and the run open anyway, applies them with a :class:`RunLogger`
(buffered, in order, patient through an outage). Before, rank 0 imported MLflow and built a
tracking client on a thread of its own after the first step: 1.4 s of one core (more with a
sqlite store's SQLAlchemy) taken from training, which on a machine whose cores all train
holds every rank at the next allreduce (make bench: tracking_overhead).

A message is ``{"method": ..., "kwargs": {...}}``; the driver checks every value, since the
store is shared with everything on the Ray. The driver answers the worker through flags:
``counted-<sender>`` once an attempt was counted, ``refused`` when the server refused the
driver's calls (the worker stops, as it did when its own calls were refused).
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
import threading
import time
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.distributed.kv_channel import KvStore, Receiver, Sender
from pipeline.errors import TrackingError
from pipeline.redact import redact
from pipeline.tracking.client import param_value
from pipeline.tracking.run_logger import RunLogger, metric_entries

#: How often the driver takes the workers' messages (metrics land in MLflow this late).
POLL_S = 1.0
#: How long a driver on a Ray that outlives it waits at the end for the workers' last calls
#: to land before it clears the channel (they are sent on after that in any case; this is
#: for a driver killed then, a trial a search stops).
FLUSH_S = 30.0
#: How often a worker asks whether the driver's calls were refused (a store round trip).
CHECK_EVERY_S = 2.0
#: An artifact larger than this is not sent through the store (the pictures are < 1 MB).
MAX_ARTIFACT_BYTES = 16 * 2**20
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


class RelayLogger:
    """Rank 0's handle on the run, through the driver (which sends the calls with a
    :class:`~pipeline.tracking.run_logger.RunLogger`)."""

    def __init__(self, sender: Sender, check_every_s: float = CHECK_EVERY_S):
        self.sender = sender
        self.check_every_s = check_every_s
        self._checked_at = -math.inf
        #: Once the driver said so: the loop asks before every checkpoint it reports.
        self._counted = False

    def count_attempt(self, max_failures: int, world: int = 0, at_once: bool = False) -> None:
        """Count this start of the worker group in the run's tags (the driver does). A
        restarted group (``at_once``) waits for the count, and stops if it was refused."""
        self._send("count_attempt", {"max_failures": int(max_failures), "world": int(world)})
        if at_once:
            self.wait_counted()
            self._checked_at = -math.inf
            self.check()

    def wait_counted(self, timeout_s: float = 60.0) -> None:
        """Wait until the driver counted this group's attempt (a group that reached its first
        checkpoint is counted before a restart can resume from it); the driver says so
        through an outage too, when the count waits in its queue."""
        if self._counted:
            return
        deadline = time.monotonic() + timeout_s
        while self.sender.flag(f"counted-{self.sender.name}") is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        self._counted = True

    def log_metrics(self, metrics: dict[str, float], step: int) -> list[list]:
        """Send ``metrics`` at ``step``; return them as entries (what a checkpoint keeps, for
        :meth:`replay` by a restarted group)."""
        entries = metric_entries(metrics, step)
        self.replay(entries)
        return entries

    def replay(self, entries: list[list]) -> None:
        """Send metric entries as they were first logged (same timestamps)."""
        batch = [[k, float(v), int(t), int(s)] for k, v, t, s in entries]
        for start in range(0, len(batch), 1000):  # MLflow's limit per log_batch
            self._send("log_batch", {"metrics": batch[start : start + 1000]})

    def log_params(self, params: dict[str, Any]) -> None:
        self._send("log_batch", {"params": [[k, param_value(v)] for k, v in params.items()]})

    def log_artifact(self, path: str, artifact_path: str) -> None:
        data = Path(path).read_bytes()
        if len(data) > MAX_ARTIFACT_BYTES:
            print(f"warning: {Path(path).name} ({len(data):,} bytes) not logged", flush=True)
            return
        encoded = base64.b64encode(data).decode()
        self._send(
            "log_artifact",
            {"name": Path(path).name, "artifact_path": artifact_path, "data": encoded},
        )

    def log_system(self, metrics: dict[str, float], node: str | None) -> None:
        """A system metrics sample of this node; the driver numbers the samples."""
        self._send(
            "system",
            {"metrics": dict(metrics), "node": node, "timestamp": int(time.time() * 1000)},
        )

    def check(self) -> None:
        """Raise the server's refusal of the driver's calls, if there was one (asked at most
        every ``check_every_s``: a store round trip)."""
        now = time.monotonic()
        if now - self._checked_at < self.check_every_s:
            return
        self._checked_at = now
        refused = self.sender.flag("refused")
        if isinstance(refused, str):
            raise TrackingError(refused)

    def close(self) -> None:
        pass  # every message is in the store once sent

    def _send(self, method: str, kwargs: dict) -> None:
        self.sender.send({"method": method, "kwargs": kwargs, "sender": self.sender.name})


class Untracked:
    """Rank 0's logger with ``tracking.enabled=false``: the metrics become entries for the
    checkpoints' history (as with :class:`RelayLogger`) and nothing is sent anywhere."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> list[list]:
        return metric_entries(metrics, step)

    def replay(self, entries: list[list]) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str) -> None:
        pass

    def check(self) -> None:
        pass

    def wait_counted(self, timeout_s: float = 60.0) -> None:
        pass

    def close(self) -> None:
        pass


class DriverRelay:
    """The driver's end: reads the workers' messages every :data:`POLL_S` once the run is
    open (:meth:`attach`) and hands them to the run's :class:`RunLogger`. A message leaves
    the channel once the logger delivered what it asked for (or skipped or dropped it): the
    driver of a trial that a search stops is killed at once, and what it had read but not
    delivered stays for :func:`drain`."""

    def __init__(self, receiver: Receiver, poll_s: float = POLL_S):
        self.receiver = receiver
        self.poll_s = poll_s
        self.logger: RunLogger | None = None
        self._resumed = False
        self._steps: dict[str, int] = {}
        self._refusal_sent = False
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the thread's polls and the final take, one at a time
        self._thread: threading.Thread | None = None
        #: Messages read, with the logger's mark once its calls for them were queued, oldest
        #: first (the logger deals with its calls in the order they were queued).
        self._unacked: deque[tuple[str, int]] = deque()
        self._ack_lock = threading.Lock()
        self._closed = False

    def attach(self, logger: RunLogger, resumed: bool = False) -> None:
        """Start applying messages to ``logger`` (the run is open); ``resumed``: the run's
        system metrics continue after its last logged step."""
        self._use(logger, resumed)
        self._thread = threading.Thread(target=self._poll, name="tracking-relay", daemon=True)
        self._thread.start()

    def take_once(self, logger: RunLogger) -> None:
        """Apply what the channel holds to ``logger`` and clear it, without polling (the
        channel of a driver that was killed, whose run has logged already: :func:`drain`)."""
        self._use(logger, resumed=True)
        self.stop_receiving()

    def _use(self, logger: RunLogger, resumed: bool) -> None:
        self.logger, self._resumed = logger, resumed
        logger.on_done = self._acknowledge

    def stop_receiving(self, flush: bool = True) -> None:
        """Take what the workers left (they have all returned), wait a little for it to land
        (a driver killed meanwhile leaves it in the channel; ``flush=False`` where the
        channel ends with the driver anyway, a local Ray: the calls land while it shuts
        down), and clear the channel; call while this process is still connected to the
        Ray."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.logger is not None:
                self._take()
                if flush:
                    wait = min(FLUSH_S, self.logger.outage_wait_s)
                    self.logger.wait_done(self.logger.mark(), wait)
        finally:
            with self._ack_lock:
                self._closed = True  # the logger's later deliveries have nothing to remove
                self._unacked.clear()
            with contextlib.suppress(Exception):
                self.receiver.close()

    def close(self) -> None:
        """Send what the logger holds (waiting out an outage for at most its
        ``outage_wait_s``)."""
        if self.logger is not None:
            self.logger.close()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._take()
            except Exception as exc:  # the store is the Ray's: a Ray going down ends the job
                print(redact(f"warning: tracking relay: {exc}"), flush=True)
                return

    def _take(self) -> None:
        assert self.logger is not None
        with self._lock:
            for key, message in self.receiver.read():
                before = self.logger.mark()
                try:
                    self._apply(message)
                except (TypeError, ValueError, KeyError):
                    print("warning: tracking relay: a malformed message was skipped", flush=True)
                after = self.logger.mark()
                if after == before:  # done already (an attempt counted), or skipped
                    self.receiver.ack(key)
                else:
                    with self._ack_lock:
                        self._unacked.append((key, after))
            self._acknowledge(self.logger.done)
            self._say_refused()

    def _acknowledge(self, done: int) -> None:
        """The logger dealt with ``done`` calls: remove the messages they came from."""
        with self._ack_lock:
            while self._unacked and self._unacked[0][1] <= done and not self._closed:
                self.receiver.ack(self._unacked.popleft()[0])

    def _apply(self, message: dict) -> None:
        assert self.logger is not None
        method, kwargs = message.get("method"), message.get("kwargs")
        if not isinstance(kwargs, dict):
            raise TypeError("kwargs")
        if method == "log_batch":
            metrics = [_metric(m) for m in kwargs.get("metrics", [])]
            if metrics:
                self.logger.replay(metrics)
            params = {str(k): str(v) for k, v in kwargs.get("params", [])}
            if params:
                self.logger.log_params(params)
        elif method == "count_attempt":
            sender = str(message.get("sender", ""))
            try:
                self.logger.count_attempt(int(kwargs["max_failures"]), int(kwargs["world"]))
            except TrackingError as exc:
                self.refuse(str(exc))
            self.receiver.set_flag(f"counted-{sender}", True)
        elif method == "log_artifact":
            self._artifact(kwargs)
        elif method == "system":
            self._system(kwargs)
        else:
            raise ValueError("method")

    def _artifact(self, kwargs: dict) -> None:
        assert self.logger is not None
        name, where = str(kwargs["name"]), str(kwargs["artifact_path"])
        parts = PurePosixPath(where).parts
        if not _NAME.fullmatch(name) or name in (".", "..") or not parts:
            raise ValueError("artifact name")
        if where.startswith("/") or any(p in (".", "..") or not _NAME.fullmatch(p) for p in parts):
            raise ValueError("artifact path")
        data = base64.b64decode(str(kwargs["data"]), validate=True)
        if len(data) > MAX_ARTIFACT_BYTES:
            raise ValueError("artifact size")
        self.logger.log_artifact(name, data, where)

    def _system(self, kwargs: dict) -> None:
        assert self.logger is not None
        node = kwargs.get("node")
        if node is not None and not _NAME.fullmatch(str(node)):
            raise ValueError("node")
        prefix = f"system/{node}/" if node else "system/"
        values = {str(k): float(v) for k, v in dict(kwargs["metrics"]).items()}
        if not values or not all(_NAME.fullmatch(k) for k in values):
            raise ValueError("metric names")
        step = self._next_step(prefix, next(iter(values)))
        stamp = int(kwargs["timestamp"])
        self.logger.replay([[prefix + k, v, stamp, step] for k, v in values.items()])

    def _next_step(self, prefix: str, key: str) -> int:
        """Samples are numbered per node, on from a resumed run's last one."""
        if prefix not in self._steps:
            self._steps[prefix] = self._last_step(prefix + key) + 1 if self._resumed else 0
        step = self._steps[prefix]
        self._steps[prefix] += 1
        return step

    def _last_step(self, key: str) -> int:
        assert self.logger is not None
        from pipeline.tracking.client import client_for

        try:
            history = client_for(self.logger.uri).get_metric_history(self.logger.run_id, key)
        except Exception:
            return -1
        return max((m.step for m in history), default=-1)

    def _say_refused(self) -> None:
        if self.logger is not None and self.logger.refused is not None:
            self.refuse(str(self.logger.refused))

    def refuse(self, text: str) -> None:
        """Tell the workers to stop (rank 0 raises ``text``, redacted, at its next check):
        the server refused the driver's calls. Said once."""
        if not self._refusal_sent:
            self._refusal_sent = True
            self.receiver.set_flag("refused", redact(text))


def drain(
    uri: str, run_id: str, channel: str, outage_wait_s: float = 300.0, store: KvStore | None = None
) -> int:
    """Log what a driver that was killed left in ``channel`` (a trial that a search's
    scheduler stopped: Tune kills it) to its run ``run_id``; the number of messages. This
    process must be connected to the Ray the job ran on (``store``: another store)."""
    receiver = Receiver(channel, store)
    left = len(receiver.store.keys(f"{channel}/m/"))
    if left:
        relay = DriverRelay(receiver)
        relay.take_once(RunLogger(uri, run_id, outage_wait_s))
        relay.close()
    else:
        receiver.close()
    return left


def _metric(entry: Any) -> list:
    key, value, stamp, step = entry
    if not isinstance(key, str) or not key:
        raise ValueError("metric key")
    return [key, float(value), int(stamp), int(step)]
