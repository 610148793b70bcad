"""Where a download's bytes go: one artifact ``export``, or parts that a resumed backup can keep.

A ranged download writes the export as parts, ``export.parts/VERSION/000001``, ``000002``, ... of
``part_size`` bytes each (the last one shorter), VERSION naming the export's total, ETag and Last-Modified
(:func:`version_name`). Each part is committed as soon as it is full, so a backup killed at 70% has 70% of
the export in committed parts. ``backup --resume`` is offered them by the engine
(:meth:`~data_manager.types.ArtifactSink.resumed`); :class:`Output` plans which to keep (the contiguous parts
from the first one, of one version), and :meth:`Output.adopt` reads each back (size and digest checked
against what the interrupted run recorded) before keeping it. A streamed download (no ranges) writes
``export`` as before: there is nothing to continue it from.

Restore reads ``export``, or the parts in order (:func:`export_names`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from data_manager.errors import CorruptBackupError
from data_manager.types import ArtifactSet, ArtifactSink, ArtifactWriter

from .client import BLOCK

log = logging.getLogger(__name__)

ARTIFACT = "export"
PARTS = "export.parts"
_PART = re.compile(r"^export\.parts/(\d+-[0-9a-f]{16})/(\d{6})$")


def version_name(etag: str | None, last_modified: str | None, total: int) -> str | None:
    """``TOTAL-HASH`` of the export's validators: equal only for the same export. None when the server
    sends neither ETag nor Last-Modified: a changed export could then not be told, so nothing is resumed."""
    if not etag and not last_modified:
        return None
    digest = hashlib.sha256(f"{etag or ''}\n{last_modified or ''}\n{total}".encode()).hexdigest()[:16]
    return f"{total}-{digest}"


def part_name(version: str, number: int) -> str:
    return f"{PARTS}/{version}/{number:06d}"


class Output:
    """One download's artifacts in ``sink``: ``export`` (streamed) or parts (ranged), and what a resumed
    backup may keep. Single-threaded: the download's reading thread calls every method."""

    def __init__(self, sink: ArtifactSink, part_size: int, where: str) -> None:
        self.sink = sink
        self.part_size = part_size
        self.where = where
        self.version: str | None = None  # parts of this version; None: not chosen yet (or ``export``)
        self.single = False  # writing ``export``
        self.parts: list[str] = []  # parts of this backup, in order (kept, then written)
        self.digest = ""  # ``export``'s BLAKE3, once committed
        self.resumed_bytes = 0
        self._writer: ArtifactWriter | None = None
        self._name = ""
        self._in_part = 0
        self._number = 0  # of the last part begun
        self.resume_version, self._offered = self._plan()

    # ------------------------------------------------------------------ resuming

    def _plan(self) -> tuple[str | None, list[tuple[str, int]]]:
        """The version whose parts, contiguous from ``000001``, hold the most bytes; those parts, cut so
        that at least one byte of the export is left to ask for (its request tells whether it changed)."""
        by_version: dict[str, dict[int, tuple[str, int]]] = {}
        for name, size in self.sink.resumed().items():
            m = _PART.match(name)
            if m:
                by_version.setdefault(m[1], {})[int(m[2])] = (name, size)
        best: tuple[str | None, list[tuple[str, int]]] = (None, [])
        for version, found in by_version.items():
            total, run, at = int(version.split("-")[0]), [], 0
            while (nxt := found.get(len(run) + 1)) is not None and at + nxt[1] < total and nxt[1] > 0:
                run.append(nxt)
                at += nxt[1]
            if sum(s for _, s in run) > sum(s for _, s in best[1]):
                best = (version, run)
        return best

    @property
    def resume_at(self) -> int:
        """The export byte a resumed download asks for first (0: start from the beginning)."""
        return sum(size for _, size in self._offered)

    def forget(self) -> None:
        """Keep nothing of the interrupted run (the engine deletes its parts when the source is done)."""
        self._offered = []
        self.resume_version = None

    def adopt(self, new_hasher: Callable[[], Any]) -> tuple[int, Any]:
        """Read the planned parts back (size and digest checked), keep each that is whole, and stop at the
        first that is not. Returns the bytes kept and a hasher (from ``new_hasher()``, may be None) of them,
        for a whole-export checksum. A damaged part is one warning; it and the parts after it are downloaded."""
        hasher = new_hasher()
        at = 0
        for number, (name, size) in enumerate(self._offered, 1):
            try:
                self._read(name, hasher)
            except CorruptBackupError as exc:
                log.warning("%s: the interrupted run's part %s is not as it recorded (%s): downloading from "
                            "byte %d", self.where, name, str(exc).splitlines()[0], at)
                if hasher is not None:  # it saw bytes of the damaged part: hash the whole ones again
                    hasher.close()
                    hasher = new_hasher()
                    for kept in self.parts:
                        self._read(kept, hasher)
                break
            self.sink.keep(name)
            self.parts.append(name)
            self._number = number
            at += size
        assert self.resume_version is not None
        self.version = self.resume_version
        self.resumed_bytes = at
        self._offered = []
        return at, hasher

    def _read(self, name: str, hasher: Any) -> None:
        with self.sink.open_resumed(name) as f:
            while block := f.read(BLOCK):
                if hasher is not None:
                    hasher.update(block)

    # ------------------------------------------------------------------ writing

    def use_parts(self, version: str) -> None:
        """A ranged download of export ``version`` begins (from byte 0): write it as parts."""
        self.version = version
        self._number = 0

    def write(self, data: bytes) -> None:
        if self.version is None:
            if self._writer is None:
                self.single, self._name = True, ARTIFACT
                self._writer = self.sink.open(ARTIFACT, digest=True)
            self._writer.write(data)
            return
        view, off, size = memoryview(data), 0, len(data)
        while off < size:
            if self._writer is None:
                self._number += 1
                self._name, self._in_part = part_name(self.version, self._number), 0
                self._writer = self.sink.open(self._name)
            n = min(size - off, self.part_size - self._in_part)
            self._writer.write(data if n == size else view[off : off + n])  # a view only where a part ends
            off += n
            self._in_part += n
            if self._in_part == self.part_size:
                self._close_part()

    def _close_part(self) -> None:
        assert self._writer is not None
        writer, self._writer = self._writer, None
        writer.close()  # committed, and recorded where --resume finds it
        self.parts.append(self._name)

    def commit(self) -> None:
        """Every byte is written and checked: commit what is open (an empty export: an empty ``export``)."""
        if self._writer is None and not self.parts and not self.single:
            self.single, self._name = True, ARTIFACT
            self._writer = self.sink.open(ARTIFACT, digest=True)
        if self._writer is not None:
            if self.single:
                writer, self._writer = self._writer, None
                writer.close()
                self.digest = writer.digest
            else:
                self._close_part()

    def abort(self) -> None:
        """The download failed: the open artifact is aborted; committed parts stay for ``--resume``."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()
        if self.single:
            self.single = False

    def discard(self) -> None:
        """Start over (the export changed): abort, and remove every part of this backup."""
        self.abort()
        for name in self.parts:
            self.sink.discard(name)
        self.parts, self.version, self.resumed_bytes = [], None, 0


# --------------------------------------------------------------------------- restore


def export_names(artifacts: ArtifactSet, where: str) -> list[str]:
    """The artifacts that hold the export, in order: ``export``, or every part of one version, numbered
    from 1 without a gap (anything else is damaged metadata: :class:`CorruptBackupError`)."""
    names = artifacts.names()
    if ARTIFACT in names:
        return [ARTIFACT]
    parts = sorted((m[1], int(m[2]), n) for n in names if (m := _PART.match(n)))
    versions = {v for v, _, _ in parts}
    if not parts or len(versions) != 1 or [number for _, number, _ in parts] != list(range(1, len(parts) + 1)):
        raise CorruptBackupError(f"{where}: the backup holds neither {ARTIFACT!r} nor one numbered run of "
                                 f"its parts ({len(names)} artifacts)")
    return [n for _, _, n in parts]


class Joined(io.RawIOBase):
    """The artifacts ``names`` of ``artifacts`` read one after the other, each to its end (checked there)."""

    def __init__(self, artifacts: ArtifactSet, names: Iterable[str]) -> None:
        super().__init__()
        self._artifacts = artifacts
        self._names = list(names)
        self._current: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while True:
            if self._current is None:
                if not self._names:
                    return 0
                self._current = self._artifacts.open(self._names.pop(0))
            data = self._current.read(min(len(buf), BLOCK))
            if data:
                buf[: len(data)] = data
                return len(data)
            self._current.close()  # at EOF: this part's size and digest were checked
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()


__all__ = ["ARTIFACT", "PARTS", "Joined", "Output", "export_names", "part_name", "version_name"]
