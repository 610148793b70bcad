"""Running the sources of one job: one after another, or up to N at once on threads (``--parallel N``).

Each source streams with bounded memory, so N at once cost N times that. What stays as with one at a time:

* the job's check (time limit, lock read back from the storage) runs before each source starts;
* the first failure stops the job: no new source starts, and running ones are stopped at their next block
  of data (:meth:`SourceRunner.guard` wraps their progress callbacks) with :class:`Stopped`; the job then
  fails with that first error once they have returned (what they wrote is an incomplete backup);
* Ctrl-C and the job's time limit (a SIGINT from the watchdog) reach the thread that called
  :meth:`SourceRunner.run`, which then stops the others the same way, waits at most ``grace`` seconds for
  them, and re-raises. A source stuck where it never writes nor reads is left behind on its daemon thread
  (it can no longer write anything that counts: the job has failed, no ``backup.json`` follows).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from .errors import DataManagerError

T = TypeVar("T")


class Stopped(DataManagerError):
    """A source was stopped because another source of its job failed, or the job was interrupted."""


class SourceRunner(Generic[T]):
    """Runs ``work(item)`` for each item, ``parallel`` at a time (1: in the calling thread, in order).

    One runner per job: once stopped, it stays stopped.
    """

    def __init__(self, parallel: int, *, poll: float = 0.2, grace: float = 10.0) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {parallel}")
        self.parallel = parallel
        self._poll = poll
        self._grace = grace
        self._stop = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def guard(self, advance: Callable[[int], None]) -> Callable[[int], None]:
        """``advance`` (a progress callback, called as data moves) raising :class:`Stopped` once the job stops."""
        stop = self._stop

        def guarded(n: int) -> None:
            if stop.is_set():
                raise Stopped("stopped: another source of this job failed, or the job was interrupted")
            advance(n)

        return guarded

    def run(self, items: Sequence[T], work: Callable[[T], None], *, between: Callable[[], None] = lambda: None,
            tick: Callable[[], None] = lambda: None) -> None:
        """Run every item; raise the first failure once the running ones have stopped.

        ``between`` (the job's check) is called in the calling thread before each item starts; ``tick`` (the
        time limit's check) every ``poll`` seconds while it waits for running items.
        """
        if self.parallel == 1 or len(items) <= 1:
            for item in items:
                between()
                work(item)
            return
        done: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
        running: dict[int, threading.Thread] = {}
        pending = list(enumerate(items))
        failure: BaseException | None = None
        try:
            while pending or running:
                while pending and failure is None and len(running) < self.parallel:
                    between()
                    index, item = pending.pop(0)
                    thread = threading.Thread(target=self._work, args=(index, item, work, done),
                                              name=f"dm-source-{index}", daemon=True)
                    running[index] = thread
                    thread.start()
                try:
                    # A timed wait: Ctrl-C and the watchdog's SIGINT interrupt it, and the time limit is
                    # checked here too when the job does not run in the main thread.
                    index, error = done.get(timeout=self._poll)
                except queue.Empty:
                    tick()
                    continue
                running.pop(index).join()
                if error is not None and failure is None:
                    failure = error
                    self._stop.set()
                    pending.clear()
        except BaseException:
            self._stop.set()
            self._wait(done, running, self._grace)
            raise
        if failure is not None:
            raise failure

    @staticmethod
    def _work(index: int, item: T, work: Callable[[T], None], done: queue.Queue[tuple[int, BaseException | None]]) -> None:
        try:
            work(item)
        except BaseException as exc:  # handed to the calling thread
            done.put((index, exc))
        else:
            done.put((index, None))

    @staticmethod
    def _wait(done: queue.Queue[tuple[int, BaseException | None]], running: dict[int, threading.Thread],
              grace: float) -> None:
        """Give the running items up to ``grace`` seconds to notice the stop; a second Ctrl-C ends the wait."""
        deadline = time.monotonic() + grace
        try:
            while running and (left := deadline - time.monotonic()) > 0:
                try:
                    index, _ = done.get(timeout=left)
                except queue.Empty:
                    break
                running.pop(index, None)
        except KeyboardInterrupt:
            pass
