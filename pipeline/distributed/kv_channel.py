"""A one-way channel of JSON messages from the workers to the driver, through the key-value
store in Ray's GCS, which every process of the job reaches (the workers' rank 0 and system
metrics samplers send; the driver reads; pipeline/tracking/relay.py).

Each sender is one process's object: its messages are keys ``<channel>/m/<sender>/<seq>``,
so the driver reads them in the order each sender put them, and a sender's messages
outlive the sender (a worker that dies has put what it put). The driver answers through a
few named flags (``<channel>/f/<name>``). Values are JSON (never a pickle: the store is
shared with everything on the Ray) and checked by the reader.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Protocol

from pipeline.distributed.handoff import NAMESPACE


class KvStore(Protocol):
    def put(self, key: str, value: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def delete(self, key: str, by_prefix: bool = False) -> None: ...


class RayKv:
    """Ray's GCS key-value store, in the job's namespace (this process must be connected)."""

    def put(self, key: str, value: bytes) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(key, value, overwrite=True, namespace=NAMESPACE)

    def get(self, key: str) -> bytes | None:
        from ray.experimental import internal_kv

        return internal_kv._internal_kv_get(key, namespace=NAMESPACE)

    def keys(self, prefix: str) -> list[str]:
        from ray.experimental import internal_kv

        found = internal_kv._internal_kv_list(prefix, namespace=NAMESPACE)
        return [k.decode() if isinstance(k, bytes) else k for k in found]

    def delete(self, key: str, by_prefix: bool = False) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(key, del_by_prefix=by_prefix, namespace=NAMESPACE)


class Sender:
    """One process's end of ``channel``: messages in the order :meth:`send` was called."""

    def __init__(self, channel: str, store: KvStore | None = None):
        self.channel = channel
        self.store = store or RayKv()
        # Senders sort by when they were made: a restarted group's after the one it replaced.
        self.name = f"{time.time_ns():020d}-{os.getpid()}-{id(self):x}"
        self._seq = 0
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode()  # NaN and infinities pass (a diverged metric)
        with self._lock:
            key = f"{self.channel}/m/{self.name}/{self._seq:010d}"
            self._seq += 1
            self.store.put(key, data)

    def flag(self, name: str) -> Any:
        """The driver's answer ``name``, or None while it has not given one."""
        raw = self.store.get(f"{self.channel}/f/{name}")
        return _json(raw)


class Receiver:
    """The driver's end of ``channel``. A message stays in the store until the driver
    acknowledges it (:meth:`ack`), once what it asked for is done: a driver killed before
    that (a trial a search stops) leaves it for whoever drains the channel
    (pipeline/tracking/relay.py)."""

    def __init__(self, channel: str, store: KvStore | None = None):
        self.channel = channel
        self.store = store or RayKv()
        self._read: set[str] = set()  # read by this receiver, not acknowledged yet
        self._lock = threading.Lock()

    def read(self) -> list[tuple[str, dict[str, Any]]]:
        """Every message this receiver has not read yet, as (key, message), each sender's in
        its order; a value that is not a JSON object is removed and skipped."""
        with self._lock:
            keys = sorted(set(self.store.keys(f"{self.channel}/m/")) - self._read)
            self._read.update(keys)
        out = []
        for key in keys:
            message = _json(self.store.get(key))
            if isinstance(message, dict):
                out.append((key, message))
            else:
                self.ack(key)
        return out

    def ack(self, key: str) -> None:
        """The message ``key`` was dealt with: remove it from the store."""
        self.store.delete(key)
        with self._lock:
            self._read.discard(key)

    def set_flag(self, name: str, value: Any) -> None:
        self.store.put(f"{self.channel}/f/{name}", json.dumps(value).encode())

    def close(self) -> None:
        """Remove everything of the channel (a cluster's GCS outlives the job)."""
        self.store.delete(f"{self.channel}/", by_prefix=True)


def _json(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class MemoryKv:
    """A store in this process, for tests."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = value

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self._data if k.startswith(prefix)]

    def delete(self, key: str, by_prefix: bool = False) -> None:
        with self._lock:
            for k in [k for k in self._data if (k.startswith(key) if by_prefix else k == key)]:
                del self._data[k]
