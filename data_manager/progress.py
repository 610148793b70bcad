"""Progress of a backup, restore or verify: bytes, items (artifacts), rate, and, where the total is known,
percentage and ETA.

The API reports to a :data:`~data_manager.api.ProgressFactory`: called with a label (the source being
worked on) it returns a callback, which the repository layer calls with each block's byte count, and with
0 when an artifact is done (see :data:`data_manager.repository.Progress`). A :class:`Progress` is such a factory that
also takes totals (:func:`begin`) and renders: :class:`TerminalProgress` as a tqdm bar on stderr,
:class:`JsonProgress` as JSON lines on stderr (``--json``), throttled to a few updates a second.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

INTERVAL = 0.25  # seconds between two updates: a few a second, readable and cheap


def checked(inner: Callable[[int], None] | None, check: Callable[[], None]) -> Callable[[int], None]:
    """``inner`` (a progress callback, or None), calling ``check`` first at every block: a job's time limit
    is enforced as data moves."""

    def advance(n: int) -> None:
        check()
        if inner is not None:
            inner(n)

    return advance


def begin(factory: Any, operation: str, total_bytes: int | None = None, total_items: int | None = None) -> None:
    """Tell ``factory`` what starts and how much it will move, if it is a :class:`Progress` (a plain
    factory just gets its per-source callbacks)."""
    if isinstance(factory, Progress):
        factory.begin(operation, total_bytes, total_items)


def previous_size(repo: Any, data_id: str) -> int | None:
    """The size of ``data_id``'s newest complete backup in ``repo`` (a
    :class:`~data_manager.engines.base.RepositoryEngine`): what a new backup will likely move."""
    from .errors import DataManagerError

    try:
        complete = [b for b in repo.backups(data_id) if b.complete]
    except DataManagerError:
        return None
    return complete[-1].size if complete else None


class Progress:
    """Counts bytes and items of one operation at a time; subclasses render. Thread-safe (a backup's
    blocks may be counted on a pipeline thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.operation = ""
        self.label = ""
        self.bytes = self.items = 0
        self.total_bytes: int | None = None
        self.total_items: int | None = None
        self._t0 = time.monotonic()
        self._last = 0.0
        self._active = False

    def begin(self, operation: str, total_bytes: int | None = None, total_items: int | None = None) -> None:
        """A new operation (``"backup exp42"``): counters reset; totals where known."""
        self.done()
        with self._lock:
            self.operation, self.label = operation, ""
            self.bytes = self.items = 0
            self.total_bytes, self.total_items = total_bytes or None, total_items or None
            self._t0 = time.monotonic()
            self._last = 0.0
            self._active = True
            self._start()

    def __call__(self, label: str) -> Callable[[int], None]:
        with self._lock:
            if not self._active:  # used as a plain factory, without begin()
                self._active, self._t0 = True, time.monotonic()
                self._start()
            self.label = label
            self._update(force=True)
        return self._advance

    def _advance(self, n: int) -> None:
        """``n`` bytes moved; 0: one artifact done."""
        with self._lock:
            if n:
                self.bytes += n
            else:
                self.items += 1
            self._update()

    def done(self) -> None:
        """The operation ended (or failed): a last update, then the display is cleared."""
        with self._lock:
            if self._active:
                self._update(force=True)
                self._finish()
                self._active = False

    def snapshot(self) -> dict[str, Any]:
        """The current figures: elapsed seconds, rate (bytes/s), percent and ETA (seconds) if the total is known."""
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = self.bytes / elapsed
        percent = eta = None
        if self.total_bytes:
            done = min(self.bytes, self.total_bytes)  # a backup may outgrow the previous one's size
            percent = round(100.0 * done / self.total_bytes, 1)
            eta = round((self.total_bytes - done) / rate, 1) if rate > 0 else None
        return {
            "operation": self.operation, "source": self.label, "bytes": self.bytes, "total_bytes": self.total_bytes,
            "items": self.items, "total_items": self.total_items, "rate": int(rate), "percent": percent,
            "eta_seconds": eta, "elapsed_seconds": round(elapsed, 1),
        }

    def _update(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= INTERVAL:
            self._last = now
            self._render()

    # -- rendering, called with the lock held
    def _start(self) -> None:
        pass

    def _render(self) -> None:
        pass

    def _finish(self) -> None:
        pass


class TerminalProgress(Progress):
    """A tqdm bar on a terminal: ``backup exp42 raw: 45%|████  | 1.2G/2.7G [00:10<00:12, 120MB/s, 3/10 artifacts]``."""

    def __init__(self, file: TextIO | None = None) -> None:
        super().__init__()
        self._file = file or sys.stderr
        self._bar: Any = None

    def _start(self) -> None:
        from tqdm import tqdm  # only when a bar is shown

        try:
            sized = os.get_terminal_size(self._file.fileno()).columns > 0
        except (OSError, ValueError, AttributeError):
            sized = False
        # A terminal that reports no size (some ptys) would get no bar at all from tqdm: assume 80x24.
        self._bar = tqdm(total=self.total_bytes, unit="B", unit_scale=True, unit_divisor=1024, file=self._file,
                         leave=False, dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24,
                         mininterval=INTERVAL, desc=self.operation)

    def _render(self) -> None:
        if self._bar is None:
            return
        items = f"{self.items}/{self.total_items}" if self.total_items else str(self.items)
        self._bar.set_description_str(f"{self.operation} {self.label}".strip(), refresh=False)
        self._bar.set_postfix_str(f"{items} artifacts", refresh=False)
        self._bar.update(self.bytes - self._bar.n)
        self._bar.refresh()  # _update throttles

    def _finish(self) -> None:
        if self._bar is not None:
            self._bar.close()  # leave=False: the line is cleared
            self._bar = None


class JsonProgress(Progress):
    """One JSON object per update on stderr (``--json``): ``{"progress": {...}}`` with :meth:`snapshot`'s fields."""

    def __init__(self, file: TextIO | None = None) -> None:
        super().__init__()
        self._file = file or sys.stderr

    def _render(self) -> None:
        self._file.write(json.dumps({"progress": self.snapshot()}) + "\n")
        self._file.flush()


def for_stderr(as_json: bool, quiet: bool) -> Progress | None:
    """The progress display of a command: JSON lines with ``--json``, a bar when stderr is a terminal,
    nothing with ``-q`` or when stderr is a file or pipe."""
    if quiet:
        return None
    if as_json:
        return JsonProgress()
    if sys.stderr.isatty():
        return TerminalProgress()
    return None
