"""Bandwidth limits: one wrapper that paces any :class:`~data_manager.types.Storage`, so no plugin needs to.

    storage = throttled(inner, upload=20 << 20, download=None)   # 20 MiB/s up, downloads unlimited

Writes (:meth:`ObjectWriter.write`) and the streams of :meth:`Storage.open_read` go through a
:class:`TokenBucket` per direction, shared by every object of that storage (and so by sources running in
parallel): the rate is the storage's, not each stream's. Bursts are bounded: data moves in pieces of at
most :data:`BLOCK` (1 MiB), or one second's worth below 1 MiB/s, each paid for before it is sent (or right
after it was read), and the bucket saves up at most one piece while a stream pauses. Every new stream
starts paced (what an idle bucket saved up is forgotten), so even over a transfer of a few seconds the
average is the limit, while the time a stream spends sending between pieces is credited, not lost.

Limits come from ``--limit-upload``/``--limit-download`` or ``limit_upload``/``limit_download`` in a
``[storages.NAME]`` table (the core strips these keys before the plugin sees its settings; the command line
wins). The core applies the wrapper where it builds storages (``DataManager.storage``).
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from . import units
from .types import Entry, FileAttributes, ObjectWriter, Settings, Storage

BLOCK = 1 << 20  # the largest burst: the unit data already moves in (engines.base.CHUNK)
MIN_BLOCK = 4096  # below 4 KiB/s pieces stay this large rather than split into tiny writes
LIMIT_KEYS = ("limit_upload", "limit_download")
RATE_HINT = "a rate in bytes per second like 10MiB or 10MiB/s"
_PER_SECOND = re.compile(r"\s*/\s*s(ec(ond)?)?\s*$", re.I)


def parse_rate(value: Any) -> int | None:
    """``"10MiB"``, ``"10MiB/s"``, ``"512k/s"`` or an int -> bytes per second (see
    :func:`data_manager.units.parse_size`); None for anything else, negative numbers included."""
    if isinstance(value, str):
        value = _PER_SECOND.sub("", value)
    n = units.parse_size(value)
    return n if n is not None and n >= 0 else None


def limits_from_settings(settings: Settings) -> tuple[int | None, int | None]:
    """``(upload, download)`` bytes per second from a storage table's ``limit_upload``/``limit_download``
    (None where absent); a ConfigError naming the key for anything but a positive rate."""
    out: list[int | None] = []
    for key in LIMIT_KEYS:
        if key not in settings:
            out.append(None)
            continue
        rate = parse_rate(settings.get(key))
        if not rate:
            raise settings.error(key, f"must be {RATE_HINT} (at least 1 byte), not {settings.get(key)!r}")
        out.append(rate)
    return out[0], out[1]


def block_for(rate: float) -> int:
    """The largest piece paid for at once at ``rate``: 1 MiB, or one second's worth below 1 MiB/s."""
    return int(max(MIN_BLOCK, min(BLOCK, rate)))


