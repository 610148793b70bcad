"""Second copies (3-2-1): complete backups copied from a dataset's storage to another one.

``data-manager copy [latest | TIMESTAMP | --all] DATA_ID --to STORAGE`` and ``[datasets.X] copies = [...]``
(every backup copies itself after it completes) both end in :func:`copy_backups`. The engines do the
copying (:meth:`~data_manager.engines.base.RepositoryEngine.copy_backup`): between two ``worm`` storages
the objects as stored, each checked on the way; otherwise every artifact read back (checked) and written
through the target's engine. Either way the copy counts on the target only once complete, an interrupted
one is resumed by the next, and nothing read from the source storage is trusted unchecked.

A copy runs as a job (recorded in the state database, ``status`` shows it) holding the dataset's lock in
the *target* storage, so two copies (or a copy and a cleanup there) never race. It asks no guard and marks
nothing unavailable: it reads only the backup storage, never the dataset's data. The source storage is not
locked: nothing in data-manager changes or removes a complete backup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DataManagerError, UsageError
from ..engines.base import RepositoryEngine
from ..engines.records import BackupInfo, CopiedBackup
from ..runner import JobContext, ProgressFactory, one_line
from ..types import Dataset, Storage

if TYPE_CHECKING:
    from ..api import DataManager
    from .backup import BackupResult

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- copying backups


def named_storage(dm: DataManager, name: str, option: str = "--to") -> Storage:
    """A configured storage by name, or a usage error (exit 2) listing the configured ones."""
    if name not in dm.config.storages:
        known = ", ".join(sorted(dm.config.storages)) or "none"
        raise UsageError(f"{option} {name!r}: unknown storage (configured: {known})")
    return dm.storage(name)


class Copier:
    """Copies complete backups of one dataset from one repository to another."""

    def __init__(self, data_id: str, source: RepositoryEngine, target: RepositoryEngine) -> None:
        self.data_id = data_id
        self.src = source
        self.dst = target

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
            raise UsageError(f"no complete backup of {self.data_id!r} in {self.src.location()}")
        return stamps

    def copy(self, timestamp: str, *, dry_run: bool = False, check: Callable[[], None] = lambda: None,
             progress: Callable[[str], Callable[[int], None] | None] | None = None,
             begin: Callable[[str, int], None] | None = None) -> CopiedBackup:
        """Copy one backup (or, ``dry_run``, count what would be copied). ``check`` runs between sources
        (time limit, lock); ``progress(label)`` gives a byte counter per source; ``begin(what, bytes)``
        is told the most the copy will move, before it starts."""
        return self.src.copy_backup(self.dst, self.data_id, timestamp, dry_run=dry_run, check=check,
                                    progress=progress, begin=begin)


def copy_backups(dm: DataManager, data_id: str, which: str, to: str, *, dry_run: bool = False,
                 progress: ProgressFactory | None = None, wait: float = 0.0) -> CopyResult:
    """``data-manager copy``: ``which`` is ``latest``, a TIMESTAMP or ``all``; ``to`` a configured storage
    other than the dataset's. A job holding the dataset's lock in ``to``, unless ``dry_run``."""
    dataset = dm.stored_dataset(data_id)
    target = named_storage(dm, to)
    if to == dataset.storage:
        raise UsageError(f"--to {to!r}: that is where {data_id}'s backups are; copy to another storage")
    source = dm.repository(dataset.storage)
    if source.location() == target.location():
        raise UsageError(f"--to {to!r}: the same place as storage {dataset.storage!r} ({target.location()})")
    copier = Copier(data_id, source, dm.repository(to))
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
                 backups: Callable[[RepositoryEngine, str], list[BackupInfo]] = lambda repo, found: repo.backups(found),
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
