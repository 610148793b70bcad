"""The repository engine seam: what the core asks of an engine, and what an engine must never do.

A *repository engine* owns how backups are laid out in one storage: keys, formats, compression,
encryption, deduplication. The core (the operations: backup, restore, verify, copy, cleanup, list) only
calls :class:`RepositoryEngine` and the objects it returns; sources only see
:class:`~data_manager.types.ArtifactSink` / :class:`~data_manager.types.ArtifactSet`; storages only see
keys. Engines are chosen per storage (``engine = "worm"`` or ``"dedup"``, see
:mod:`data_manager.engines`).

Every engine must:

* make a backup count only once :meth:`BackupWriter.commit` returned (an interrupted backup is never
  listed as complete, and never chosen by ``latest``);
* treat everything it reads back from the storage as untrusted: names, sizes, metadata, and check every
  artifact's size and digest as it is read (:class:`~data_manager.errors.CorruptBackupError`, exit 4);
* never change or remove a complete backup (deleting them is retention's job, with its own key);
* report bytes through the ``progress`` callbacks it is given (:data:`Progress`).
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, BinaryIO, ClassVar

from .. import __version__
from ..errors import CorruptBackupError, DataManagerError, UsageError, first_line
from ..timestamps import format_timestamp, iso, now_utc, parse_timestamp
from ..types import ArtifactSet, Compression, ArtifactWriter, Settings, Storage
from .records import BackupInfo, CheckReport, CopiedBackup, SourceRecord, check_artifact_name

CHUNK = 1 << 20  # the unit data moves in: large enough that hashing/compression run in native code

# Called with the bytes moved as data flows, and with 0 when one artifact is done (written, or read whole):
# a plain number passes through any wrapper (time limits, stop flags) to data_manager.progress.
Progress = Callable[[int], None]


def item_done(progress: Progress | None) -> None:
    if progress is not None:
        progress(0)


class ArtifactStreamBase(io.RawIOBase):
    """What every engine's artifact writer shares: leaving a ``with`` block commits it (``close``), an
    exception aborts it. Subclasses implement ``write``, ``close`` (store every byte durably, then call the
    sink's ``committed``) and ``abort``."""

    def writable(self) -> bool:
        return True

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> ArtifactStreamBase:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.close()
        else:
            self.abort()


class SourceSink:
    """The :class:`~data_manager.types.ArtifactSink` of one source in a backup being written.

    The bookkeeping every engine shares (names, open artifacts, info, timing) lives here; an engine
    subclasses it and implements :meth:`open_artifact` and :meth:`store_record`.
    """

    chunked = False  # see ArtifactSink.chunked
    compresses = True  # see ArtifactSink.compresses
    hashes_files = False  # see ArtifactSink.hashes_files
    resumable = False  # see ArtifactSink.resumable

    def __init__(self, record: SourceRecord, progress: Progress | None) -> None:
        self.record = record
        self.source_name = record.name
        self.progress = progress
        self._open: set[str] = set()
        self._lock = threading.Lock()
        # Resuming: what an interrupted run committed and the engine offers (see offer()), name -> record
        self._offered: dict[str, Any] = {}
        self._kept: dict[str, Any] = {}
        self._start = time.monotonic()
        record.started_at = iso(now_utc())

    def open(self, name: str, *, compression: Compression = "auto", digest: bool = False) -> ArtifactWriter:
        """See :meth:`~data_manager.types.ArtifactSink.open`: the name checked, then :meth:`open_artifact`."""
        check_artifact_name(name)
        with self._lock:
            if name in self._open or any(a.name == name for a in self.record.artifacts):
                raise ValueError(f"artifact {name!r} written twice by source {self.source_name!r}")
            self._open.add(name)
            replaced = self._offered.pop(name, None)
        if replaced is not None:  # an offered artifact written anew: the old one goes first
            self.delete_artifact(replaced)
        return self.open_artifact(name, compression, digest)

    def set_info(self, **info: Any) -> None:
        """See :meth:`~data_manager.types.ArtifactSink.set_info`."""
        json.dumps(info)  # fail now, in the source, not when the metadata is written
        self.record.info.update(info)

    def committed(self, rec: Any) -> None:
        """Called by the engine's artifact writer once an artifact is durably stored."""
        with self._lock:
            self._open.discard(rec.name)
            self.record.artifacts.append(rec)
        item_done(self.progress)

    def aborted(self, name: str) -> None:
        """Called by the engine's artifact writer once an aborted artifact is gone."""
        with self._lock:
            self._open.discard(name)

    # ---- resuming: see ArtifactSink.resumed

    def offer(self, records: Mapping[str, Any]) -> None:
        """Called by the engine before the source runs: artifacts (name -> ArtifactRecord, in commit order)
        an interrupted run committed and the engine checked; the source may :meth:`keep` them."""
        self._offered = dict(records)

    def resumed(self) -> Mapping[str, int]:
        """See :meth:`~data_manager.types.ArtifactSink.resumed`."""
        with self._lock:
            return {name: rec.size for name, rec in self._offered.items()}

    def keep(self, name: str) -> None:
        """See :meth:`~data_manager.types.ArtifactSink.keep`."""
        with self._lock:
            rec = self._offered.pop(name, None)
            if rec is None:
                raise ValueError(f"artifact {name!r} of source {self.source_name!r} is not one an interrupted "
                                 f"run left (plugin bug)")
            self._kept[name] = rec
            self.record.artifacts.append(rec)

    def open_resumed(self, name: str) -> BinaryIO:
        """See :meth:`~data_manager.types.ArtifactSink.open_resumed`."""
        rec = self._offered.get(name) or self._kept.get(name)
        if rec is None:
            raise ValueError(f"artifact {name!r} of source {self.source_name!r} is not one an interrupted run "
                             f"left (plugin bug)")
        return self.read_resumed(rec)

    def discard(self, name: str) -> None:
        """See :meth:`~data_manager.types.ArtifactSink.discard`."""
        with self._lock:
            found = [a for a in self.record.artifacts if a.name == name]
            if not found:
                raise ValueError(f"artifact {name!r} of source {self.source_name!r} was not committed (plugin bug)")
            self.record.artifacts.remove(found[0])
            self._kept.pop(name, None)
        self.delete_artifact(found[0])

    def finish(self) -> SourceRecord:
        """The source is done: record it (so a resumed backup can keep it) and return its record. Offered
        artifacts the source did not keep are deleted first."""
        if self._open:
            raise DataManagerError(
                f"source {self.source_name!r} left artifacts open: {', '.join(sorted(self._open))} (plugin bug)"
            )
        with self._lock:
            unkept, self._offered = list(self._offered.values()), {}
        for rec in unkept:
            self.delete_artifact(rec)
        self.record.finished_at = iso(now_utc())
        self.record.duration_seconds = round(time.monotonic() - self._start, 3)
        self.store_record(self.record)
        return self.record

    # ---- what an engine implements

    def open_artifact(self, name: str, compression: Compression, digest: bool) -> ArtifactWriter:
        """A writer for artifact ``name`` (checked already). When ``digest`` is true, its ``digest`` must be
        the BLAKE3 of the bytes once closed (see :meth:`~data_manager.types.ArtifactSink.open`). Its
        ``close()`` must store every byte durably and then call :meth:`committed` with the
        :class:`~data_manager.engines.records.ArtifactRecord`;
        its ``abort()`` must leave nothing that a later read could take for the artifact, then call
        :meth:`aborted`."""
        raise NotImplementedError

    def store_record(self, record: SourceRecord) -> None:
        """Persist the finished source's record where :meth:`BackupWriter.finished_source` finds it (or
        nowhere, for an engine that cannot resume)."""

    def read_resumed(self, rec: Any) -> BinaryIO:
        """The original bytes of an artifact an interrupted run committed (only engines that :meth:`offer`
        any are asked); reading to EOF checks size and digest."""
        raise NotImplementedError

    def delete_artifact(self, rec: Any) -> None:
        """Delete the data of a committed artifact no longer part of the backup (:meth:`discard`, an offered
        one not kept). This default deletes nothing: data no backup refers to is left to ``prune``."""


class BackupWriter(ABC):
    """A backup being written. It counts only once :meth:`commit` returned."""

    data_id: str
    timestamp: str

    def __init__(self, data_id: str, timestamp: str, extra: Mapping[str, Any]) -> None:
        self.data_id = data_id
        self.timestamp = timestamp
        self.extra = dict(extra)
        self.started = now_utc()
        self._t0 = time.monotonic()
        self.sources: list[SourceRecord] = []

    @abstractmethod
    def source(self, record: SourceRecord, progress: Progress | None = None) -> SourceSink:
        """The sink one source writes its artifacts to. Several sources may write at once (threads)."""

    def add_done(self, record: SourceRecord) -> None:
        """Source ``record`` is finished (by this run or, resuming, an earlier one): part of the commit."""
        self.sources.append(record)

    def finished_source(self, name: str) -> SourceRecord | None:
        """Resuming: the record of source ``name`` if an interrupted run of this backup finished it."""
        return None

    def discard_source(self, name: str) -> None:
        """Resuming: forget whatever an interrupted run wrote for source ``name`` (it is done again)."""

    def resume_source(self, name: str) -> None:
        """Resuming: source ``name`` runs again; an engine that can keep what the interrupted run committed for
        it offers those artifacts to the sink :meth:`source` makes next (:meth:`SourceSink.offer`) and
        deletes the rest. This default keeps nothing: :meth:`discard_source`."""
        self.discard_source(name)

    def discard_other_sources(self, keep: Collection[str]) -> list[str]:
        """Resuming: forget sources of the interrupted run that are not in ``keep``; their names."""
        return []

    def manifest(self) -> dict[str, Any]:
        """The backup's metadata as every engine records it (the engine adds its ``format``)."""
        return {
            "data_id": self.data_id,
            "timestamp": self.timestamp,
            "complete": True,
            "started_at": iso(self.started),
            "finished_at": iso(now_utc()),
            "duration_seconds": round(time.monotonic() - self._t0, 3),
            "tool": {"name": "data-manager", "version": __version__},
            "host": socket.gethostname(),
            **self.extra,
            "size": sum(s.size for s in self.sources),
            "stored_size": sum(s.stored_size for s in self.sources),
            "sources": [s.to_json() for s in self.sources],
        }

    @abstractmethod
    def commit(self) -> dict[str, Any]:
        """Make the backup count, durably and last; return its metadata. Before this returns, no
        listing may show the backup as complete."""

    def abort(self) -> None:
        """Release what the writer holds (a heartbeat). Called once the backup ended, whether it failed
        (what was written stays, for ``--resume`` or ``cleanup``) or was committed (then it must change
        nothing)."""


class RepositoryEngine(ABC):
    """The backups of all datasets in one storage, in one engine's format."""

    #: the name in ``engine = "..."``
    kind: ClassVar[str] = ""
    #: keys of the storage's config table this engine reads (the storage plugin never sees them)
    settings_keys: ClassVar[tuple[str, ...]] = ()
    #: those of them that hold secrets (redacted from metadata, logs and status)
    secret_keys: ClassVar[tuple[str, ...]] = ()
    #: whether a stopped backup (Ctrl-C, a closing backup window) keeps what its unfinished sources had
    #: stored, so that ``--resume`` reads such a source again but stores only the rest; False: an
    #: unfinished source starts over (what ``status`` tells people whose sources outgrow a window)
    keeps_partial_sources: ClassVar[bool] = False
    #: whether ``--resume`` offers an unfinished source what the stopped run committed for it
    #: (``ArtifactSink.resumable``), so that a source that resumes (``SourceType.resumes``) continues from there
    resumes_sources: ClassVar[bool] = False

    def __init__(self, storage: Storage, settings: Settings | None = None) -> None:
        self.storage = storage
        self.settings = settings or Settings({}, where=f"storage {storage.name!r}")

    @classmethod
    def check_settings(cls, settings: Settings) -> Any:
        """Validate this engine's keys of a storage's table (:attr:`settings_keys`) when the config is read,
        raising a config error naming the key; what it returns is the engine's own business. The default
        checks nothing (an engine may check in ``__init__`` instead)."""
        return None

    def location(self) -> str:
        """Where the backups are, for people (no secrets)."""
        return self.storage.location()

    def close(self) -> None:
        """Release what the engine holds open (a local cache). It may be used again afterwards."""

    def check(self) -> None:
        """Fail with one clear line unless backups can be written and read now (storage reachable,
        repository initialised, key unlocked)."""
        self.storage.check()

    # ---- listing

    @abstractmethod
    def data_ids(self) -> list[str]:
        """The datasets with at least one backup (complete or not) here, sorted."""

    @abstractmethod
    def backups(self, data_id: str) -> list[BackupInfo]:
        """Every backup of ``data_id`` here, oldest first: complete ones with their manifest, incomplete
        and damaged ones too (``complete=False``; ``damaged`` says why). One damaged backup never hides
        the others."""

    def timestamps(self, data_id: str) -> list[str]:
        """The TIMESTAMPs of every backup of ``data_id`` here (complete or not), sorted."""
        return [b.timestamp for b in self.backups(data_id)]

    def resolve(self, data_id: str, which: str) -> BackupInfo:
        """``latest`` (newest complete backup, damaged ones skipped) or a TIMESTAMP -> that backup, complete,
        or a clear error (a damaged one: :class:`CorruptBackupError`)."""
        if which != "latest":
            parse_timestamp(which)
        backups = self.backups(data_id)
        if which == "latest":
            complete = [b for b in backups if b.complete]
            if not complete:
                raise UsageError(f"no complete backup of {data_id!r} in {self.location()}")
            return complete[-1]
        for b in backups:
            if b.timestamp == which:
                if b.damaged:
                    raise CorruptBackupError(b.damaged)
                if not b.complete:
                    raise UsageError(f"backup {data_id}/{which} is incomplete; it cannot be used")
                return b
        raise UsageError(f"no backup {data_id}/{which} in {self.location()}")

    def new_timestamp(self, data_id: str, when: datetime | None = None) -> str:
        """A fresh TIMESTAMP for ``data_id``: now, or the next free second after the newest one."""
        when = (when or now_utc()).replace(microsecond=0)
        taken = self.timestamps(data_id)
        if taken:
            when = max(when, parse_timestamp(taken[-1]) + timedelta(seconds=1))
        return format_timestamp(when)

    def resumable(self, data_id: str) -> str:
        """The backup ``--resume`` continues: the newest incomplete one, if no complete backup is newer."""
        backups = self.backups(data_id)
        incomplete = [b.timestamp for b in backups if not b.complete and not b.damaged]
        if not incomplete:
            raise UsageError(f"nothing to resume: {data_id} has no incomplete backup in {self.location()}")
        if backups[-1].timestamp != incomplete[-1]:
            raise UsageError(
                f"nothing to resume: the newest backup of {data_id} ({backups[-1].timestamp}) is complete; "
                f"older incomplete ones are removed by: data-manager cleanup {data_id}"
            )
        return incomplete[-1]

    # ---- writing

    @abstractmethod
    def start_backup(self, data_id: str, extra: Mapping[str, Any] | None = None,
                     timestamp: str | None = None) -> BackupWriter:
        """A new backup of ``data_id`` (``timestamp``: continue that incomplete one, or write under that
        name). ``extra`` goes into its metadata as it is."""

    # ---- reading

    @abstractmethod
    def artifacts(self, info: BackupInfo, source: str, progress: Progress | None = None) -> ArtifactSet:
        """The artifacts of ``source`` in the complete backup ``info``, for its plugin's ``restore``.
        Every reader it opens checks size and digest by EOF."""

    def source_records(self, info: BackupInfo) -> Iterator[SourceRecord]:
        """The sources of the complete backup ``info``, as recorded (from its checked metadata)."""
        if info.manifest is None:
            raise UsageError(f"backup {info.data_id}/{info.timestamp} is incomplete; it cannot be used")
        for s in info.manifest["sources"]:
            yield SourceRecord.from_json(s)

    # ---- maintenance

    def delete_incomplete(self, data_id: str, timestamp: str) -> None:
        """Remove the incomplete backup ``data_id/timestamp`` (``cleanup``). Never a complete one."""
        raise UsageError(f"{self.kind} repositories have no incomplete backups to remove")

    def sweep_unfinished(self, data_id: str, timestamp: str, older_than: float, remove: bool) -> list[str]:
        """Keys of writes killed inside backup ``data_id/timestamp`` (older than ``older_than`` seconds),
        removed unless ``remove`` is false."""
        return []

    # ---- retention: the only place complete backups are ever removed (admin keys only)

    def holds(self, data_id: str) -> dict[str, str]:
        """The held backups of ``data_id``: TIMESTAMP -> why, for people (reason, who, when). A held backup
        is never forgotten. Read back untrusted: a hold that cannot be read or checked still holds its
        TIMESTAMP (the text says so, on one line); it never raises for one."""
        return {}

    def set_hold(self, data_id: str, timestamp: str, reason: str | None) -> None:
        """Hold the complete backup ``data_id/timestamp`` (``reason``, replacing an earlier hold's), or
        release it (``None``: admin only). Refused: a bad TIMESTAMP, no such complete backup, releasing what
        is not held (:class:`UsageError`), holding a damaged one (:class:`CorruptBackupError`)."""
        raise UsageError(f"storage {self.storage.name!r} ({self.kind} engine) cannot hold backups")

    def retention_times(self, data_id: str) -> dict[str, datetime]:
        """TIMESTAMP -> when the backup was really taken, for backups whose own claim this engine does not
        believe (e.g. written by a non-admin key at a time the storage contradicts): retention buckets them
        there, so forged dates cannot push real backups out. Empty: every claim stands."""
        return {}

    def forget(self, data_id: str, timestamps: Collection[str]) -> list[str]:
        """Remove these complete backups of ``data_id`` (none held: check first), so that an interrupted
        forget leaves each either complete or incomplete (``cleanup`` removes it), never a listed backup
        with missing data; the timestamps removed. Every one is checked before anything is removed (a
        TIMESTAMP, complete, not held), so bad input changes nothing. The caller
        (:mod:`data_manager.operations.forget`) passes what :func:`data_manager.retention.plan` removes,
        under the dataset's lock. Space may be freed later (``prune``)."""
        raise UsageError(f"storage {self.storage.name!r} ({self.kind} engine) cannot forget backups")

    def prune(self, *, dry_run: bool, delete_delay: float, progress: Progress | None = None,
              max_unused: float | None = None) -> dict[str, Any]:
        """``prune``: reclaim the space of forgotten backups that :meth:`forget` left behind (an engine that
        shares data between backups cannot free it at forget), admin keys only, never deleting what a
        complete backup, or a backup being written, uses; ``delete_delay`` seconds must pass between deciding
        what is unused and deleting it; ``dry_run`` changes nothing. ``max_unused`` (a fraction of the
        repository, None: the engine's default) is how much unused space may stay in order to copy less. What it did or would do, as a JSON
        object: ``needed``, ``phases`` (each with packs and bytes freed or rewritten), ``notes``. This
        default: nothing to do (``worm`` frees the space at forget)."""
        return {"storage": self.storage.name, "location": self.location(), "engine": self.kind, "needed": False,
                "dry_run": dry_run, "delete_delay": delete_delay, "phases": [],
                "describe": [f"nothing to prune: the {self.kind} engine frees space at forget"], "notes": []}

    # ---- administration: engines with a format to set up, keys, and deep checks

    def init_repository(self) -> dict[str, Any]:
        """``repo init``: create the repository in the empty storage (refuse if one exists); what was made."""
        raise UsageError(f"storage {self.storage.name!r} uses the {self.kind} engine, which needs no 'repo init'")

    def add_key(self, role: str, passphrase: str) -> str:
        """``repo key add``: a new key of ``role`` unlocked by ``passphrase``; its id. Admin keys only."""
        raise UsageError(f"storage {self.storage.name!r} uses the {self.kind} engine, which has no keys")

    def list_keys(self) -> list[dict[str, Any]]:
        """``repo key list``: every key (id, role, created, host, revoked), never a secret."""
        raise UsageError(f"storage {self.storage.name!r} uses the {self.kind} engine, which has no keys")

    def revoke_key(self, key_id: str) -> None:
        """``repo key revoke``: ``key_id`` can no longer open the repository. Admin keys only."""
        raise UsageError(f"storage {self.storage.name!r} uses the {self.kind} engine, which has no keys")

    def repair(self, what: str) -> dict[str, Any]:
        """``repo repair index|snapshots``: rebuild that layer from the data alone; a summary."""
        raise UsageError(f"storage {self.storage.name!r} uses the {self.kind} engine: nothing to repair "
                         f"(its metadata is beside its data)")

    def check_repository(self, read_fraction: float = 0.0, progress: Progress | None = None) -> CheckReport:
        """``check``: every backup's metadata readable, every artifact present with its stored size, and
        ``read_fraction`` of the stored bytes read back and verified. Never raises for damage found: it
        is reported."""
        import random

        t0 = time.monotonic()
        report = CheckReport(self.storage.name, self.kind, read_fraction=read_fraction)
        everything: list[tuple[BackupInfo, str, Any]] = []
        for data_id in self.data_ids():
            for info in self.backups(data_id):
                report.counts["backups"] = report.counts.get("backups", 0) + 1
                if info.damaged:
                    report.errors.append(info.damaged)
                elif not info.complete:
                    report.notes.append(f"{data_id}/{info.timestamp}: incomplete (an interrupted backup)")
                else:
                    for rec in self.source_records(info):
                        everything.extend((info, rec.name, art) for art in rec.artifacts)
        report.counts["artifacts"] = len(everything)
        for info, source, art in everything:
            problem = self.artifact_problem(info, source, art)
            if problem:
                report.errors.append(problem)
        if read_fraction > 0 and everything:
            rng = random.SystemRandom()
            chosen = [e for e in everything if read_fraction >= 1 or rng.random() < read_fraction] or [rng.choice(everything)]
            for info, source, art in chosen:
                try:
                    self.artifacts(info, source, progress).verify([art.name])
                    report.read_bytes += art.size
                except DataManagerError as exc:
                    report.errors.append(first_line(exc))
        report.seconds = round(time.monotonic() - t0, 3)
        return report

    def artifact_problem(self, info: BackupInfo, source: str, art: Any) -> str | None:
        """Without reading its bytes: why artifact ``art`` of ``source`` in ``info`` cannot be restored, if
        it cannot (missing, wrong stored size); None when it looks whole."""
        return None

    # ---- copying

    def copy_backup(self, target: RepositoryEngine, data_id: str, timestamp: str, *, dry_run: bool = False,
                    check: Callable[[], None] = lambda: None,
                    progress: Callable[[str], Progress | None] | None = None,
                    begin: Callable[[str, int], None] | None = None) -> CopiedBackup:
        """Copy the complete backup ``data_id/timestamp`` to ``target`` under the same name, which must
        count there only once complete. This default reads every artifact back (checked) and writes it
        through the target's engine: any engine to any engine. Engines override it to copy as stored."""
        t0 = time.monotonic()
        info = self.resolve(data_id, timestamp)
        there = {b.timestamp: b for b in target.backups(data_id)}.get(timestamp)
        if there is not None and there.complete:
            return CopiedBackup(timestamp, "already complete")
        records = list(self.source_records(info))
        done = CopiedBackup(timestamp, "would copy" if dry_run else "copied",
                            artifacts=sum(len(r.artifacts) for r in records), bytes=sum(r.size for r in records))
        if dry_run:
            return done
        if begin is not None:
            begin(f"copy {data_id}/{timestamp} to {target.location()}", done.bytes)
        assert info.manifest is not None
        extra = {k: v for k, v in info.manifest.items() if k in ("storage",)}
        writer = target.start_backup(data_id, extra, timestamp)
        try:
            for rec in records:
                check()
                counter = progress(f"{timestamp}/{rec.name}") if progress is not None else None
                copied = SourceRecord(rec.name, rec.type, rec.plugin, rec.settings, rec.describe, dict(rec.info))
                sink = writer.source(copied, counter)
                arts = self.artifacts(info, rec.name)
                for art in rec.artifacts:
                    with arts.open(art.name) as f, sink.open(art.name) as w:
                        while block := f.read(CHUNK):
                            w.write(block)
                writer.add_done(sink.finish())
            check()
            writer.commit()
        finally:
            writer.abort()
        done.seconds = round(time.monotonic() - t0, 3)
        return done


def read_json_object(raw: BinaryIO, where: str, limit: int = 64 << 20) -> dict[str, Any]:
    """A JSON object read from the storage, at most ``limit`` bytes: anything else is
    :class:`CorruptBackupError` naming ``where``."""
    data = raw.read(limit + 1)
    if len(data) > limit:
        raise CorruptBackupError(f"{where}: larger than {limit} bytes: not metadata")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptBackupError(f"{where}: unreadable metadata ({exc})") from None
    if not isinstance(doc, dict):
        raise CorruptBackupError(f"{where}: unreadable metadata (not an object)")
    return doc