class TokenBucket:
    """Paces bytes to ``rate`` per second; safe to share between threads.

    :meth:`take` reserves ``n`` bytes and sleeps until they are earned: a bucket in debt makes the next
    caller wait for the debt too, so threads sharing a bucket share the rate. ``burst`` is the largest
    piece callers pay for at once (they split larger writes), and the most an idle bucket saves up: enough
    to credit the time a stream spends between pieces (sending, hashing, compressing), so a busy stream
    keeps the full rate. It starts empty, and :meth:`restart` empties it again when a stream starts.
    ``clock`` and ``sleep`` are injectable, for tests.
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        self.rate = float(rate)
        self.burst = burst if burst is not None else block_for(rate)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = clock()

    def restart(self) -> None:
        """A stream starts: forget what the bucket saved up while idle (a debt stays), so that a transfer
        after a pause (a lock settling, a source thinking) is paced from its first byte."""
        with self._lock:
            now = self._clock()
            self._tokens = min(0.0, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def take(self, n: int) -> float:
        """Pay for ``n`` bytes (callers split data into pieces of at most ``burst``); returns the seconds slept."""
        if n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)  # outside the lock: the next caller reserves behind us meanwhile
        return wait


def _pieces(data: bytes | bytearray | memoryview, size: int) -> Iterator[bytes | bytearray | memoryview]:
    n = len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes
    if n <= size:
        yield data
        return
    view = memoryview(data).cast("B")  # slices without copying
    for i in range(0, n, size):
        yield view[i : i + size]


class ThrottledWriter(ObjectWriter):
    """An :class:`ObjectWriter` whose writes are paced by ``bucket``; commit and abort go straight through."""

    def __init__(self, inner: ObjectWriter, bucket: TokenBucket) -> None:
        self.inner = inner
        self._bucket = bucket
        bucket.restart()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        for piece in _pieces(data, self._bucket.burst):
            self._bucket.take(len(piece))
            self.inner.write(piece)

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


class ThrottledReader(io.RawIOBase):
    """A stream from :meth:`Storage.open_read` paced by ``bucket``: each read returns at most one piece
    (``bucket.burst`` bytes) and is paid for once its size is known. ``read()`` reads to the end."""

    def __init__(self, inner: BinaryIO, bucket: TokenBucket) -> None:
        super().__init__()
        self.inner = inner
        self._bucket = bucket
        bucket.restart()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self.inner.read(min(size, self._bucket.burst))  # no copy through readinto
        self._bucket.take(len(data))
        return data

    def readall(self) -> bytes:
        parts = []
        while data := self.read(self._bucket.burst):
            parts.append(data)
        return b"".join(parts)

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self.inner.close()
            finally:
                super().close()


class ThrottledStorage(Storage):
    """``inner`` with its uploads and/or downloads paced (None: that direction unlimited).

    Everything else is passed through: listing, deletion and checks cost no bandwidth to speak of, and an
    inner storage's own ``exists``/``walk``/``delete_tree`` (often faster than the defaults) are kept.
    """

    def __init__(self, inner: Storage, upload: int | None = None, download: int | None = None) -> None:
        super().__init__(inner.name, inner.settings)
        self.inner = inner
        self.consistent_listing = inner.consistent_listing
        self.upload = TokenBucket(upload) if upload else None
        self.download = TokenBucket(download) if download else None

    def location(self) -> str:
        return self.inner.location()

    def check(self) -> None:
        self.inner.check()

    def open_write(self, key: str) -> ObjectWriter:
        writer = self.inner.open_write(key)
        return ThrottledWriter(writer, self.upload) if self.upload is not None else writer

    def open_write_deferred(self, key: str, attrs: FileAttributes | None = None) -> ObjectWriter:
        writer = self.inner.open_write_deferred(key, attrs)
        return ThrottledWriter(writer, self.upload) if self.upload is not None else writer

    def persist(self) -> None:
        self.inner.persist()

    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        stream = self.inner.open_read(key, offset, length)
        if self.download is None:
            return stream
        return ThrottledReader(stream, self.download)  # type: ignore[return-value]

    def list(self, prefix: str) -> Iterator[Entry]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def walk(self, prefix: str) -> Iterator[tuple[str, Entry]]:
        return self.inner.walk(prefix)

    def delete_tree(self, prefix: str) -> None:
        self.inner.delete_tree(prefix)

    def sweep_unfinished(self, prefix: str, older_than: float, *, remove: bool) -> list[str]:
        return self.inner.sweep_unfinished(prefix, older_than, remove=remove)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Anything a plugin's own storage offers beyond the Storage interface (only reached when not found here).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def throttled(storage: Storage, upload: int | None, download: int | None) -> Storage:
    """``storage`` paced to ``upload``/``download`` bytes per second, or itself when neither is set."""
    if not upload and not download:
        return storage
    return ThrottledStorage(storage, upload, download)


__all__ = ["BLOCK", "LIMIT_KEYS", "ThrottledStorage", "TokenBucket", "limits_from_settings", "parse_rate", "throttled"]
