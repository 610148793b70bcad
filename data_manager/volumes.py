"""Size-bounded volumes: for sources that pack many items (files, objects) into few artifacts.

A source keeps two :class:`Volumes` streams, one zstd-compressed and one stored as-is, and sends each item
to one of them by :func:`incompressible`, so already-compressed data costs no compression CPU. Items are
never split: a volume closes once it has passed its size limit, so an item larger than the limit has a
volume of its own. The source's index records each item's volume and offset, so one item can later be
read alone, by range.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from .types import ArtifactSink, ArtifactWriter, Compression

SAMPLE = 64 << 10  # how much of an item decides whether it compresses
STORED_SUFFIXES = frozenset({
    ".7z", ".avi", ".br", ".bz2", ".flac", ".gif", ".gz", ".heic", ".jpeg", ".jpg", ".lz4", ".mkv",
    ".mov", ".mp3", ".mp4", ".ogg", ".png", ".rar", ".tgz", ".webm", ".webp", ".xz", ".zip", ".zst",
})
STORED_TYPES = ("image/", "video/", "audio/", "application/zip", "application/gzip", "application/x-gzip",
                "application/zstd", "application/x-7z", "application/x-xz", "application/x-bzip2")


# Text formats always pay for zstd (even base64 of random bytes stores at ~75%): not sampled.
TEXT_SUFFIXES = frozenset({
    ".csv", ".htm", ".html", ".json", ".jsonl", ".log", ".md", ".ndjson", ".sql", ".tsv", ".txt", ".xml",
    ".yaml", ".yml",
})
TEXT_TYPES = ("text/", "application/json", "application/x-ndjson", "application/xml")


def _suffix(name: str) -> str:
    """The lower-cased suffix of a path's last segment, as PurePosixPath has it ("" for ".bashrc")."""
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    return base[dot:].lower() if 0 < dot < len(base) - 1 else ""


def stored_by_name(name: str, content_type: str = "") -> bool | None:
    """Whether an item is better stored as-is, as far as its suffix or media type tell; None: they don't."""
    suffix = _suffix(name)
    if suffix in STORED_SUFFIXES or content_type.startswith(STORED_TYPES):
        return True
    if suffix in TEXT_SUFFIXES or content_type.startswith(TEXT_TYPES):
        return False
    return None


def incompressible(name: str, sample: bytes | memoryview, content_type: str = "") -> bool:
    """Whether an item is better stored as-is: by its suffix or media type, else by compressing a sample."""
    by_name = stored_by_name(name, content_type)
    if by_name is not None:
        return by_name
    import zstandard

    sample = bytes(sample[:SAMPLE])
    return len(zstandard.ZstdCompressor(level=1).compress(sample)) > 0.9 * len(sample)


def numbering(template: str = "vol-{:06d}", start: int = 1) -> Callable[[], str]:
    """Artifact names shared by several streams (and threads: ``next`` on a count is atomic)."""
    counter = itertools.count(start)
    return lambda: template.format(next(counter))


