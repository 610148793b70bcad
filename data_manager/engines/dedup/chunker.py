"""Content-defined chunking of a stream written in arbitrary pieces, with bounded memory.

FastCDC finds the cut points; this module makes it streaming. A cut point depends only on the bytes from
the chunk's start up to ``max_size`` after it, so a chunk whose start lies at least ``max_size`` before the
end of the buffered data is final: it is the chunk the whole stream would give. The rest (the tail) waits
for more data. Memory: about one window plus one tail.

Two algorithms, named in the repository's config (``chunker``):

* ``fastcdc2020`` (repositories made since December 2026): FastCDC 2020 by the ``pyfastcdc`` package, its
  gear table XORed with a seed derived from the repository's id key (:meth:`KeyRing.chunker_seed`), so cut
  points, and with them chunk sizes, differ between repositories. It releases the GIL while it scans and
  runs at about 1.9 GB/s here;
* ``fastcdc`` (repositories made before): the ``fastcdc`` package's Cython module (FastCDC 2016 as
  ronomon's, one fixed gear table), kept so that those repositories go on deduplicating; it holds the GIL
  (1.6 GB/s, on the backup's critical path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

MIN_SIZE = 256 << 10
# FastCDC 2020's chunks average about min + avg: 768 KiB. With 1 MiB (1.25 MiB chunks) the research set of
# bench_dedup stored 3.2 MB again after 4 bytes were flipped in 4 of its files, with 512 KiB 2.2 MB.
AVG_SIZE = 512 << 10
MAX_SIZE = 4 << 20
ALGORITHMS = ("fastcdc2020", "fastcdc")


@dataclass(frozen=True)
class ChunkerParams:
    """The chunker's parameters, stored in the repository's config: every writer must use the same ones,
    or identical data chunks differently and does not deduplicate."""

    min_size: int = MIN_SIZE
    avg_size: int = AVG_SIZE
    max_size: int = MAX_SIZE
    algorithm: str = "fastcdc2020"

    def __post_init__(self) -> None:
        # fastcdc's own bounds, and ours: a chunk's raw length is a u32 in the pack format, and a chunk is
        # held whole in memory a few times over while it is hashed, compressed and encrypted.
        if not (64 <= self.min_size <= self.avg_size <= self.max_size <= 64 << 20) or self.avg_size < 256 \
                or self.max_size < 1024:
            raise ValueError(
                f"bad chunker sizes min={self.min_size} avg={self.avg_size} max={self.max_size}: need "
                "64 <= min <= avg <= max <= 64 MiB, avg >= 256, max >= 1024")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown chunker {self.algorithm!r} (known: {', '.join(ALGORITHMS)})")
        # pyfastcdc's own bounds (its gear masks are made for these)
        if self.algorithm == "fastcdc2020" and not (
                self.avg_size <= 4 << 20 and self.min_size <= 1 << 20 and self.max_size <= 16 << 20):
            raise ValueError(f"bad chunker sizes for fastcdc2020 min={self.min_size} avg={self.avg_size} "
                             f"max={self.max_size}: need min <= 1 MiB, avg <= 4 MiB, max <= 16 MiB")

    def to_json(self) -> dict[str, int | str]:
        return {"chunker": self.algorithm, "chunk_min": self.min_size, "chunk_avg": self.avg_size,
                "chunk_max": self.max_size}

    @classmethod
    def from_json(cls, params: dict) -> ChunkerParams:
        algorithm = params.get("chunker", "fastcdc")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown chunker {algorithm!r}")
        avg = AVG_SIZE if algorithm == "fastcdc2020" else 1 << 20  # the legacy chunker's default was 1 MiB
        return cls(int(params.get("chunk_min", MIN_SIZE)), int(params.get("chunk_avg", avg)),
                   int(params.get("chunk_max", MAX_SIZE)), algorithm)


class Chunker:
    """Cuts one stream into chunks. Feed it with :meth:`feed`, hint file boundaries with :meth:`cut`, end
    with :meth:`finish`; each yields the chunks that became final, as read-only memoryviews of the chunker's
    own buffer: a caller must be done with one (hash it, copy it) before it asks for the next chunk or calls
    the chunker again, and must never keep it.

    Data is copied into one buffer that is reused for the whole stream (``window`` plus one tail of less than
    ``max_size``, grown as needed up to that): joining fresh blocks instead cost a page fault per 4 KiB of
    data, the backup's largest system time. Not thread-safe.
    """

    def __init__(self, params: ChunkerParams, seed: int = 0, window: int = 16 << 20) -> None:
        """``seed``: the gear table's (``fastcdc2020``; 0 is the table unchanged); ignored by ``fastcdc``."""
        self.params = params
        self._window = max(window, 2 * params.max_size)
        self._buf = bytearray()
        self._len = 0  # bytes held: the tail of the last run, then what was fed since
        self._cuts = _cut_points(params, seed)

    @property
    def holding(self) -> bool:
        """Whether bytes fed are waiting for more (the next chunk starts before what is fed next)."""
        return self._len > 0

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Take ``data`` (copied: the caller may reuse it once this generator has finished)."""
        view = memoryview(data).cast("B")
        while len(view):
            room = self._window + self.params.max_size - self._len
            take = view[:room]
            self._put(take)
            view = view[len(take):]
            if self._len >= self._window:
                yield from self._run(final=False)

    def cut(self) -> Iterator[memoryview]:
        """A file boundary: end the current chunk here, whatever its size, so the next item starts a chunk
        (and the files cache can append an unchanged item's chunks as they are). Sources cut only around
        items of 64 KiB or more, so small files still share chunks."""
        yield from self._run(final=True)

    def finish(self) -> Iterator[memoryview]:
        """The end of the stream: everything left."""
        yield from self._run(final=True)

    def _put(self, data: memoryview) -> None:
        end = self._len + len(data)
        if end > len(self._buf):  # grown by doubling, so a small stream keeps a small buffer
            grown = bytearray(min(self._window + self.params.max_size, max(end, 2 * len(self._buf))))
            grown[: self._len] = self._buf[: self._len]
            self._buf = grown
        self._buf[self._len : end] = data
        self._len = end

    def _run(self, final: bool) -> Iterator[memoryview]:
        total = self._len
        if not total:
            return
        p = self.params
        start = 0
        with memoryview(self._buf) as whole:
            view = whole[:total].toreadonly()
            try:
                for c in self._cuts(view):
                    if not final and total - c.offset < p.max_size:
                        break  # this cut could still move with more data
                    yield view[c.offset : c.offset + c.length]
                    start = c.offset + c.length
            finally:
                view.release()
        tail = total - start
        self._buf[:tail] = self._buf[start:total]  # the same length: the buffer is never resized here
        self._len = tail


def _cut_points(params: ChunkerParams, seed: int) -> Callable[[memoryview], Iterator[Any]]:
    """A function from a buffer to an iterator of its chunks (each with ``offset`` and ``length``)."""
    p = params
    if p.algorithm == "fastcdc2020":
        from pyfastcdc import FastCDC

        return FastCDC(p.avg_size, min_size=p.min_size, max_size=p.max_size, seed=seed).cut_buf
    from fastcdc.fastcdc_cy import chunk_generator

    return lambda view: chunk_generator(view, p.min_size, p.avg_size, p.max_size, False, None)
