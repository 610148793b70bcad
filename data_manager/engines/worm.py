"""The ``worm`` engine (write once, read many): every backup a full, self-contained copy, readable by hand.

Layout: ``DATA_ID/TIMESTAMP/SOURCE/ARTIFACT[.zst]``, compression zstd (one frame per 1 MiB block, or none
for data that does not compress), BLAKE3 of every artifact's original bytes, and JSON metadata.

A backup is complete when ``DATA_ID/TIMESTAMP/backup.json`` exists: it is written last, after every
artifact is committed, and lists each artifact with its size and BLAKE3 digest. ``SOURCE/source.json`` is
written when one source is done (so an interrupted backup can be resumed source by source).
``SOURCE/.committed/ARTIFACT.json`` records one artifact as soon as it is committed, until its source is
done, for a source that asked ``ArtifactSink.resumed()`` (one that can continue what it left half done):
``--resume`` offers those it may keep. Other sources do not pay for it (an fsynced object per artifact).
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, BinaryIO

from blake3 import blake3

from ..config import NAME_RE
from ..errors import CorruptBackupError, DataManagerError, NotFoundError, UsageError, first_line
from ..timestamps import is_timestamp, now_utc
from ..types import Compression, ObjectWriter, Storage
from .base import CHUNK, ArtifactStreamBase, BackupWriter, Progress, RepositoryEngine, SourceSink, read_json_object
from .records import (
    MANIFEST,
    SOURCE_MANIFEST,
    ArtifactRecord,
    BackupInfo,
    CheckReport,
    CopiedBackup,
    SourceRecord,
    check_artifact_name,
    checked_sources,
)
from .streams import Prefetching, StoredArtifacts

log = logging.getLogger(__name__)

# Format 2 records each artifact's BLAKE3 (2.3x less CPU than sha256, which format 1 recorded; both are read).
FORMAT = "data-manager-backup/2"
FORMATS = ("data-manager-backup/1", FORMAT)
# Level 1: on row dumps and text measured 2.5x faster than level 3 (260 vs 100 MB/s, one core) at a
# ratio within 10% either way; backups here are CPU-bound, and the level never matters to a reader.
ZSTD_LEVEL = 1
_SAMPLE = 256 << 10
_INCOMPRESSIBLE = 0.92  # stored ratio above which zstd is not worth it
COMMITTED = ".committed"  # SOURCE/.committed/ARTIFACT.json: an artifact committed by a source not yet done


# --------------------------------------------------------------------------- writing


def _is_incompressible(sample: bytes) -> bool:
    import zstandard

    if len(sample) < 4096:
        return False
    return len(zstandard.ZstdCompressor(level=1).compress(sample)) > _INCOMPRESSIBLE * len(sample)


class _Pipeline:
    """Hash, compress and store blocks on a second thread, so the source's own work overlaps with ours.

    hashlib and zstandard release the GIL on large buffers, so the two threads really run in parallel.
    The queue is bounded: memory stays at a few CHUNKs whatever the artifact's size.
    """

    def __init__(self, work: Callable[[bytes | memoryview], None], depth: int = 4) -> None:
        self._work = work
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dm-artifact", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            block = self._queue.get()
            if block is None:
                return
            if self._error is None:
                try:
                    self._work(block)
                except BaseException as exc:  # re-raised in the producer's thread
                    self._error = exc

    def put(self, block: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(block)

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class ArtifactStream(ArtifactStreamBase):
    """The writable stream a source gets from ``sink.open(name)``. See :class:`~data_manager.types.ArtifactWriter`."""

    def __init__(
        self,
        sink: SourceSink,
        name: str,
        writer: Callable[[str], ObjectWriter],
        compression: Compression,
        progress: Progress | None,
    ) -> None:
        super().__init__()
        self._sink = sink
        self.name = name
        self._open_writer = writer
        self._compression = compression
        self._progress = progress
        # Writes below CHUNK are staged (bytes by reference, anything mutable copied) until CHUNK is reached.
        self._staged: list[bytes | memoryview] = []
        self._staged_size = 0
        self._hash = blake3()
        self._size = 0
        self._stored = 0
        self._writer: ObjectWriter | None = None
        self._compressor: Any = None
        self._pipeline: _Pipeline | None = None
        self._done = False
        self.digest = ""

    def _start(self, first: bytes | memoryview) -> None:
        if self._compression == "auto":
            self._compression = "none" if _is_incompressible(first[:_SAMPLE]) else "zstd"
        if self._compression == "zstd":
            import zstandard

            self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        suffix = ".zst" if self._compression == "zstd" else ""
        self._writer = self._open_writer(self.name + suffix)
        self._pipeline = _Pipeline(self._process)

    def _process(self, block: bytes | memoryview) -> None:
        # One zstd frame per block: the one-shot API compresses ~10% faster than a streaming context fed the
        # same blocks (no copy into its window, no "external dictionary" match path), each frame carries its
        # own content checksum, and frames are where a later seek table can cut a volume for ranged reads.
        assert self._writer is not None
        self._hash.update(block)
        out = self._compressor.compress(block) if self._compressor is not None else block
        if out:
            self._writer.write(out)
            self._stored += len(out)

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            raise ValueError(f"artifact {self.name} is closed")
        n = len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes
        self._size += n
        if n >= CHUNK and self._pipeline is not None:
            # Large writes go out as they are, CHUNK at a time (views of immutable bytes: no copy), after
            # whatever was staged: copying to keep blocks aligned would touch every byte once more.
            if self._staged:
                self._emit_staged()
            view, immutable = memoryview(data).cast("B"), isinstance(data, bytes)
            whole = n - n % CHUNK
            for i in range(0, whole, CHUNK):
                self._pipeline.put(view[i : i + CHUNK] if immutable else bytes(view[i : i + CHUNK]))
            if whole < n:
                self._stage(view[whole:] if immutable else bytes(view[whole:]))
        else:
            self._stage(data if isinstance(data, bytes) else bytes(data))
        if self._progress is not None and n:
            self._progress(n)
        return n

    def cut(self) -> None:
        """Worm stores artifacts whole: a chunk boundary means nothing here."""

    def reuse(self, item: str, size: int) -> None:
        """Worm keeps no files cache: every byte is written again."""
        return None

    def remember(self, item: str, size: int, extra: Mapping[str, Any]) -> None:
        """Worm keeps no files cache."""

    def _stage(self, data: bytes | memoryview) -> None:
        self._staged.append(data)
        self._staged_size += len(data)
        if self._staged_size >= CHUNK:
            self._emit_staged()

    def _emit_staged(self) -> None:
        block = self._staged[0] if len(self._staged) == 1 else b"".join(self._staged)
        self._staged.clear()
        self._staged_size = 0
        if self._pipeline is None:
            self._start(block)
        assert self._pipeline is not None
        self._pipeline.put(block)

    def close(self) -> None:
        """Commit: flush, finish compression, commit the object, record it in the source's metadata."""
        if self._done:
            return
        try:
            if self._staged or self._pipeline is None:
                self._emit_staged()
            assert self._pipeline is not None and self._writer is not None
            self._pipeline.finish()
            self._writer.commit()
        except BaseException:
            self.abort()
            raise
        self._done = True
        super().close()
        self.digest = self._hash.hexdigest()
        self._sink.committed(ArtifactRecord(self.name, self._size, self.digest, self._stored, self._compression))

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._pipeline is not None:
            try:
                self._pipeline.finish()
            except BaseException:
                pass
        if self._writer is not None:
            self._writer.abort()
        self._sink.aborted(self.name)
        super().close()