class Volumes:
    """A stream of volumes of one compression, rolling over at ``limit`` bytes."""

    trailer = b""  # written at the end of every volume (e.g. a tar end-of-archive marker)

    def __init__(
        self, sink: ArtifactSink, compression: Compression, limit: int, names: Callable[[], str], *,
        digest: bool = False,
    ) -> None:
        self._sink = sink
        self._compression = compression
        self._digest = digest  # close() returns the volume's digest (see ArtifactSink.open)
        self._limit = limit
        self._names = names
        self._out: ArtifactWriter | None = None
        self.name = ""
        self.offset = 0
        self.names: list[str] = []
        self.closed = 0  # volumes closed (committed) so far
        self.reused = False  # the engine appended an item itself: the volume's digest is not the item's
        self.chunked = bool(getattr(sink, "chunked", False))  # see ArtifactSink.chunked (a test double may lack it)
        self.compresses = bool(getattr(sink, "compresses", True))  # see ArtifactSink.compresses
        self.hashes_files = bool(getattr(sink, "hashes_files", False))  # see ArtifactSink.hashes_files
        #: Another open writer of the same sink (e.g. the source's index), asked by :meth:`recall` while no
        #: volume is open: a query must not open an artifact (an empty volume would be committed).
        self.probe: ArtifactWriter | None = None

    def start(self) -> tuple[str, int]:
        """The volume and offset the next bytes go to (opening a volume if none is open)."""
        if self._out is None:
            self.name = self._names()
            self._out = self._sink.open(self.name, compression=self._compression, digest=self._digest)
            self.names.append(self.name)
            self.offset = 0
        return self.name, self.offset

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._out is None:
            self.start()
        assert self._out is not None
        self._out.write(data)
        self.offset += len(data)

    def cut(self) -> None:
        """An item boundary: a chunking engine ends a chunk here (see ArtifactWriter.cut)."""
        if self._out is not None:
            cut = getattr(self._out, "cut", None)  # a plugin's own test double may not have it
            if cut is not None:
                cut()

    def reuse(self, item: str, size: int) -> Mapping[str, Any] | None:
        """Right after :meth:`cut`: the engine appends the ``size`` bytes of an unchanged ``item`` itself, if it
        can (see ArtifactWriter.reuse); then the volume's offset moves on as if they were written."""
        reuse = getattr(self._out, "reuse", None) if self._out is not None else None
        extra = reuse(item, size) if reuse is not None else None
        if extra is not None:
            self.offset += size
            self.reused = True
        return extra

    def recall(self, item: str, size: int, header: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Before an item is opened: what :meth:`reuse` of ``item`` (``size`` bytes) would most likely return,
        asked of the engine without writing or changing anything (see ArtifactWriter.recall). ``header`` is
        what the item's header will say: ``path``, ``size`` (the item's own, unpadded) and ``mtime_ns``, for
        an engine whose files cache is keyed by those (``sync``); a chunking engine looks ``item`` up.

        A source that gets a mapping may skip reading the item (a file's first MiB to choose a volume, or a
        small file whole) and call :meth:`reuse` right after the header and a :meth:`cut`; it must still
        read and write the item when :meth:`reuse` then returns None (the engine's cache can go stale
        between the two calls). None: read as usual. Engines without a files cache (``worm``) say None."""
        out = self._out if self._out is not None else self.probe
        recall = getattr(out, "recall", None) if out is not None else None  # a plugin's test double may lack it
        return recall(item, size, header) if recall is not None else None

    def remember(self, item: str, size: int, extra: Mapping[str, Any]) -> None:
        """Right after the :meth:`cut` ending an item (see ArtifactWriter.remember)."""
        remember = getattr(self._out, "remember", None) if self._out is not None else None
        if remember is not None:
            remember(item, size, extra)

    def file_digest(self, path: str) -> str | None:
        """Right after the :meth:`cut` ending the tar file member ``path``: the engine's BLAKE3 of its data, for
        a sink that :attr:`hashes_files` (see ArtifactWriter.file_digest); ``None`` if it has none."""
        file_digest = getattr(self._out, "file_digest", None) if self._out is not None else None
        return file_digest(path) if file_digest is not None else None

    def roll(self) -> None:
        """Between items: close the volume if it has reached the limit."""
        if self._out is not None and self.offset >= self._limit:
            self.close()

    def close(self) -> str:
        """Close the open volume; its digest (:attr:`~data_manager.types.ArtifactWriter.digest`; made ``digest=True``),
        "" if none was open.

        Close before :meth:`start` to give the next item a volume of its own: with no :attr:`trailer`, that
        volume's digest, once closed, is the item's.
        """
        if self._out is None:
            return ""
        if self.trailer:
            self.write(self.trailer)
        out, self._out = self._out, None
        out.close()
        self.closed += 1
        return out.digest

    def abort(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.abort()
