"""Reader wrappers every engine can put around an artifact's checked byte stream: read-ahead on a second
thread, and progress counting; and the ArtifactSet both engines build on them."""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from .base import CHUNK, Progress, item_done


class ReadAhead(io.RawIOBase):
    """Blocks made on a second thread into a bounded queue and read in the caller's thread, so a restore's
    own work (writing files, feeding a database) overlaps with reading, decrypting and checking. Errors,
    corruption found at EOF included, surface in the reader's thread at the point they were met.

    A subclass sets its attributes, then calls ``super().__init__`` (which starts the thread), and
    implements :meth:`produce`; :meth:`failed` may turn an error into the one the reader should see, and
    :meth:`release` closes what the subclass holds.
    """

    def __init__(self, depth: int = 4, name: str = "dm-read-ahead") -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._block = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def produce(self, put: Callable[[bytes], bool]) -> None:
        """Call ``put(block)`` with each block, in order; stop when it returns False (the reader closed)."""
        raise NotImplementedError

    def failed(self, exc: BaseException) -> BaseException:
        return exc

    def release(self) -> None:
        """Close what the subclass holds (after the thread stopped)."""

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                pass
        return False

    def _run(self) -> None:
        try:
            self.produce(self._put)
            self._put(b"")
        except BaseException as exc:
            self._put(self.failed(exc))

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
        while self._thread.is_alive():  # unblock a put() waiting on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.release()
        super().close()


class Prefetching(ReadAhead):
    """Reads (decompresses, hashes) an inner stream ahead, on a second thread."""

    def __init__(self, inner: io.RawIOBase, depth: int = 4) -> None:
        self._inner = inner
        super().__init__(depth, "dm-prefetch")

    def produce(self, put: Callable[[bytes], bool]) -> None:
        while data := self._inner.read(CHUNK):
            if not put(data):
                return

    def release(self) -> None:
        self._inner.close()


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


class StoredArtifacts:
    """The :class:`~data_manager.types.ArtifactSet` of one source in a complete backup: the bookkeeping
    every engine shares. An engine implements :meth:`reader`: the original bytes of one artifact, checked
    (size, digest) by its EOF."""

    def __init__(self, prefix: str, record: Any, progress: Progress | None = None) -> None:
        self._prefix = prefix
        self.record = record
        self.source_name = record.name
        self.info = record.info
        self.settings = record.settings
        self._by_name = {a.name: a for a in record.artifacts}
        self._progress = progress

    def names(self) -> list[str]:
        return [a.name for a in self.record.artifacts]

    def size(self, name: str) -> int:
        return self._get(name).size

    def _get(self, name: str) -> Any:
        from ..errors import CorruptBackupError

        try:
            return self._by_name[name]
        except KeyError:
            raise CorruptBackupError(f"{self._prefix}/{self.source_name}: no artifact {name!r} in the metadata") from None

    def reader(self, rec: Any, label: str) -> io.RawIOBase:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        rec = self._get(name)
        reader = self.reader(rec, f"{self._prefix}/{self.source_name}/{name}")
        if self._progress is not None:
            reader = Counting(reader, self._progress, rec.size)
        return io.BufferedReader(reader, buffer_size=CHUNK)  # type: ignore[return-value]

    def verify(self, names: Iterable[str] | None = None) -> None:
        for name in names if names is not None else self.names():
            with self.open(name) as f:
                while f.read(CHUNK):
                    pass
