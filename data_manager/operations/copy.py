"""Second copies (3-2-1): complete backups copied, as stored, from a dataset's storage to another one.

``data-manager copy [latest | TIMESTAMP | --all] DATA_ID --to STORAGE`` and ``[datasets.X] copies = [...]``
(every backup copies itself after it completes) both end in :func:`copy_backups`. What a copy must do:

* copy each artifact object byte for byte (no recompression), streaming in ``CHUNK`` blocks;
* prove the target got the right bytes: what is read from the source is written to the target *and* fed
  through the repository's verifying reader (decompressed, size and digest checked at EOF); the target
  object is committed only if that check passed and the stored size matches. One read of the source, no
  read-back of the target (which would double the transfer for S3 and Drive); the storage's commit
  contract (all or nothing) covers the rest, and ``verify --storage TARGET`` reads the copy back on demand;
* skip what the target already has: an artifact object of the recorded stored size, a ``source.json``
  with the same content, a whole backup whose ``backup.json`` equals the source's;
* write each source's ``source.json``, then ``backup.json`` last: an interrupted copy is an incomplete
  backup on the target (``latest`` never picks it) that the next copy resumes;
* trust nothing from the source storage beyond what :meth:`Repository.read_manifest` validates, and check
  every name it uses to build a target key here (a crafted manifest must not write outside its backup).

A copy runs as a job (recorded in the state database, ``status`` shows it) holding the dataset's lock in
the *target* storage, so two copies (or a copy and a cleanup there) never race. It asks no guard and marks
nothing unavailable: it reads only the backup storage, never the dataset's data. The source storage is not
locked: nothing in data-manager changes or removes a complete backup.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from ..config import NAME_RE
from ..errors import CorruptBackupError, DataManagerError, NotFoundError, UsageError
from ..repository import (
    CHUNK,
    MANIFEST,
    SOURCE_MANIFEST,
    ArtifactRecord,
    BackupInfo,
    Repository,
    SourceRecord,
    VerifyingReader,
    check_artifact_name,
    write_json,
)
from ..runner import JobContext, ProgressFactory, one_line
from ..types import Dataset, ObjectWriter, Storage

if TYPE_CHECKING:
    from ..api import DataManager
    from .backup import BackupResult

log = logging.getLogger(__name__)


@dataclass
class CopiedBackup:
    """What a copy did (or, in a dry run, would do) with one backup."""

    timestamp: str
    state: str  # copied | already complete | would copy
    artifacts: int = 0  # artifact objects copied (or to copy)
    skipped: int = 0  # artifact objects the target already had
    bytes: int = 0  # stored bytes copied (or to copy)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass
class CopyResult:
    data_id: str
    source: str  # storage names
    target: str
    location: str  # the target's, for humans
    backups: list[CopiedBackup] = field(default_factory=list)
    dry_run: bool = False
    job_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"data_id": self.data_id, "source": self.source, "target": self.target, "location": self.location,
                "dry_run": self.dry_run, "job_id": self.job_id, "backups": [b.to_json() for b in self.backups]}


# --------------------------------------------------------------------------- checking what the source says


def _checked_sources(manifest: dict[str, Any], where: str) -> list[tuple[dict[str, Any], SourceRecord]]:
    """The manifest's sources, each as written and parsed, once every name that becomes a target key is
    known safe: a source name as the config allows it, artifact names as a sink allows them, no two
    artifacts stored under one key, sizes and digests of the right types."""
    out: list[tuple[dict[str, Any], SourceRecord]] = []
    for doc in manifest["sources"]:
        rec = SourceRecord.from_json(doc)
        if not isinstance(rec.name, str) or not NAME_RE.match(rec.name) or any(r.name == rec.name for _, r in out):
            raise CorruptBackupError(f"{where}: bad or duplicate source name {rec.name!r}")
        keys: set[str] = {SOURCE_MANIFEST}
        for art in rec.artifacts:
            _check_artifact(art, f"{where}: source {rec.name!r}")
            if art.stored_name in keys:
                raise CorruptBackupError(f"{where}: source {rec.name!r}: two artifacts stored as {art.stored_name!r}")
            keys.add(art.stored_name)
        out.append((doc, rec))
    return out


def _check_artifact(art: ArtifactRecord, where: str) -> None:
    try:
        check_artifact_name(art.name)
    except (ValueError, TypeError, AttributeError):
        raise CorruptBackupError(f"{where}: bad artifact name {art.name!r}") from None
    counts = (art.size, art.stored_size)
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in counts):
        raise CorruptBackupError(f"{where}: artifact {art.name!r}: bad size or stored_size")
    if art.compression not in ("zstd", "none") or not isinstance(art.digest, str):
        raise CorruptBackupError(f"{where}: artifact {art.name!r}: bad compression or digest")


# --------------------------------------------------------------------------- copying one object


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


# --------------------------------------------------------------------------- copying backups


def named_storage(dm: DataManager, name: str, option: str = "--to") -> Storage:
    """A configured storage by name, or a usage error (exit 2) listing the configured ones."""
    if name not in dm.config.storages:
        known = ", ".join(sorted(dm.config.storages)) or "none"
        raise UsageError(f"{option} {name!r}: unknown storage (configured: {known})")
    return dm.storage(name)


class Copier:
    """Copies complete backups of one dataset from one storage to another (see the module's docstring)."""

    def __init__(self, data_id: str, source: Storage, target: Storage) -> None:
        self.data_id = data_id
        self.source = source
        self.target = target
        self.src = Repository(source)
        self.dst = Repository(target)

    def timestamps(self, which: str) -> list[str]:
        """``latest``, a TIMESTAMP (complete, else the repository's error) or ``all``: every complete one."""
        if which != "all":
            return [self.src.resolve(self.data_id, which).timestamp]
        found = self.src.backups(self.data_id)
        for b in found:
            if b.damaged:
                log.warning("%s/%s is damaged, not copied: %s", self.data_id, b.timestamp, b.damaged)
        stamps = [b.timestamp for b in found if b.complete]
        if not stamps:
            raise UsageError(f"no complete backup of {self.data_id!r} in {self.source.location()}")
        return stamps

    def copy(self, timestamp: str, *, dry_run: bool = False, check: Callable[[], None] = lambda: None,
             progress: Callable[[str], Callable[[int], None] | None] | None = None,
             begin: Callable[[str, int], None] | None = None) -> CopiedBackup:
        """Copy one backup (or, ``dry_run``, count what would be copied). ``check`` runs between sources
        (time limit, lock); ``progress(label)`` gives a byte counter per source; ``begin(what, bytes)``
        is told the most the copy will move, before it starts."""
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


def copy_backups(dm: DataManager, data_id: str, which: str, to: str, *, dry_run: bool = False,
                 progress: ProgressFactory | None = None, wait: float = 0.0) -> CopyResult:
    """``data-manager copy``: ``which`` is ``latest``, a TIMESTAMP or ``all``; ``to`` a configured storage
    other than the dataset's. A job holding the dataset's lock in ``to``, unless ``dry_run``."""
    dataset = dm.stored_dataset(data_id)
    target = named_storage(dm, to)
    if to == dataset.storage:
        raise UsageError(f"--to {to!r}: that is where {data_id}'s backups are; copy to another storage")
    source = dm.storage(dataset.storage)
    if source.location() == target.location():
        raise UsageError(f"--to {to!r}: the same place as storage {dataset.storage!r} ({target.location()})")
    copier = Copier(data_id, source, target)
    stamps = copier.timestamps(which)
    result = CopyResult(data_id, dataset.storage, to, target.location(), dry_run=dry_run)
    if dry_run:
        result.backups = [copier.copy(ts, dry_run=True) for ts in stamps]
        return result

    def body(ctx: JobContext) -> None:
        for ts in stamps:
            ctx.check()
            ctx.rec.set_backup(ts)
            ctx.rec.task_started(ts)
            try:
                done = copier.copy(ts, check=ctx.check, progress=lambda label: ctx.progress(progress, label),
                                   begin=getattr(progress, "begin", None))  # a meter with totals
            except BaseException as exc:
                ctx.rec.task_failed(ts, one_line(exc))
                raise
            note = f"{done.skipped} artifacts were there already" if done.skipped else None
            ctx.rec.task_done(ts, done.bytes, "already complete" if done.state == "already complete" else note)
            log.info("%s/%s: %s to %s (%d artifacts, %d bytes, %d there already)", data_id, ts, done.state, to,
                     done.artifacts, done.bytes, done.skipped)
            result.backups.append(done)

    _, rec, _ = dm.runner.run(dataset, "copy", [(ts, f"copy to {to}") for ts in stamps], body, wait=wait,
                              guarded=False, lock_in=(to, target), backup=stamps[0] if len(stamps) == 1 else None)
    result.job_id = rec.job.id
    return result


def copy_after_backup(dm: DataManager, dataset: Dataset, result: BackupResult,
                      progress: ProgressFactory | None = None) -> None:
    """The dataset's ``copies``: copy the backup just made to each; a failure leaves the backup complete and
    is recorded in ``result.copy_error`` (the CLI prints it as one line and exits 1)."""
    failed = []
    for name in dataset.options.get("copies", []):
        try:
            copy_backups(dm, dataset.data_id, result.timestamp, name, progress=progress)
            result.copies.append(name)
        except Exception as exc:  # the backup is complete whatever happens here
            log.debug("copy to %s failed", name, exc_info=True)
            failed.append(f"its copy to {name!r} failed: {one_line(exc)}")
    if failed:
        result.copy_error = f"backup {dataset.data_id}/{result.timestamp} is complete, but " + "; ".join(failed)


# --------------------------------------------------------------------------- where backups are


def where_stored(dm: DataManager, data_id: str | None,
                 backups: Callable[[Repository, str], list[BackupInfo]] = lambda repo, found: repo.backups(found),
                 ) -> list[BackupInfo]:
    """``list backup``: each backup once, oldest first, with the storages holding it complete
    (``storages``) and those holding an incomplete or damaged copy (``incomplete_in``).

    Every configured storage is looked in, a configured dataset's own first (the others may hold copies:
    one that cannot be listed is a warning, not an error).
    ``backups(repo, data_id)`` lists one dataset in one storage.
    """
    try:
        dataset: Dataset | None = dm.dataset(data_id) if data_id is not None else None
    except UsageError:
        dataset = None
    if dataset is not None:
        names = [dataset.storage, *(n for n in dm.config.storages if n != dataset.storage)]
    else:
        names = list(dm.config.storages)
    listings: list[tuple[str, list[BackupInfo]]] = []
    for name in names:
        try:
            repo = dm.repository(name)
            ids = [data_id] if data_id is not None else repo.data_ids()
            listings.append((name, [b for found in ids for b in backups(repo, found)]))
        except DataManagerError as exc:
            if dataset is None or name == dataset.storage:
                raise
            log.warning("cannot list the copies of %s in %s: %s", data_id, name, exc)
    merged = merge_listings(listings)
    if data_id is not None and dataset is None and not merged:
        dm.dataset(data_id)  # the "unknown dataset" error
    return merged


def merge_listings(listings: Iterable[tuple[str, list[BackupInfo]]]) -> list[BackupInfo]:
    """One :class:`BackupInfo` per (dataset, timestamp): the first complete one found (else the first),
    with the names of the storages holding it complete or not."""
    kept: dict[tuple[str, str], BackupInfo] = {}
    for name, infos in listings:
        for b in infos:
            key = (b.data_id, b.timestamp)
            first = kept.setdefault(key, b)
            if b.complete and not first.complete:
                b.storages, b.incomplete_in = first.storages, first.incomplete_in
                kept[key] = first = b
            (first.storages if b.complete else first.incomplete_in).append(name)
    return [kept[k] for k in sorted(kept)]
