"""The hand-over helper for sources that read on threads."""

from __future__ import annotations

import queue
import threading
import time

from data_manager.threads import put_unless_stopped


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
