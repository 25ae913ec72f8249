"""Per-file work on the driver, run concurrently: a footer or an id column is one or two
requests of 20-100 ms to S3 and a few microseconds of CPU, so one file after another spends
the driver's time waiting (8,000 footers took 10 minutes behind a 30 ms proxy). A bounded
pool keeps :data:`IO_THREADS` requests in flight; results come back in the files' order, and
at most ``2 * threads`` of them are held at once, so memory does not grow with the number of
files either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

#: Requests in flight per driver. S3 serves thousands per second per prefix; 32 requests of
#: 30 ms each are about a thousand footers a second, from one process.
IO_THREADS = 32

T = TypeVar("T")
R = TypeVar("R")


def imap_ordered(
    fn: Callable[[T], R], items: Iterable[T], threads: int | None = None
) -> Iterator[R]:
    """``fn(item)`` for every item, up to ``threads`` (:data:`IO_THREADS`) at a time, yielded
    in the items' order.
    The first exception raised by ``fn`` is raised here (for the earliest failing item), and
    the work not yet started is dropped."""
    threads = IO_THREADS if threads is None else threads
    window = max(1, threads) * 2
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="mxtrain-io") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def map_ordered(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> list[R]:
    """:func:`imap_ordered` as a list (for small results: a footer's row counts, say)."""
    return list(imap_ordered(fn, items, threads))