class WormSourceSink(SourceSink):
    """One source's artifacts as objects under ``DATA_ID/TIMESTAMP/SOURCE/``."""

    resumable = True  # resume_source() offers what a stopped run committed

    def __init__(self, backup: WormBackupWriter, record: SourceRecord, progress: Progress | None) -> None:
        super().__init__(record, progress)
        self._backup = backup
        self._prefix = f"{backup.prefix}/{record.name}"
        self._recording = False  # whether committed artifacts are recorded in .committed/ (see resumed())

    def resumed(self) -> Mapping[str, int]:
        """See :meth:`~data_manager.types.ArtifactSink.resumed`; from now on commits are recorded for --resume."""
        self._recording = True
        return super().resumed()

    def committed(self, rec: Any) -> None:
        """Record the artifact durably beside its object before it counts, so ``--resume`` can offer it."""
        if self._recording:
            write_json(self._backup.storage, f"{self._prefix}/{COMMITTED}/{rec.name}.json",
                       {**rec.to_json(), "committed_ns": time.time_ns()})
        super().committed(rec)

    def read_resumed(self, rec: Any) -> BinaryIO:
        key = f"{self._prefix}/{rec.stored_name}"
        try:
            raw = self._backup.storage.open_read(key)
        except NotFoundError:
            raise CorruptBackupError(f"{key}: missing from the storage") from None
        return io.BufferedReader(VerifyingReader(raw, rec, key), CHUNK)

    def delete_artifact(self, rec: Any) -> None:
        # The record first: a record whose object is gone is never offered, an object without one is deleted.
        self._backup.storage.delete(f"{self._prefix}/{COMMITTED}/{rec.name}.json")
        self._backup.storage.delete(f"{self._prefix}/{rec.stored_name}")

    def open_artifact(self, name: str, compression: Compression, digest: bool) -> ArtifactStream:
        # the manifest records every artifact's BLAKE3: always hashed, whatever ``digest`` asks
        prefix = f"{self._backup.prefix}/{self.source_name}/"
        return ArtifactStream(
            self, name, lambda stored: self._backup.storage.open_write(prefix + stored), compression, self.progress
        )

    def store_record(self, record: SourceRecord) -> None:
        write_json(self._backup.storage, f"{self._backup.prefix}/{self.source_name}/{SOURCE_MANIFEST}", record.to_json())
        if not self._recording:
            return
        try:
            self._backup.storage.delete_tree(f"{self._prefix}/{COMMITTED}")  # source.json says it all now
        except DataManagerError as exc:  # credentials that may not delete (append-only): they stay, ignored
            log.info("%s/%s: not deleted (%s); nothing reads it once source.json is written",
                     self._prefix, COMMITTED, first_line(exc))


