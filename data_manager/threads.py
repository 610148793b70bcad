"""For sources that read on several threads and hand the results over through bounded queues."""

from __future__ import annotations

import queue
import threading
from typing import TypeVar

T = TypeVar("T")


def put_unless_stopped(q: queue.Queue[T], item: T, stop: threading.Event, poll: float = 0.2) -> bool:
    """Put ``item`` on the bounded queue ``q``, waiting for room; False, without queueing it, once ``stop`` is set.

    A plain ``q.put`` would block for ever once the thread that empties ``q`` has failed and gone.
    """
    while not stop.is_set():
        try:
            q.put(item, timeout=poll)
            return True
        except queue.Full:
            pass
    return False
