"""Reader wrappers every engine can put around an artifact's checked byte stream: read-ahead on a second
thread, and progress counting."""

from __future__ import annotations

import io
import queue
import threading
from typing import Any

from .base import CHUNK, Progress, item_done


class Prefetching(io.RawIOBase):
    """Reads, decompresses and hashes ahead on a second thread (bounded queue), so a restore's own work
    (writing files, feeding a database) overlaps with ours. Errors, corruption found at EOF included,
    surface in the reader's thread at the point they were met."""

    def __init__(self, inner: io.RawIOBase, depth: int = 4) -> None:
        super().__init__()
        self._inner = inner
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._block = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._run, name="dm-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._inner.read(CHUNK)
                self._queue.put(data or b"")
                if not data:
                    return
        except BaseException as exc:
            self._queue.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if not self._block:
            if self._eof:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return 0
            self._block = memoryview(item)
        n = min(len(buf), len(self._block))
        buf[:n] = self._block[:n]
        self._block = self._block[n:]
        return n

    def close(self) -> None:
        if self.closed:
            return
        self._stop.set()
        while self._thread.is_alive():  # unblock a put() on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._inner.close()
        super().close()


class Counting(io.RawIOBase):
    """Reports the bytes read, and the artifact as done once all its ``size`` bytes were read (a restore
    may stop reading at the recorded size, before EOF)."""

    def __init__(self, inner: io.RawIOBase, progress: Progress, size: int) -> None:
        super().__init__()
        self._inner = inner
        self._progress = progress
        self._left = size
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._inner.readinto(buf) or 0
        if n:
            self._progress(n)
            self._left -= n
        self._check_done()
        return n

    def _check_done(self) -> None:
        if not self._ended and self._left <= 0:
            self._ended = True
            item_done(self._progress)

    def close(self) -> None:
        if not self.closed:
            self._check_done()  # an empty artifact need not be read at all
        self._inner.close()
        super().close()
