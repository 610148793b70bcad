"""The ``sync`` engine: a directory source mirrored file by file, plus a manifest per backup.

Layout in the storage (docs/engines.md, *The sync engine*)::

    DATA_ID/mirror/SOURCE/<relative path>                 one object per file: its bytes, as they are
    DATA_ID/backups/TIMESTAMP/backup.json                 written last: the backup counts from then on
    DATA_ID/backups/TIMESTAMP/SOURCE/source.json          the source is done (resume keeps it)
    DATA_ID/backups/TIMESTAMP/SOURCE/mirror.jsonl         every file the mirror holds for it: path, size,
                                                          mtime_ns, mode, blake3
    DATA_ID/backups/TIMESTAMP/SOURCE/pending.jsonl        objects of deleted files not removed yet (since when)
    DATA_ID/backups/TIMESTAMP/SOURCE/journal-NNNNNN.jsonl files uploaded so far (a resumed backup skips them)
    DATA_ID/backups/TIMESTAMP/SOURCE/artifacts/NAME       a tar volume's skeleton (.tarsplit), or a small
                                                          artifact as it is (the source's files.jsonl)

The engine takes the directory source's tar volumes apart as they are written (:mod:`.tarsplit`): each
file's content goes to its mirror object, everything else to the volume's skeleton. An unchanged file
(same path, size and mtime as the mirror holds, or the same BLAKE3 with ``checksum = true``) is not
uploaded; with size and mtime the source does not even open it (it asks ``recall`` before opening a file,
then the engine appends the file itself: the ``reuse`` hint of the artifact writer).

Restore and verify rebuild each volume from its skeleton and the mirror objects, checking every file's
BLAKE3 against the manifest: a file changed in the storage by anyone fails them (exit 4). The mirror holds
one version of each file: an older backup restores only while its files are unchanged since.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from collections.abc import Callable, Collection, Iterator, Mapping
from itertools import chain
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, BinaryIO

from blake3 import blake3

from ...config import NAME_RE
from ...errors import CorruptBackupError, DataManagerError, NotFoundError, UsageError
from ...timestamps import is_timestamp, parse_timestamp
from ...types import Compression, FileAttributes, ObjectWriter, Settings, Storage
from ..base import CHUNK, ArtifactStreamBase, BackupWriter, Progress, RepositoryEngine, SourceSink, read_json_object
from ..records import MANIFEST, SOURCE_MANIFEST, ArtifactRecord, BackupInfo, SourceRecord, checked_sources
from ..streams import ReadAhead, StoredArtifacts
from ..worm import VerifyingReader, WormEngine, write_json
from .names import ancestors, check_path, mirror_name
from .tarsplit import BLOCK, FILE_RECORD_MAX, LITERAL_MAX, Member, Skeleton, TarSplitter

log = logging.getLogger(__name__)

FORMAT = "data-manager-sync/1"
MIRROR = "mirror"
BACKUPS = "backups"
FILES = "mirror.jsonl"
PENDING = "pending.jsonl"
JOURNAL = "journal-"
ARTIFACTS = "artifacts"
SKELETON_SUFFIX = ".tarsplit"
DEFAULT_DELETE_AFTER = 7 * 86400.0
SOURCE_TYPES = ("directory",)  # the sources whose artifacts are tar volumes of files
BUFFER = 1 << 20  # files up to this size are held in memory until their digest says whether to upload
UPLOADERS = 8  # upload threads: each object's latency (a PUT, an fsync) overlaps; 2x as many objects queued
IN_FLIGHT = 32 << 20  # bytes of larger files queued for the upload threads, at most (flat memory)
STREAMS = 4  # larger files being uploaded at once, at most (a storage's writer may hold a part of each: S3 16 MiB)
JOURNAL_EVERY = 1000  # files, or
JOURNAL_SECONDS = 30.0
_HEX = set("0123456789abcdef")
_json_str = encode_basestring_ascii  # json.dumps(ensure_ascii=True) of a str, in C


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_entry(doc: Any, where: str) -> dict[str, Any]:
    """One line of ``mirror.jsonl``/``pending.jsonl``/a journal, read back from the storage: checked."""
    if not isinstance(doc, dict):
        raise CorruptBackupError(f"{where}: not an entry")
    try:
        check_path(doc.get("path"))
    except ValueError as exc:
        raise CorruptBackupError(f"{where}: {exc}") from None
    if not (_int(doc.get("size")) and _is_digest(doc.get("blake3")) and isinstance(doc.get("mtime_ns"), int)
            and _int(doc.get("mode"))):
        raise CorruptBackupError(f"{where}: bad size, digest, mtime or mode for {doc.get('path')!r}")
    if "since" in doc and not is_timestamp(doc["since"]):
        raise CorruptBackupError(f"{where}: bad 'since' for {doc.get('path')!r}")
    return doc


def read_entries(storage: Storage, key: str) -> dict[str, dict[str, Any]]:
    """A JSON-lines file list from the storage, each line checked; path -> entry. Missing: empty."""
    out: dict[str, dict[str, Any]] = {}
    try:
        f = storage.open_read(key)
    except NotFoundError:
        return out
    n = 0
    with f:
        for lines in _batches(_lines(f), 1024):
            try:  # a thousand lines parsed in one call (a third of the time of one call per line)
                docs = json.loads(b"[" + b",".join(lines) + b"]")
            except ValueError:
                docs = None
            if not isinstance(docs, list) or len(docs) != len(lines):  # which line is bad
                docs = []
                for i, line in enumerate(lines, n + 1):
                    try:
                        docs.append(json.loads(line))
                    except ValueError:
                        raise CorruptBackupError(f"{key}: line {i} is not JSON") from None
            for doc in docs:
                n += 1
                entry = check_entry(doc, f"{key}: line {n}")
                out[entry["path"]] = entry
    return out


def _batches(items: Iterator[bytes], n: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _lines(f: BinaryIO) -> Iterator[bytes]:
    """The lines of a stream read in CHUNK blocks (a storage's stream need not have ``readline``)."""
    rest = b""
    while block := f.read(CHUNK):
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        yield from (p for p in parts if p.strip())
    if rest.strip():
        yield rest


_KEYS = ("path", "size", "mtime_ns", "mode", "blake3")


def _line(e: dict[str, Any]) -> bytes:
    """``e`` as one JSON line, as ``json.dumps(e, ensure_ascii=True, separators=(",", ":"))`` writes it; an
    entry of the usual keys formatted directly (3x faster: a line per file of the tree)."""
    if tuple(e) == _KEYS and type(e["size"]) is int and type(e["mtime_ns"]) is int and type(e["mode"]) is int:
        return (f'{{"path":{_json_str(e["path"])},"size":{e["size"]},"mtime_ns":{e["mtime_ns"]},'
                f'"mode":{e["mode"]},"blake3":{_json_str(e["blake3"])}}}\n').encode()
    return (json.dumps(e, ensure_ascii=True, separators=(",", ":")) + "\n").encode()


def write_entries(storage: Storage, key: str, entries: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
    """JSON lines of file entries to ``key``, written about CHUNK bytes at a time."""
    with storage.open_write(key) as w:
        lines: list[bytes] = []
        size = 0
        for e in entries:
            line = _line(e)
            lines.append(line)
            size += len(line)
            if size >= CHUNK:
                w.write(b"".join(lines))
                lines, size = [], 0
        if lines:
            w.write(b"".join(lines))


def _entry(m: Member, digest: str) -> dict[str, Any]:
    return {"path": m.name, "size": m.size, "mtime_ns": m.mtime_ns, "mode": m.mode, "blake3": digest}


# --------------------------------------------------------------------------- writing


class _TarArtifact(ArtifactStreamBase):
    """A tar volume of the directory source: taken apart as it is written (see :mod:`.tarsplit`)."""

    def __init__(self, sink: SyncSourceSink, name: str) -> None:
        super().__init__()
        self._sink = sink
        self.name = name
        self.digest = ""  # the volume's bytes are never all seen: see ArtifactWriter.digest
        self._skel_key = f"{sink.prefix}/{ARTIFACTS}/{name}{SKELETON_SUFFIX}"
        self._skel_writer: ObjectWriter | None = None
        self._stored = 0
        self._skeleton = Skeleton(self._write_skeleton)
        self._split = TarSplitter(self)
        self._member: Member | None = None
        self._hash: Any = None
        self._buf: list[memoryview] | None = None  # a small file's blocks, until its digest is known
        self._stream: _Stream | None = None
        self._reused: str | None = None
        self._ended: tuple[str, str] | None = None  # the last file member ended: (name, digest)
        self._files = 0
        self._done = False

    def _write_skeleton(self, data: bytes) -> None:
        if self._skel_writer is None:
            self._skel_writer = self._sink.storage.open_write(self._skel_key)
        self._skel_writer.write(data)
        self._stored += len(data)

    # ---- TarSplitter's handler

    def literal(self, data: bytes) -> None:
        self._skeleton.literal(data)

    def other_member(self, member: Member) -> None:
        try:
            check_path(member.name)
        except ValueError as exc:
            raise DataManagerError(f"artifact {self.name}: {exc}") from None

    def file_start(self, member: Member) -> None:
        try:
            check_path(member.name)
        except ValueError as exc:
            raise DataManagerError(f"artifact {self.name}: {exc}") from None
        self._member = member
        self._stream = None
        # Unchanged by size and mtime (never with checksum): the bytes that follow, if the source sends them
        # (a source that does not ask recall() first, or one whose file changed between its stat and this
        # header), are neither hashed nor kept; the mirror's digest stands for them, as for a file not read.
        self._reused = self._sink.unchanged(member)
        if self._reused is not None:
            self._hash = self._buf = None
            return
        self._hash = blake3()
        self._buf = [] if member.size <= BUFFER else None

    def file_data(self, view: memoryview) -> None:
        if self._reused is not None:
            return
        self._hash.update(view)
        if not isinstance(view.obj, bytes):  # a buffer the source may reuse: copied; bytes are kept as they are
            view = memoryview(bytes(view))
        if self._buf is not None:
            self._buf.append(view)
            return
        if self._stream is None:
            assert self._member is not None
            m = self._member
            self._stream = self._sink.stream(m.name, FileAttributes(m.mtime_ns, m.mode))  # digest not known yet
        self._stream.write(view)

    def file_end(self) -> None:
        m = self._member
        assert m is not None
        uploaded = queued = False
        if self._reused is not None:
            digest = self._reused
        else:
            digest = self._hash.hexdigest()
            known = self._sink.known(m.name)
            same = known is not None and known["blake3"] == digest and known["size"] == m.size
            if self._buf is not None:
                if not same:
                    parts = self._buf
                    self._sink.upload(m.name, parts[0] if len(parts) == 1 else b"".join(parts), _entry(m, digest))
                    uploaded = queued = True
            elif self._stream is not None:
                stream, self._stream = self._stream, None
                if same:
                    stream.end(None)  # the object holds these bytes already: the upload is abandoned
                else:
                    stream.end(_entry(m, digest))
                    uploaded = queued = True
        self._buf = None
        self._ended = (m.name, digest)
        self._skeleton.file(m.name, m.size, digest)
        self._files += 1
        self._sink.file_done(m, digest, uploaded, journal=not queued)
        self._member = None

    # ---- ArtifactWriter

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            raise ValueError(f"artifact {self.name} is closed")
        n = memoryview(data).nbytes
        self._split.feed(data)
        if self._sink.progress is not None and n:
            self._sink.progress(n)
        return n

    def cut(self) -> None:
        """A file boundary: files are mirrored one object each anyway."""

    def reuse(self, item: str, size: int) -> Mapping[str, Any] | None:
        """The file whose header was just written is unchanged (path, size and mtime as the mirror holds it,
        and ``checksum`` is off): its bytes are not needed; the mirror's digest of it is returned."""
        m = self._split.member
        if m is None or self._split.data_started or size != m.size + (-m.size % BLOCK):
            return None
        digest = self._reused if m is self._member else self._sink.unchanged(m)  # asked at file_start already
        if digest is None:
            return None
        self._reused = digest
        self._split.skip_file()
        if self._sink.progress is not None and size:
            self._sink.progress(size)
        return {"blake3": digest}

    def file_digest(self, path: str) -> str | None:
        """The BLAKE3 of the data of the file member that ended last, if it is ``path`` (see
        ArtifactWriter.file_digest): the digest this engine records for the file's object."""
        ended = self._ended
        return ended[1] if ended is not None and ended[0] == path and self._split.between_members else None

    def recall(self, item: str, size: int, header: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Before the source opens a file: ``{"blake3": ...}`` if the file whose header will say ``header``
        (path, size, mtime_ns) is unchanged as :meth:`reuse` judges it; nothing is written or changed."""
        return self._sink.recall(header)

    def remember(self, item: str, size: int, extra: Mapping[str, Any]) -> None:
        """The manifest is the sync engine's files cache."""

    def close(self) -> None:
        """Commit: the volume must have ended between members; its skeleton stored, its record kept."""
        if self._done:
            return
        try:
            if not self._split.between_members:
                raise DataManagerError(f"artifact {self.name}: the tar stream ends inside a member")
            self._sink.wait_uploads()  # every file of the volume stored before the volume counts
            self._skeleton.finish()
            if self._skel_writer is None:
                self._write_skeleton(b"")
            assert self._skel_writer is not None
            self._skel_writer.commit()
        except BaseException:
            self.abort()
            raise
        self._done = True
        super().close()
        rec = ArtifactRecord(self.name, self._skeleton.size, self._skeleton.tree.hexdigest(),
                             self._stored + self._sink.take_uploaded(self.name), "sync-tar", "blake3-chunks",
                             {"kind": "tar", "files": self._files})
        self._sink.committed(rec)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._stream is not None:
            self._stream.end(None)
            self._stream = None
        if self._skel_writer is not None:
            self._skel_writer.abort()
        try:
            self._sink.wait_uploads()
        except BaseException as exc:  # the upload that failed: this abort's cause, or found by it
            log.debug("%s: an upload failed while aborting: %s", self.name, exc)
        try:
            self._sink.flush_journal()  # a stopped backup keeps what it uploaded (resume skips it)
        except DataManagerError as exc:
            log.warning("%s: cannot record what was uploaded (%s); resuming uploads it again", self.name, exc)
        self._sink.aborted(self.name)
        super().close()


class _PlainArtifact(ArtifactStreamBase):
    """Any other artifact (the source's ``files.jsonl``): one object, as it is, BLAKE3 checked on read."""

    def __init__(self, sink: SyncSourceSink, name: str) -> None:
        super().__init__()
        self._sink = sink
        self.name = name
        self._writer = sink.storage.open_write(f"{sink.prefix}/{ARTIFACTS}/{name}")
        self._hash = blake3()
        self._size = 0
        self._done = False
        self.digest = ""

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            raise ValueError(f"artifact {self.name} is closed")
        n = memoryview(data).nbytes
        self._hash.update(data)
        self._writer.write(data)
        self._size += n
        if self._sink.progress is not None and n:
            self._sink.progress(n)
        return n

    def cut(self) -> None:
        pass

    def reuse(self, item: str, size: int) -> Mapping[str, Any] | None:
        return None

    def recall(self, item: str, size: int, header: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Asked here while no volume of the source is open: as :meth:`_TarArtifact.recall`."""
        return self._sink.recall(header)

    def remember(self, item: str, size: int, extra: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        if self._done:
            return
        try:
            self._writer.commit()
        except BaseException:
            self.abort()
            raise
        self._done = True
        super().close()
        self.digest = self._hash.hexdigest()
        self._sink.committed(ArtifactRecord(self.name, self._size, self.digest, self._size, "none", "blake3",
                                            {"kind": "plain"}))

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._writer.abort()
        self._sink.aborted(self.name)
        super().close()


class _Budget:
    """At most ``limit`` bytes handed to upload threads and not written yet (one block more than the limit
    is let through when nothing is in flight, so a block larger than the limit cannot wait forever)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            while self._used and self._used + n > self._limit:
                self._cond.wait()
            self._used += n

    def give(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


_END = object()


class _Stream:
    """A larger file's bytes on their way to its mirror object, written by an upload thread while the source
    reads on: :meth:`write` queues a copy of each block (within the sink's byte budget), :meth:`end` says
    whether to commit (with the manifest entry, journaled once committed) or abandon the object."""

    def __init__(self, sink: SyncSourceSink, writer: ObjectWriter) -> None:
        self._sink = sink
        self._writer = writer
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ended = False

    def write(self, view: memoryview) -> None:
        """Queue a block (a view of immutable bytes: kept, not copied)."""
        self._sink.raise_failed()  # an upload failed: stop reading now, not at the volume's end
        self._sink.budget.take(view.nbytes)
        self._queue.put(view)

    def end(self, entry: dict[str, Any] | None) -> None:
        """Commit the object once every block is written (``entry``), or abort it (None). Idempotent."""
        if not self._ended:
            self._ended = True
            self._queue.put((_END, entry))

    def pump(self) -> None:
        """On an upload thread: write the blocks as they come, then commit or abort. After a failure the
        blocks are still taken off the queue (the budget freed), so the source never waits on a dead upload."""
        failure: BaseException | None = None
        while True:
            item = self._queue.get()
            if isinstance(item, tuple):
                entry = item[1]
                break
            try:
                if failure is None:
                    self._writer.write(item)
            except BaseException as exc:
                failure = exc
                self._sink.failed(exc)
            finally:
                self._sink.budget.give(item.nbytes)
        if failure is not None or entry is None:
            self._writer.abort()
            if failure is not None:
                raise failure
            return
        try:
            self._writer.commit()
        except BaseException:
            self._writer.abort()
            raise
        self._sink.journaled(entry)


class SyncSourceSink(SourceSink):
    """One directory source mirrored below ``DATA_ID/mirror/SOURCE/``."""

    compresses = False  # the mirror holds each file as it is
    hashes_files = True  # each file's digest is its object's: the source may take it (file_digest)

    def __init__(self, backup: SyncBackupWriter, record: SourceRecord, progress: Progress | None) -> None:
        super().__init__(record, progress)
        self.backup = backup
        self.storage = backup.storage
        self.prefix = f"{backup.prefix}/{record.name}"
        self.mirror = f"{backup.data_id}/{MIRROR}/{record.name}"
        self.prev_files, self.prev_pending = backup.previous(record.name)
        self.overlay = backup.journal(record.name)  # what interrupted runs of this backup uploaded
        # What the mirror really holds (one listing): an object someone deleted or replaced with another size
        # is uploaded again, whatever the manifest says.
        # The listing runs on a thread while the source starts its walk (a storage's LIST requests, or a
        # filesystem's stat calls, wait on I/O); the first file that needs it waits for it.
        self._present: dict[str, int | None] | None = None
        self._listing: Future[dict[str, int | None]] | None = None
        if self.prev_files or self.overlay:
            lister = ThreadPoolExecutor(1, thread_name_prefix="dm-sync-list")
            self._listing = lister.submit(lambda: {key: entry.size for key, entry in self.storage.walk(self.mirror)})
            lister.shutdown(wait=False)
        else:
            self._present = {}
        self.files: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}
        self._prev_dirs: set[str] | None = None
        self.stats = {"files": 0, "uploaded": 0, "uploaded_bytes": 0, "unchanged": 0, "removed_early": 0}
        self._attributed = 0
        self._journal: list[dict[str, Any]] = []
        self._journal_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(2 * UPLOADERS)
        self.budget = _Budget(IN_FLIGHT)
        self._streams = threading.BoundedSemaphore(STREAMS)
        self._inflight: set[Future[None]] = set()
        self._failed: BaseException | None = None
        self._journal_at = time.monotonic()
        self._journal_n = backup.next_journal(record.name)

    # ---- what the artifact writers ask

    def known(self, path: str) -> dict[str, Any] | None:
        """What the mirror holds for ``path`` (uploaded by an interrupted run of this backup, or recorded by
        the last complete one)."""
        e = self.overlay.get(path) or self.prev_files.get(path)
        if e is None:
            return None
        present = self._present if self._present is not None else self.present()
        size = present.get(self.key(path), -1)
        return e if size is None or size == e["size"] else None

    def present(self) -> dict[str, int | None]:
        """Mirror key -> size of every object the mirror holds (one listing per backup)."""
        if self._present is None:
            assert self._listing is not None
            self._present = self._listing.result()
        return self._present

    def unchanged(self, m: Member) -> str | None:
        """The digest of ``m`` as the mirror holds it, if size and mtime say it is unchanged (never with
        ``checksum``)."""
        return self._unchanged(m.name, m.size, m.mtime_ns)

    def recall(self, header: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """:meth:`unchanged` asked before the member exists (ArtifactWriter.recall): by the ``path``, ``size``
        and ``mtime_ns`` its header will carry. Only reads what the sink holds."""
        path, size, mtime_ns = header.get("path"), header.get("size"), header.get("mtime_ns")
        if not (isinstance(path, str) and isinstance(size, int) and isinstance(mtime_ns, int)):
            return None
        digest = self._unchanged(path, size, mtime_ns)
        return None if digest is None else {"blake3": digest}

    def _unchanged(self, path: str, size: int, mtime_ns: int) -> str | None:
        if self.backup.engine.checksum:
            return None
        e = self.known(path)
        if e is not None and e["size"] == size and e["mtime_ns"] == mtime_ns:
            return str(e["blake3"])
        return None

    def key(self, path: str) -> str:
        return f"{self.mirror}/{mirror_name(path)}"

    def open_mirror(self, path: str, attrs: FileAttributes) -> ObjectWriter:
        """A writer of ``path``'s mirror object, once nothing of the last backup is in its way; ``attrs`` go to
        the storage with it (see Storage.open_write_deferred)."""
        name = mirror_name(path)
        other = self._names.setdefault(name, path)
        if other != path:
            raise DataManagerError(f"source {self.source_name!r}: {path!r} and {other!r} have one mirror name "
                                   f"{name!r} (names that are not UTF-8 are stored with \\xNN escapes)")
        self._clear_way(path)
        # durable at the next journal or at the source's end (persist): one flush for many files
        return self.storage.open_write_deferred(f"{self.mirror}/{name}", attrs)

    def _clear_way(self, path: str) -> None:
        """A file replaced by a directory of the same name, or the other way round: the old objects go now
        (pending deletion or not), so the new ones can be written (a filesystem has no file and directory
        of one name)."""
        old = chain(self.prev_files, self.prev_pending, self.overlay)
        if self._prev_dirs is None:
            self._prev_dirs = {a for p in old for a in ancestors(p)}
            old = chain(self.prev_files, self.prev_pending, self.overlay)
        doomed: set[str] = set()
        for a in ancestors(path):
            if a in self.prev_files or a in self.prev_pending or a in self.overlay:
                doomed.add(a)
        if path in self._prev_dirs:
            doomed.update(p for p in old if p.startswith(path + "/"))
        for p in sorted(doomed, key=lambda p: -p.count("/")):
            if p not in self.files:
                self.storage.delete(self.key(p))
                self.stats["removed_early"] += 1

    def upload(self, path: str, data: bytes | memoryview, entry: dict[str, Any]) -> None:
        """Store a small file's object on an upload thread (at most ``2 * UPLOADERS`` waiting); journaled once
        committed. The first failure is raised by the next call, or by :meth:`wait_uploads`."""
        self.raise_failed()
        attrs = FileAttributes(entry["mtime_ns"], entry["mode"], entry["blake3"])
        writer = self.open_mirror(path, attrs)  # names checked and the way cleared here, in order
        self._submit(self._put, writer, writer, data, entry)

    def stream(self, path: str, attrs: FileAttributes) -> _Stream:
        """A larger file's object, written on an upload thread as its blocks come (see :class:`_Stream`)."""
        self.raise_failed()
        self._streams.acquire()
        try:
            writer = self.open_mirror(path, attrs)
        except BaseException:
            self._streams.release()
            raise
        stream = _Stream(self, writer)
        try:
            self._submit(self._pump, writer, stream)
        except BaseException:
            self._streams.release()
            raise
        return stream

    def _pump(self, stream: _Stream) -> None:
        try:
            stream.pump()
        finally:
            self._streams.release()

    def _submit(self, job: Callable[..., None], writer: ObjectWriter, *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(UPLOADERS, thread_name_prefix="dm-sync-upload")
        try:
            self._slots.acquire()
        except BaseException:
            writer.abort()
            raise
        try:
            future = self._pool.submit(job, *args)
        except BaseException:
            self._slots.release()
            writer.abort()
            raise
        with self._journal_lock:
            self._inflight.add(future)
        future.add_done_callback(self._uploaded)

    def _put(self, writer: ObjectWriter, data: bytes | memoryview, entry: dict[str, Any]) -> None:
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        self.journaled(entry)

    def journaled(self, entry: dict[str, Any]) -> None:
        """``entry``'s object is committed: the next journal lists it."""
        with self._journal_lock:
            self._journal.append(entry)

    def failed(self, exc: BaseException) -> None:
        """An upload failed: the next call of the source's thread raises it."""
        with self._journal_lock:
            if self._failed is None:
                self._failed = exc

    def _uploaded(self, future: Future[None]) -> None:
        self._slots.release()
        with self._journal_lock:
            self._inflight.discard(future)
            exc = None if future.cancelled() else future.exception()
            if exc is not None and self._failed is None:
                self._failed = exc

    def raise_failed(self) -> None:
        """Raise the first upload failure, if any (called by the source's thread)."""
        if self._failed is not None:
            raise self._failed

    def wait_uploads(self) -> None:
        """Every queued upload done; the first failure raised."""
        with self._journal_lock:
            pending = list(self._inflight)
        wait_all(pending)
        for future in pending:  # done, but its callback may not have run yet: ask the future itself
            exc = None if future.cancelled() else future.exception()
            if exc is not None:
                raise exc
        self.raise_failed()  # those that ended (and were called back) before the snapshot

    def file_done(self, m: Member, digest: str, uploaded: bool, journal: bool = True) -> None:
        """``m`` is in the mirror (``uploaded``: by this run; ``journal``: committed already, else
        :meth:`upload` journals it once it is)."""
        entry = _entry(m, digest)
        self.files[m.name] = entry
        self.stats["files"] += 1
        if uploaded:
            self.stats["uploaded"] += 1
            self.stats["uploaded_bytes"] += m.size
            if journal:
                with self._journal_lock:
                    self._journal.append(entry)
            if len(self._journal) >= JOURNAL_EVERY or time.monotonic() - self._journal_at >= JOURNAL_SECONDS:
                self.flush_journal()
        else:
            self.stats["unchanged"] += 1

    def take_uploaded(self, artifact: str) -> int:
        """Bytes uploaded since the last volume was committed (counted as that volume's stored size)."""
        new = self.stats["uploaded_bytes"] - self._attributed
        self._attributed += new
        return new

    def flush_journal(self) -> None:
        """Write the files uploaded since the last journal (resume skips them)."""
        with self._journal_lock:
            entries, self._journal = self._journal, []
        if entries:
            try:
                self.storage.persist()  # a journal lists only objects that survive a crash
                write_entries(self.storage, f"{self.prefix}/{JOURNAL}{self._journal_n:06d}.jsonl", entries)
            except BaseException:
                with self._journal_lock:
                    self._journal[:0] = entries
                raise
            self._journal_n += 1
        self._journal_at = time.monotonic()

    # ---- SourceSink

    def open_artifact(self, name: str, compression: Compression, digest: bool) -> ArtifactStreamBase:
        # a directory's tar volume (whose digest is "") is asked for none; every other artifact is hashed
        if name.endswith(".tar"):
            return _TarArtifact(self, name)
        return _PlainArtifact(self, name)

    def store_record(self, record: SourceRecord) -> None:
        self.wait_uploads()
        if self._pool is not None:
            self._pool.shutdown()
        self.storage.persist()  # every mirror object durable before the lists that name it
        write_entries(self.storage, f"{self.prefix}/{FILES}", [self.files[p] for p in sorted(self.files)])
        write_json(self.storage, f"{self.prefix}/{SOURCE_MANIFEST}", record.to_json())


class SyncBackupWriter(BackupWriter):
    """A backup being written: the mirror updated as files come, ``backup.json`` last."""

    def __init__(self, engine: SyncEngine, data_id: str, timestamp: str, extra: Mapping[str, Any]) -> None:
        super().__init__(data_id, timestamp, extra)
        self.engine = engine
        self.storage = engine.storage
        self.prefix = f"{data_id}/{BACKUPS}/{timestamp}"
        self._base = engine.last_complete(data_id, before=timestamp)
        self._journals: dict[str, dict[str, dict[str, Any]]] = {}
        self._sinks: dict[str, SyncSourceSink] = {}
        self._previous: dict[str, tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]] = {}

    def previous(self, source: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """The files and pending deletions of ``source`` in the last complete backup (empty: none)."""
        if self._base is None or source not in self._base.sources:
            return {}, {}
        if source not in self._previous:
            base = f"{self.data_id}/{BACKUPS}/{self._base.timestamp}/{source}"
            self._previous[source] = (read_entries(self.storage, f"{base}/{FILES}"),
                                      read_entries(self.storage, f"{base}/{PENDING}"))
        return self._previous[source]

    def journal(self, source: str) -> dict[str, dict[str, Any]]:
        """What interrupted runs of this backup uploaded for ``source`` (read by :meth:`discard_source`)."""
        return self._journals.get(source, {})

    def _journal_keys(self, source: str) -> list[str]:
        return sorted(e.name for e in self.storage.list(f"{self.prefix}/{source}")
                      if not e.is_dir and e.name.startswith(JOURNAL) and e.name.endswith(".jsonl"))

    def next_journal(self, source: str) -> int:
        names = self._journal_keys(source)
        numbers = [int(n[len(JOURNAL):-len(".jsonl")]) for n in names if n[len(JOURNAL):-len(".jsonl")].isdigit()]
        return max(numbers, default=0) + 1

    def source(self, record: SourceRecord, progress: Progress | None = None) -> SyncSourceSink:
        if record.type not in SOURCE_TYPES:
            raise UsageError(f"source {record.name!r} is a {record.type} source: storage {self.storage.name!r} uses "
                             f"the sync engine, which mirrors {', '.join(SOURCE_TYPES)} sources only")
        sink = SyncSourceSink(self, record, progress)
        self._sinks[record.name] = sink
        return sink

    def finished_source(self, name: str) -> SourceRecord | None:
        key = f"{self.prefix}/{name}/{SOURCE_MANIFEST}"
        try:
            with self.storage.open_read(key) as f:
                return SourceRecord.from_json(read_json_object(f, key))
        except NotFoundError:
            return None
        except (CorruptBackupError, KeyError, TypeError, AttributeError, ValueError):
            log.warning("%s: unreadable, redoing that source", key)
            return None

    def discard_source(self, name: str) -> None:
        """Keep what the interrupted run uploaded (its journals: those files are not uploaded again);
        forget the rest it wrote for ``name``."""
        found: dict[str, dict[str, Any]] = {}
        for j in self._journal_keys(name):
            try:
                found.update(read_entries(self.storage, f"{self.prefix}/{name}/{j}"))
            except CorruptBackupError as exc:
                log.warning("%s; its files will be uploaded again", exc)
        self._journals[name] = found
        self.storage.delete_tree(f"{self.prefix}/{name}/{ARTIFACTS}")
        for leftover in (FILES, PENDING, SOURCE_MANIFEST):
            self.storage.delete(f"{self.prefix}/{name}/{leftover}")

    def discard_other_sources(self, keep: Collection[str]) -> list[str]:
        gone = []
        for entry in list(self.storage.list(self.prefix)):
            if entry.is_dir and entry.name not in keep:
                self.storage.delete_tree(f"{self.prefix}/{entry.name}")
                gone.append(entry.name)
        return gone

    def commit(self) -> dict[str, Any]:
        """Each source's pending deletions worked out (expired objects removed), then ``backup.json``."""
        summary: dict[str, Any] = {}
        for rec in self.sources:
            sink = self._sinks.get(rec.name)
            if sink is not None:
                files, stats = sink.files, dict(sink.stats)
            else:  # done by an interrupted run of this backup
                files, stats = read_entries(self.storage, f"{self.prefix}/{rec.name}/{FILES}"), {}
            prev_files, prev_pending = self.previous(rec.name)
            pending, removed = self._pending(rec.name, files, prev_files, prev_pending, self.journal(rec.name))
            write_entries(self.storage, f"{self.prefix}/{rec.name}/{PENDING}", [pending[p] for p in sorted(pending)])
            summary[rec.name] = {**stats, "files": len(files), "pending_deletion": len(pending), "removed": removed}
        manifest = {"format": FORMAT, **self.manifest(), "sync": {"delete_after": self.engine.delete_after,
                                                                   "checksum": self.engine.checksum,
                                                                   "sources": summary}}
        write_json(self.storage, f"{self.prefix}/{MANIFEST}", manifest)
        return manifest

    def _pending(self, source: str, files: Mapping[str, Any], prev_files: Mapping[str, dict[str, Any]],
                 prev_pending: Mapping[str, dict[str, Any]], overlay: Mapping[str, dict[str, Any]]
                 ) -> tuple[dict[str, dict[str, Any]], int]:
        """Objects of files no longer in the source: pending deletion since the first backup that missed
        them; removed once ``delete_after`` has passed since then (never with ``"never"``)."""
        now = parse_timestamp(self.timestamp)
        dirs = {a for p in files for a in ancestors(p)}
        mirror = f"{self.data_id}/{MIRROR}/{source}"
        pending: dict[str, dict[str, Any]] = {}
        removed = 0
        for path, e in chain(overlay.items(), prev_pending.items(), prev_files.items()):
            if path in files or path in pending or path in dirs or any(a in files for a in ancestors(path)):
                continue  # still there; or its object made way for a file or directory of that name
            since = prev_pending[path]["since"] if path in prev_pending else self.timestamp
            after = self.engine.delete_after
            if after is not None and (now - parse_timestamp(since)).total_seconds() >= after:
                self.storage.delete(f"{mirror}/{mirror_name(path)}")
                removed += 1
            else:
                pending[path] = {**{k: e[k] for k in ("path", "size", "mtime_ns", "mode", "blake3")}, "since": since}
        return pending, removed


# --------------------------------------------------------------------------- reading


class _TarRebuilder(ReadAhead):
    """A volume again, from its skeleton and the mirror objects, every file checked against its BLAKE3."""

    def __init__(self, storage: Storage, skeleton: str, mirror: str, rec: ArtifactRecord, label: str) -> None:
        self._storage = storage
        self._skeleton = skeleton
        self._mirror = mirror
        self._rec = rec
        self._label = label
        super().__init__(4, "dm-sync-read")

    def failed(self, exc: BaseException) -> BaseException:
        if isinstance(exc, DataManagerError):
            return exc
        return CorruptBackupError(f"{self._label}: unreadable skeleton ({exc})")

    def produce(self, put: Callable[[bytes], bool]) -> None:
        import zstandard

        try:
            raw = self._storage.open_read(self._skeleton)
        except NotFoundError:
            raise CorruptBackupError(f"{self._skeleton}: missing from the storage") from None
        tree = blake3()
        size = 0
        with raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, read_across_frames=True)

            def exactly(n: int) -> bytes:
                data = b""
                while len(data) < n:
                    more = reader.read(n - len(data))
                    if not more:
                        raise CorruptBackupError(f"{self._skeleton}: truncated")
                    data += more
                return data

            while True:
                kind = exactly(1)
                if kind == b"E":
                    break
                (n,) = struct.unpack("<I", exactly(4))
                if kind == b"L":
                    if n > 4 * LITERAL_MAX:
                        raise CorruptBackupError(f"{self._skeleton}: a record too large")
                    data = exactly(n)
                    tree.update(b"L" + struct.pack("<Q", n))
                    tree.update(data)
                    size += n
                    if not put(data):
                        return
                elif kind == b"F":
                    if n > FILE_RECORD_MAX:
                        raise CorruptBackupError(f"{self._skeleton}: a record too large")
                    doc = json.loads(exactly(n))
                    if not isinstance(doc, dict) or not _int(doc.get("size")) or not _is_digest(doc.get("blake3")):
                        raise CorruptBackupError(f"{self._skeleton}: a bad file record")
                    try:
                        path = check_path(doc.get("path"))
                    except ValueError as exc:
                        raise CorruptBackupError(f"{self._skeleton}: {exc}") from None
                    if not self._file(path, doc["size"], doc["blake3"], put):
                        return
                    tree.update(b"F" + struct.pack("<Q", doc["size"]) + bytes.fromhex(doc["blake3"]))
                    size += doc["size"]
                else:
                    raise CorruptBackupError(f"{self._skeleton}: unknown record {kind!r}")
                if size > self._rec.size:
                    raise CorruptBackupError(f"{self._label}: longer than the {self._rec.size} bytes recorded")
        if size != self._rec.size:
            raise CorruptBackupError(f"{self._label}: {size} bytes, {self._rec.size} recorded (truncated?)")
        if tree.hexdigest() != self._rec.digest:
            raise CorruptBackupError(f"{self._label}: its skeleton does not match the digest recorded")

    def _file(self, path: str, size: int, digest: str, put: Callable[[bytes], bool]) -> bool:
        key = f"{self._mirror}/{mirror_name(path)}"
        try:
            f = self._storage.open_read(key)
        except NotFoundError:
            raise CorruptBackupError(f"{key}: missing from the storage") from None
        h = blake3()
        got = 0
        with f:
            while got <= size:
                data = f.read(min(CHUNK, size - got + 1))
                if not data:
                    break
                got += len(data)
                if got > size:
                    break
                h.update(data)
                if not put(data):
                    return False
        if got != size or h.hexdigest() != digest:
            raise CorruptBackupError(f"{key}: differs from what this backup recorded ({got} bytes, {size} recorded; "
                                     f"changed in the storage, or by a later backup: the mirror keeps one version)")
        return True


class SyncArtifacts(StoredArtifacts):
    """The :class:`~data_manager.types.ArtifactSet` of one source in a complete sync backup."""

    def __init__(self, storage: Storage, data_id: str, timestamp: str, record: SourceRecord,
                 progress: Progress | None = None) -> None:
        super().__init__(f"{data_id}/{BACKUPS}/{timestamp}", record, progress)
        self._storage = storage
        self._mirror = f"{data_id}/{MIRROR}/{record.name}"

    def reader(self, rec: ArtifactRecord, label: str) -> io.RawIOBase:
        key = f"{self._prefix}/{self.source_name}/{ARTIFACTS}/{rec.name}"
        if rec.location.get("kind") == "tar":
            return _TarRebuilder(self._storage, key + SKELETON_SUFFIX, self._mirror, rec, label)
        try:
            raw = self._storage.open_read(key)
        except NotFoundError:
            raise CorruptBackupError(f"{key}: missing from the storage") from None
        return VerifyingReader(raw, rec, key)


class SyncEngine(RepositoryEngine):
    """Backups of directory sources as a browsable mirror (see the module docstring)."""

    kind = "sync"
    settings_keys = ("delete_after", "checksum")
    keeps_partial_sources = True  # the mirror objects a stopped backup uploaded stay, listed by its journals

    def __init__(self, storage: Storage, settings: Settings | None = None) -> None:
        super().__init__(storage, settings)
        self.delete_after, self.checksum = self.check_settings(self.settings)

    @classmethod
    def check_settings(cls, settings: Settings) -> tuple[float | None, bool]:
        """``delete_after`` (a duration, or ``"never"``; default 7 days) and ``checksum`` (default false),
        or a config error naming the key."""
        value = settings.get("delete_after")
        after: float | None
        if isinstance(value, str) and value.strip().lower() == "never":
            after = None
        else:
            after = settings.get_duration("delete_after", DEFAULT_DELETE_AFTER)
        return after, settings.get_bool("checksum", False)

    # ---- listing

    def data_ids(self) -> list[str]:
        return sorted(e.name for e in self.storage.list("") if e.is_dir and not e.name.startswith("."))

    def timestamps(self, data_id: str) -> list[str]:
        return sorted(e.name for e in self.storage.list(f"{data_id}/{BACKUPS}") if e.is_dir and is_timestamp(e.name))

    def read_manifest(self, data_id: str, timestamp: str) -> dict[str, Any] | None:
        """``backup.json`` of ``data_id/timestamp``, checked (None: none, the backup is incomplete)."""
        key = f"{data_id}/{BACKUPS}/{timestamp}/{MANIFEST}"
        try:
            with self.storage.open_read(key) as f:
                doc = read_json_object(f, key)
        except NotFoundError:
            return None
        if doc.get("format") != FORMAT:
            raise CorruptBackupError(f"{key}: unreadable metadata (unknown format {doc.get('format')!r})")
        records = checked_sources(doc, key)
        if (doc.get("data_id"), doc.get("timestamp")) != (data_id, timestamp):
            raise CorruptBackupError(
                f"{key}: records itself as {doc.get('data_id')}/{doc.get('timestamp')}: moved or copied from elsewhere")
        for rec in records:
            for art in rec.artifacts:
                if art.location.get("kind") not in ("tar", "plain"):
                    raise CorruptBackupError(f"{key}: artifact {art.name!r}: unknown kind")
        return doc

    def backups(self, data_id: str) -> list[BackupInfo]:
        out = []
        for ts in self.timestamps(data_id):
            prefix = f"{data_id}/{BACKUPS}/{ts}"
            try:
                manifest = self.read_manifest(data_id, ts)
            except CorruptBackupError as exc:
                log.info("%s", exc)
                sources = sorted(e.name for e in self.storage.list(prefix) if e.is_dir)
                out.append(BackupInfo(data_id, ts, False, None, None, sources, damaged=str(exc)))
                continue
            if manifest is None:
                sources = sorted(e.name for e in self.storage.list(prefix) if e.is_dir)
                out.append(BackupInfo(data_id, ts, False, None, None, sources))
            else:
                out.append(BackupInfo(data_id, ts, True, manifest.get("size"), manifest.get("stored_size"),
                                      [s["name"] for s in manifest["sources"]], manifest))
        return out

    def last_complete(self, data_id: str, before: str | None = None) -> BackupInfo | None:
        """The newest complete, undamaged backup of ``data_id`` (older than ``before``)."""
        for info in reversed(self.backups(data_id)):
            if info.complete and (before is None or info.timestamp < before):
                return info
        return None

    # ---- writing and reading

    def start_backup(self, data_id: str, extra: Mapping[str, Any] | None = None,
                     timestamp: str | None = None) -> SyncBackupWriter:
        if not NAME_RE.match(data_id):
            raise UsageError(f"bad dataset id {data_id!r}")
        return SyncBackupWriter(self, data_id, timestamp or self.new_timestamp(data_id), extra or {})

    def artifacts(self, info: BackupInfo, source: str, progress: Progress | None = None) -> SyncArtifacts:
        for rec in self.source_records(info):
            if rec.name == source:
                return SyncArtifacts(self.storage, info.data_id, info.timestamp, rec, progress)
        raise UsageError(f"backup {info.data_id}/{info.timestamp} has no source {source!r}")

    def source_records(self, info: BackupInfo) -> Iterator[SourceRecord]:
        if info.manifest is None:
            raise UsageError(f"backup {info.data_id}/{info.timestamp} is incomplete; it cannot be used")
        yield from checked_sources(info.manifest, f"{info.data_id}/{info.timestamp}")

    def artifact_problem(self, info: BackupInfo, source: str, art: ArtifactRecord) -> str | None:
        key = f"{info.data_id}/{BACKUPS}/{info.timestamp}/{source}/{ARTIFACTS}/{art.name}"
        if art.location.get("kind") == "tar":
            key += SKELETON_SUFFIX
        return None if self.storage.exists(key) else f"{key}: missing from the storage"

    # ---- maintenance

    def delete_incomplete(self, data_id: str, timestamp: str) -> None:
        """The incomplete backup's records; the mirror objects it uploaded stay (they are the mirror now)."""
        if self.storage.exists(f"{data_id}/{BACKUPS}/{timestamp}/{MANIFEST}"):
            raise UsageError(f"backup {data_id}/{timestamp} is complete; cleanup never removes it")
        self.storage.delete_tree(f"{data_id}/{BACKUPS}/{timestamp}")

    def sweep_unfinished(self, data_id: str, timestamp: str, older_than: float, remove: bool) -> list[str]:
        found = list(self.storage.sweep_unfinished(f"{data_id}/{BACKUPS}/{timestamp}", older_than, remove=remove))
        return found + list(self.storage.sweep_unfinished(f"{data_id}/{MIRROR}", older_than, remove=remove))

    # ---- retention: a backup's records go; the mirror is the newest backup's, whatever is forgotten.
    # Holds are worm's: DATA_ID/.holds/TIMESTAMP.json (the same objects, the same checks).

    HOLDS = WormEngine.HOLDS
    HOLD_FORMAT = WormEngine.HOLD_FORMAT
    _hold_key = WormEngine._hold_key
    holds = WormEngine.holds
    set_hold = WormEngine.set_hold

    def forget(self, data_id: str, timestamps: Collection[str]) -> list[str]:
        """Remove the records of these complete backups (``backup.json`` first: an interrupted forget leaves
        an incomplete backup for ``cleanup``); never the newest complete one, whose file lists the next
        backup starts from. The mirror objects stay: they are the newest backup's (or pending deletion)."""
        from ...retention import check_timestamp

        stamps = list(dict.fromkeys(timestamps))
        for ts in stamps:
            check_timestamp(ts)
        newest = self.last_complete(data_id)
        held = self.holds(data_id)
        for ts in stamps:
            if ts in held:
                raise UsageError(f"backup {data_id}/{ts} is held ({held[ts]}); not forgotten")
            if self.read_manifest(data_id, ts) is None:
                raise UsageError(f"backup {data_id}/{ts} is not a complete backup in {self.location()}; "
                                 f"incomplete ones are removed by cleanup")
            if newest is not None and ts == newest.timestamp:
                raise UsageError(f"backup {data_id}/{ts} is the newest of {data_id}: the sync engine keeps it "
                                 f"(the mirror is its content)")
        for ts in stamps:
            self.storage.delete(f"{data_id}/{BACKUPS}/{ts}/{MANIFEST}")
            self.storage.delete_tree(f"{data_id}/{BACKUPS}/{ts}")
        return stamps

    # ---- what the mirror holds

    def files(self, data_id: str, which: str = "latest") -> dict[str, dict[str, dict[str, Any]]]:
        """source -> path -> entry (size, mtime_ns, mode, blake3) of the files backup ``which`` recorded."""
        info = self.resolve(data_id, which)
        return {name: read_entries(self.storage, f"{data_id}/{BACKUPS}/{info.timestamp}/{name}/{FILES}")
                for name in info.sources}

    def pending(self, data_id: str, which: str = "latest") -> dict[str, dict[str, dict[str, Any]]]:
        """source -> path -> entry (with ``since``) of the objects of deleted files not removed yet."""
        info = self.resolve(data_id, which)
        return {name: read_entries(self.storage, f"{data_id}/{BACKUPS}/{info.timestamp}/{name}/{PENDING}")
                for name in info.sources}

    def diff(self, data_id: str, old: str, new: str = "latest") -> dict[str, dict[str, list[str]]]:
        """source -> {"added", "changed", "removed": sorted paths} between backups ``old`` and ``new``
        (changed: another digest or mode)."""
        a, b = self.files(data_id, old), self.files(data_id, new)
        out: dict[str, dict[str, list[str]]] = {}
        for source in sorted(set(a) | set(b)):
            x, y = a.get(source, {}), b.get(source, {})
            out[source] = {
                "added": sorted(set(y) - set(x)),
                "changed": sorted(p for p in set(x) & set(y)
                                  if (x[p]["blake3"], x[p]["mode"]) != (y[p]["blake3"], y[p]["mode"])),
                "removed": sorted(set(x) - set(y)),
            }
        return out