def write_json(storage: Storage, key: str, doc: Mapping[str, Any]) -> None:
    data = (json.dumps(doc, indent=2, ensure_ascii=True) + "\n").encode()
    with storage.open_write(key) as w:
        w.write(data)


class WormBackupWriter(BackupWriter):
    """A backup being written: ``DATA_ID/TIMESTAMP/``. Complete once :meth:`commit` wrote the manifest."""

    def __init__(self, storage: Storage, data_id: str, timestamp: str, extra: Mapping[str, Any]) -> None:
        super().__init__(data_id, timestamp, extra)
        self.storage = storage
        self.prefix = f"{data_id}/{timestamp}"
        self._offers: dict[str, dict[str, ArtifactRecord]] = {}  # resume_source(): per source, what it may keep
        self._offers_lock = threading.Lock()

    def source(self, record: SourceRecord, progress: Progress | None = None) -> WormSourceSink:
        sink = WormSourceSink(self, record, progress)
        with self._offers_lock:
            offered = self._offers.pop(record.name, {})
        sink.offer(offered)
        return sink

    def resume_source(self, name: str) -> None:
        """Offer what the interrupted run committed for source ``name`` (``.committed/`` records whose object
        is there with the recorded stored size); delete everything else it wrote, half-written objects too."""
        prefix = f"{self.prefix}/{name}"
        listing = {key: entry.size for key, entry in self.storage.walk(prefix)}
        committed = f"{prefix}/{COMMITTED}/"
        found: list[tuple[int, ArtifactRecord]] = []
        for key in sorted(k for k in listing if k.startswith(committed) and k.endswith(".json")):
            rec, when = self._committed_record(key, key[len(committed):-len(".json")])
            if rec is None:
                continue
            stored = listing.get(f"{prefix}/{rec.stored_name}", -1)
            if stored == -1 or (stored is not None and stored != rec.stored_size):
                log.warning("%s: %s, %s recorded: not kept", f"{prefix}/{rec.stored_name}",
                         "missing" if stored == -1 else f"{stored} bytes stored", rec.stored_size)
                continue
            found.append((when, rec))
        found.sort(key=lambda item: (item[0], item[1].name))
        offered = {rec.name: rec for _, rec in found}
        if not offered:  # nothing to keep (most sources): everything goes at once, as it always did
            self.storage.delete_tree(prefix)
            with self._offers_lock:
                self._offers[name] = {}
            return
        keep = {f"{prefix}/{r.stored_name}" for r in offered.values()} | {f"{committed}{n}.json" for n in offered}
        for key in listing:
            if key not in keep:
                self.storage.delete(key)
        self.storage.sweep_unfinished(prefix, 0, remove=True)  # the killed run's half-written objects
        with self._offers_lock:
            self._offers[name] = offered

    def _committed_record(self, key: str, name: str) -> tuple[ArtifactRecord | None, int]:
        """The artifact a ``.committed`` object records, checked like any metadata read back (None: not usable)."""
        try:
            with self.storage.open_read(key) as f:
                doc = read_json_object(f, key, limit=1 << 20)
            rec = ArtifactRecord.from_json(doc)
            check_artifact_name(rec.name)
            when = doc.get("committed_ns", 0)
            if (rec.name != name or rec.compression not in ("zstd", "none") or rec.algorithm != "blake3"
                    or not isinstance(rec.size, int) or not isinstance(rec.stored_size, int)
                    or not isinstance(when, int)):
                raise ValueError("does not match its name or is not a worm artifact")
        except NotFoundError:
            return None, 0
        except (CorruptBackupError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s: unreadable (%s): not kept", key, first_line(exc))
            return None, 0
        return rec, when

    def finished_source(self, name: str) -> SourceRecord | None:
        key = f"{self.prefix}/{name}/{SOURCE_MANIFEST}"
        try:
            with self.storage.open_read(key) as f:
                return SourceRecord.from_json(json.loads(f.read()))
        except NotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s: unreadable, redoing that source", key)
            return None

    def discard_source(self, name: str) -> None:
        self.storage.delete_tree(f"{self.prefix}/{name}")  # its partial artifacts

    def discard_other_sources(self, keep: Collection[str]) -> list[str]:
        gone = []
        for entry in list(self.storage.list(self.prefix)):
            if entry.is_dir and entry.name not in keep:
                self.storage.delete_tree(f"{self.prefix}/{entry.name}")
                gone.append(entry.name)
        return gone

    def commit(self) -> dict[str, Any]:
        """Write ``backup.json``: from now on the backup counts."""
        manifest = {"format": FORMAT, **self.manifest()}
        write_json(self.storage, f"{self.prefix}/{MANIFEST}", manifest)
        return manifest


# --------------------------------------------------------------------------- reading


class VerifyingReader(io.RawIOBase):
    """Original bytes of one artifact; checks size and digest at EOF."""

    def __init__(self, raw: BinaryIO, rec: ArtifactRecord, label: str) -> None:
        super().__init__()
        self._raw = raw
        self._rec = rec
        self._label = label
        self._hash = rec.hasher()
        self._size = 0
        self._eof = False
        self._reader: Any = raw
        if rec.compression == "zstd":
            import zstandard

            self._reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._eof:
            return 0
        try:
            data = self._reader.read(min(len(buf), CHUNK))
        except DataManagerError:
            raise
        except Exception as exc:  # zstd frame errors, truncated streams
            raise CorruptBackupError(f"{self._label}: cannot be decoded ({exc})") from None
        n = len(data)
        if n == 0:
            self._eof = True
            self._check()
            return 0
        buf[:n] = data
        self._hash.update(data)
        self._size += n
        if self._size > self._rec.size:
            raise CorruptBackupError(f"{self._label}: longer than the {self._rec.size} bytes recorded")
        return n

    def _check(self) -> None:
        if self._size != self._rec.size:
            raise CorruptBackupError(f"{self._label}: {self._size} bytes, {self._rec.size} recorded (truncated?)")
        if self._hash.hexdigest() != self._rec.digest:
            raise CorruptBackupError(f"{self._label}: {self._rec.algorithm} mismatch, the stored data is corrupt")

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                super().close()


class SourceArtifacts(StoredArtifacts):
    """The :class:`~data_manager.types.ArtifactSet` of one source in a complete worm backup."""

    def __init__(self, storage: Storage, prefix: str, record: SourceRecord, progress: Progress | None = None) -> None:
        super().__init__(prefix, record, progress)
        self._storage = storage

    def reader(self, rec: ArtifactRecord, label: str) -> io.RawIOBase:
        key = f"{self._prefix}/{self.source_name}/{rec.stored_name}"  # errors name the object as stored
        try:
            raw = self._storage.open_read(key)
        except NotFoundError:
            raise CorruptBackupError(f"{key}: missing from the storage") from None
        return Prefetching(VerifyingReader(raw, rec, key))


class WormEngine(RepositoryEngine):
    """Backups of all datasets in one storage, each a directory of plain (zstd) objects."""

    kind = "worm"
    resumes_sources = True  # WormBackupWriter.resume_source

    def __init__(self, storage: Storage, settings: Any = None) -> None:
        super().__init__(storage, settings)
        self._listing: dict[tuple[str, str, str], dict[str, int | None]] = {}

    def data_ids(self) -> list[str]:
        return sorted(e.name for e in self.storage.list("") if e.is_dir and not e.name.startswith("."))

    def timestamps(self, data_id: str) -> list[str]:
        return sorted(e.name for e in self.storage.list(data_id) if e.is_dir and is_timestamp(e.name))

    def read_manifest(self, data_id: str, timestamp: str) -> dict[str, Any] | None:
        """``backup.json`` of ``data_id/timestamp``, checked (None: there is none, the backup is incomplete)."""
        key = f"{data_id}/{timestamp}/{MANIFEST}"
        try:
            with self.storage.open_read(key) as f:
                data = f.read()
        except NotFoundError:
            return None
        try:
            doc = json.loads(data)
            if doc.get("format") not in FORMATS:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            for source in doc["sources"]:  # a damaged record is this one line now, not a KeyError later
                SourceRecord.from_json(source)
            checked_sources(doc, key)  # names that become keys and paths: safe, or exit 4
        except KeyError as exc:
            raise CorruptBackupError(f"{key}: unreadable metadata (missing {exc})") from None
        except (ValueError, AttributeError, TypeError) as exc:
            raise CorruptBackupError(f"{key}: unreadable metadata ({exc})") from None
        # Where a backup sits says which it is, not what it says of itself: a backup copied under another
        # dataset or timestamp would otherwise be restored as that one.
        if (doc.get("data_id"), doc.get("timestamp")) != (data_id, timestamp):
            raise CorruptBackupError(
                f"{key}: records itself as {doc.get('data_id')}/{doc.get('timestamp')}: moved or copied from elsewhere"
            )
        return doc

    def backups(self, data_id: str) -> list[BackupInfo]:
        out = []
        for ts in self.timestamps(data_id):
            try:
                manifest = self.read_manifest(data_id, ts)
            except CorruptBackupError as exc:
                # One damaged backup is listed as such; it never hides the others.
                log.info("%s", exc)
                sources = sorted(e.name for e in self.storage.list(f"{data_id}/{ts}") if e.is_dir)
                out.append(BackupInfo(data_id, ts, False, None, None, sources, damaged=str(exc)))
                continue
            if manifest is not None:
                out.append(
                    BackupInfo(
                        data_id,
                        ts,
                        True,
                        manifest.get("size"),
                        manifest.get("stored_size"),
                        [s["name"] for s in manifest.get("sources", [])],
                        manifest,
                    )
                )
            else:
                stored = 0
                for _, entry in self.storage.walk(f"{data_id}/{ts}"):
                    stored += entry.size or 0
                sources = sorted(e.name for e in self.storage.list(f"{data_id}/{ts}") if e.is_dir)
                out.append(BackupInfo(data_id, ts, False, None, stored, sources))
        return out

    def delete_incomplete(self, data_id: str, timestamp: str) -> None:
        if self.storage.exists(f"{data_id}/{timestamp}/{MANIFEST}"):
            raise UsageError(f"backup {data_id}/{timestamp} is complete; cleanup never removes it")
        self.storage.delete_tree(f"{data_id}/{timestamp}")

    def sweep_unfinished(self, data_id: str, timestamp: str, older_than: float, remove: bool) -> list[str]:
        return list(self.storage.sweep_unfinished(f"{data_id}/{timestamp}", older_than, remove=remove))

    # ---- retention: holds are DATA_ID/.holds/TIMESTAMP.json (a "." name is never a backup); forget
    # deletes backup.json first (the backup is incomplete from then on: cleanup's), then the rest.

    HOLDS = ".holds"
    HOLD_FORMAT = "data-manager-hold/1"

    def _hold_key(self, data_id: str, timestamp: str) -> str:
        from ..retention import check_timestamp

        if not NAME_RE.match(data_id):
            raise UsageError(f"bad dataset id {data_id!r}")
        return f"{data_id}/{self.HOLDS}/{check_timestamp(timestamp)}.json"

    def holds(self, data_id: str) -> dict[str, str]:
        """Each hold object's reason, who and when. One that cannot be read still holds its backup (its
        reason then says so); a name that is no TIMESTAMP holds nothing and is only logged."""
        from ..retention import clean_text
        from ..timestamps import is_timestamp
        from .base import read_json_object

        out: dict[str, str] = {}
        prefix = f"{data_id}/{self.HOLDS}"
        for entry in self.storage.list(prefix):
            stamp = entry.name[: -len(".json")] if entry.name.endswith(".json") else ""
            if entry.is_dir or not is_timestamp(stamp):
                if not entry.name.startswith("."):  # temporary objects of a write in flight
                    log.warning("%s/%s: not a hold (expected TIMESTAMP.json); ignored", prefix, clean_text(entry.name, 80))
                continue
            key = f"{prefix}/{entry.name}"
            try:
                with self.storage.open_read(key) as f:
                    doc = read_json_object(f, key, limit=64 << 10)
            except NotFoundError:
                continue  # released while we listed
            except CorruptBackupError as exc:
                out[stamp] = clean_text(f"unreadable hold object, still a hold ({exc})")
                continue
            if (doc.get("data_id"), doc.get("timestamp")) != (data_id, stamp):
                out[stamp] = clean_text(f"hold object {key} names {doc.get('data_id')}/{doc.get('timestamp')}, "
                                        f"still a hold")
                continue
            reason = doc.get("reason") if isinstance(doc.get("reason"), str) else ""
            who = f"{doc.get('user', '?')}@{doc.get('host', '?')}, {doc.get('created', '?')}"
            out[stamp] = clean_text(f"{reason} ({who})" if reason else f"({who})")
        return out

    def set_hold(self, data_id: str, timestamp: str, reason: str | None) -> None:
        """Hold the complete backup (a damaged one: exit 4; none or incomplete: exit 2), replacing an
        earlier hold's reason; release: the hold object deleted (not held: exit 2)."""
        import getpass
        import socket

        from ..timestamps import iso

        key = self._hold_key(data_id, timestamp)
        if reason is None:
            if not self.storage.exists(key):
                raise UsageError(f"backup {data_id}/{timestamp} is not held in {self.location()}")
            self.storage.delete(key)
            return
        self.resolve(data_id, timestamp)
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "?"
        write_json(self.storage, key, {"format": self.HOLD_FORMAT, "data_id": data_id, "timestamp": timestamp,
                                       "reason": reason, "user": user, "host": socket.gethostname(),
                                       "created": iso(now_utc())})

    def forget(self, data_id: str, timestamps: Collection[str]) -> list[str]:
        """Every one checked first (a TIMESTAMP, complete, not held), so a bad one changes nothing; then
        each backup's ``backup.json`` deleted, then the rest of it."""
        stamps = list(dict.fromkeys(timestamps))
        for ts in stamps:
            self._hold_key(data_id, ts)
        held = self.holds(data_id)
        for ts in stamps:
            if ts in held:
                raise UsageError(f"backup {data_id}/{ts} is held ({held[ts]}); not forgotten")
            if self.read_manifest(data_id, ts) is None:
                raise UsageError(f"backup {data_id}/{ts} is not a complete backup in {self.location()}; "
                                 f"incomplete ones are removed by cleanup")
        gone = []
        for ts in stamps:
            self.storage.delete(f"{data_id}/{ts}/{MANIFEST}")  # first: incomplete from now on, never listed whole
            self.storage.delete_tree(f"{data_id}/{ts}")
            gone.append(ts)
        return gone

    def start_backup(self, data_id: str, extra: Mapping[str, Any] | None = None,
                     timestamp: str | None = None) -> WormBackupWriter:
        return WormBackupWriter(self.storage, data_id, timestamp or self.new_timestamp(data_id), extra or {})

    def artifacts(self, info: BackupInfo, source: str, progress: Progress | None = None) -> SourceArtifacts:
        for rec in self.source_records(info):
            if rec.name == source:
                return SourceArtifacts(self.storage, f"{info.data_id}/{info.timestamp}", rec, progress)
        raise UsageError(f"backup {info.data_id}/{info.timestamp} has no source {source!r}")

    def check_repository(self, read_fraction: float = 0.0, progress: Progress | None = None) -> CheckReport:
        self._listing = {}  # what an earlier check listed is stale now
        return super().check_repository(read_fraction, progress)

    def artifact_problem(self, info: BackupInfo, source: str, art: ArtifactRecord) -> str | None:
        key = f"{info.data_id}/{info.timestamp}/{source}/{art.stored_name}"
        listing = self._listing.get((info.data_id, info.timestamp, source))
        if listing is None:
            listing = {k: e.size for k, e in self.storage.walk(f"{info.data_id}/{info.timestamp}/{source}")}
            self._listing = {(info.data_id, info.timestamp, source): listing}  # one source's at a time
        if key not in listing:
            return f"{key}: missing from the storage"
        if listing[key] is not None and listing[key] != art.stored_size:
            return f"{key}: {listing[key]} bytes stored, {art.stored_size} recorded"
        return None

    def copy_backup(self, target: RepositoryEngine, data_id: str, timestamp: str, *, dry_run: bool = False,
                    check: Callable[[], None] = lambda: None,
                    progress: Callable[[str], Progress | None] | None = None,
                    begin: Callable[[str, int], None] | None = None) -> CopiedBackup:
        """To another ``worm`` storage: the objects as stored (see :class:`_StoredCopy`); else re-encoded."""
        if not isinstance(target, WormEngine):
            return super().copy_backup(target, data_id, timestamp, dry_run=dry_run, check=check,
                                       progress=progress, begin=begin)
        return _StoredCopy(self, target, data_id).copy(timestamp, dry_run=dry_run, check=check,
                                                       progress=progress, begin=begin)


# --------------------------------------------------------------------------- copying as stored


def _checked_sources(manifest: dict[str, Any], where: str) -> list[tuple[dict[str, Any], SourceRecord]]:
    """The manifest's sources, each as written and parsed, once every name that becomes a target key is
    known safe (:func:`~data_manager.engines.records.checked_sources`), no two artifacts are stored under
    one key, and each compression is worm's."""
    records = checked_sources(manifest, where)
    out: list[tuple[dict[str, Any], SourceRecord]] = []
    for doc, rec in zip(manifest["sources"], records):
        keys: set[str] = {SOURCE_MANIFEST}
        for art in rec.artifacts:
            if art.compression not in ("zstd", "none"):
                raise CorruptBackupError(f"{where}: artifact {art.name!r}: bad compression or digest")
            if art.stored_name in keys:
                raise CorruptBackupError(f"{where}: source {rec.name!r}: two artifacts stored as {art.stored_name!r}")
            keys.add(art.stored_name)
        out.append((doc, rec))
    return out


class _Tee:
    """The source object's bytes, each block written to the target as it is read, and counted.

    What the verifying reader checks is exactly what went to the target. A source object longer than
    recorded is refused before more than one block too many is written.
    """

    def __init__(self, raw: BinaryIO, writer: ObjectWriter, limit: int, label: str,
                 progress: Callable[[int], None] | None) -> None:
        self._raw = raw
        self._writer = writer
        self._limit = limit
        self._label = label
        self._progress = progress
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(CHUNK if n is None or n < 0 else min(n, CHUNK))
        if data:
            self.count += len(data)
            if self.count > self._limit:
                raise CorruptBackupError(f"{self._label}: longer than the {self._limit} bytes stored, as recorded")
            self._writer.write(data)
            if self._progress is not None:
                self._progress(len(data))
        return data

    def close(self) -> None:
        self._raw.close()


def copy_object(source: Storage, target: Storage, key: str, art: ArtifactRecord,
                progress: Callable[[int], None] | None = None) -> None:
    """Copy the artifact object ``key`` from ``source`` to the same key in ``target``, as stored, checking
    its stored size and (decompressed) size and digest on the way; committed only if all match."""
    label = f"{source.location()}: {key}"
    try:
        raw = source.open_read(key)
    except NotFoundError:
        raise CorruptBackupError(f"{label}: missing from the storage") from None
    writer: ObjectWriter | None = None
    try:
        writer = target.open_write(key)
        tee = _Tee(raw, writer, art.stored_size, label, progress)
        reader = VerifyingReader(tee, art, label)  # type: ignore[arg-type]  # reads with read(n) only
        buf = bytearray(CHUNK)
        while reader.readinto(buf):
            pass
        while tee.read(CHUNK):  # what follows the last zstd frame is copied too, so it is counted
            pass
        if tee.count != art.stored_size:
            raise CorruptBackupError(f"{label}: {tee.count} bytes stored, {art.stored_size} recorded")
        writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()  # idempotent, also after a failed commit
        raise
    finally:
        raw.close()


class _StoredCopy:
    """One backup copied between two ``worm`` storages as stored.

    * each artifact object byte for byte (no recompression), streaming in ``CHUNK`` blocks, and proven on
      the way: what is read is written to the target *and* fed through the verifying reader; the target
      object is committed only if that check passed and the stored size matches (one read of the source,
      no read-back of the target);
    * what the target already has is skipped: an object of the recorded stored size, a ``source.json``
      with the same content, a whole backup whose ``backup.json`` equals the source's;
    * each source's ``source.json``, then ``backup.json`` last: an interrupted copy is an incomplete backup
      on the target that the next copy resumes;
    * nothing from the source storage is trusted beyond what :meth:`WormEngine.read_manifest` validates,
      and every name that builds a target key is checked here.
    """

    def __init__(self, src: WormEngine, dst: WormEngine, data_id: str) -> None:
        self.src, self.dst, self.data_id = src, dst, data_id
        self.source, self.target = src.storage, dst.storage

    def copy(self, timestamp: str, *, dry_run: bool, check: Callable[[], None],
             progress: Callable[[str], Progress | None] | None,
             begin: Callable[[str, int], None] | None) -> CopiedBackup:
        t0 = time.monotonic()
        prefix = f"{self.data_id}/{timestamp}"
        manifest = self.src.read_manifest(self.data_id, timestamp)
        if manifest is None:
            raise UsageError(f"backup {prefix} is incomplete (no {MANIFEST}) in {self.source.location()}")
        sources = _checked_sources(manifest, f"{self.source.location()}: {prefix}/{MANIFEST}")
        try:
            there = self.dst.read_manifest(self.data_id, timestamp)
        except CorruptBackupError as exc:
            raise CorruptBackupError(f"the copy in {self.target.location()} is damaged, not overwritten "
                                     f"(remove {prefix} there to copy it anew): {exc}") from None
        if there is not None:
            if there != manifest:
                raise DataManagerError(f"{self.target.location()} holds another complete backup {prefix}; "
                                       f"not overwritten")
            return CopiedBackup(timestamp, "already complete")
        done = CopiedBackup(timestamp, "would copy" if dry_run else "copied")
        if begin is not None and not dry_run:
            begin(f"copy {prefix} to {self.target.location()}", sum(r.stored_size for _, r in sources))
        for doc, rec in sources:
            check()
            sprefix = f"{prefix}/{rec.name}"
            present = {key: entry.size for key, entry in self.target.walk(sprefix)}
            counter = progress(f"{timestamp}/{rec.name}") if progress is not None and not dry_run else None
            for art in rec.artifacts:
                key = f"{sprefix}/{art.stored_name}"
                if present.get(key) == art.stored_size:
                    done.skipped += 1
                    continue
                if not dry_run:
                    copy_object(self.source, self.target, key, art, counter)
                done.artifacts += 1
                done.bytes += art.stored_size
            meta = f"{sprefix}/{SOURCE_MANIFEST}"
            if not dry_run and not (meta in present and self._holds(meta, doc)):
                write_json(self.target, meta, doc)
        check()
        if not dry_run:
            write_json(self.target, f"{prefix}/{MANIFEST}", manifest)  # last: now the copy counts
        done.seconds = round(time.monotonic() - t0, 3)
        return done

    def _holds(self, key: str, doc: dict[str, Any]) -> bool:
        """Whether the target's JSON object ``key`` has this content (a source.json of an earlier run)."""
        try:
            with self.target.open_read(key) as f:
                return json.loads(f.read(1 << 24)) == doc
        except (NotFoundError, ValueError):
            return False
