"""The driver's per-file work runs concurrently, in order, with bounded memory."""

from __future__ import annotations

import threading

import pytest

from pipeline.data.parallel import imap_ordered, map_ordered


def test_results_come_in_order_from_concurrent_calls():
    both_running = threading.Barrier(4, timeout=30)

    def work(i: int) -> int:
        if i < 4:
            both_running.wait()  # passes only when 4 calls run at the same time
        return i * i

    assert map_ordered(work, range(20), threads=4) == [i * i for i in range(20)]


def test_at_most_twice_the_threads_are_held_ahead():
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        return i

    stream = imap_ordered(work, range(1000), threads=3)
    assert next(stream) == 0
    # The consumer took one result: no more than the window (6) plus that one were started.
    with lock:
        assert len(started) <= 7
    assert list(stream) == list(range(1, 1000))


def test_the_earliest_failure_is_raised():
    def work(i: int) -> int:
        if i in (5, 9):
            raise ValueError(f"file {i}")
        return i

    with pytest.raises(ValueError, match="file 5"):
        map_ordered(work, range(20), threads=8)
