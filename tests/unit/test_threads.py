"""The threading helpers: the stop-aware hand-over and the background call."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from data_manager.threads import Background, put_unless_stopped


def test_put_waits_for_room() -> None:
    q: queue.Queue[int] = queue.Queue(1)
    stop = threading.Event()
    assert put_unless_stopped(q, 1, stop)
    threading.Timer(0.1, q.get).start()
    started = time.monotonic()
    assert put_unless_stopped(q, 2, stop, poll=0.02)
    assert time.monotonic() - started >= 0.09 and q.get_nowait() == 2


def test_put_gives_up_once_stopped() -> None:
    q: queue.Queue[int] = queue.Queue(1)
    q.put(1)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert not put_unless_stopped(q, 2, stop, poll=0.02)  # full and no consumer: returns instead of hanging
    assert q.get_nowait() == 1 and q.empty()
    assert not put_unless_stopped(queue.Queue(), 3, stop)  # stopped: nothing is queued, even with room


def test_background_returns_the_value_or_raises_the_error_in_the_caller() -> None:
    started = threading.Event()

    def slow() -> int:
        started.set()
        time.sleep(0.05)
        return 7

    job = Background(slow, "t")
    assert started.wait(1)  # running before result() is asked for
    assert job.result() == 7

    def broken() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        Background(broken, "t").result()
