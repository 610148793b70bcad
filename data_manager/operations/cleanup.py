"""``cleanup``: what interrupted backups left in the storages (after a grace period), and what interrupted
restores left beside their targets, each removed under the dataset's lock."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import os

from ..errors import RefusedError
from ..locks import DatasetLock, list_locks
from ..timestamps import now_utc, parse_timestamp

if TYPE_CHECKING:
    from ..api import DataManager

log = logging.getLogger(__name__)


@dataclass
class CleanupItem:
    """One incomplete backup ``cleanup`` looked at."""

    data_id: str
    timestamp: str
    age_seconds: int
    stored_size: int
    action: str  # removed | would remove | kept

    reason: str = ""
    path: str = ""  # what was found when it is not a backup (then timestamp is "")
    kind: str = "backup"  # backup | unfinished write (in a storage) | restore leftover (beside a target)

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()



def cleanup(dm: DataManager, data_id: str | None = None, *, older_than: float = 86400.0, dry_run: bool = False) -> list[CleanupItem]:
    """Remove incomplete backups started more than ``older_than`` seconds ago.

    Takes each dataset's lock while it works; if another job holds it, the newest incomplete backup
    (the one that job may be writing or resuming) is kept and only older ones are removed.
    """
    out: list[CleanupItem] = []
    now = now_utc()
    for repo, found in dm.dataset_storages(data_id):
        storage = repo.storage  # the dataset's lock lives there
        backups = repo.backups(found)
        incomplete = [b for b in backups if not b.complete and not b.damaged]
        stamps = [b.timestamp for b in incomplete]
        old = [ts for ts in stamps if (now - parse_timestamp(ts)).total_seconds() > older_than]
        stored = {b.timestamp: b.stored_size or 0 for b in incomplete}
        # Writes killed inside backups that later completed (resumed, or copied again); the grace period
        # keeps a running job's. Old incomplete backups go whole, below.
        for b in backups:
            if b.timestamp in old:
                continue
            for key in repo.sweep_unfinished(found, b.timestamp, older_than, remove=not dry_run):
                out.append(CleanupItem(found, b.timestamp, 0, 0, "would remove" if dry_run else "removed",
                                       path=f"{repo.location()}/{key}", kind="unfinished write"))
        if not old:
            continue
        lock = None
        busy = ""
        holders = [lk for lk in list_locks(storage, found)]
        if dry_run:
            busy = holders[0].owner() if holders else ""
        else:
            lock = DatasetLock(storage, found, "cleanup-" + os.urandom(4).hex(), "cleanup", dm.lock_settings)
            try:
                lock.acquire()
            except RefusedError:
                lock = None
                busy = holders[0].owner() if holders else "another job"
        try:
            for ts in old:
                item = CleanupItem(found, ts, int((now - parse_timestamp(ts)).total_seconds()), stored[ts], "removed")
                if busy and ts == stamps[-1]:
                    item.action, item.reason = "kept", f"newest incomplete backup; {found} is locked by {busy}"
                elif dry_run:
                    item.action = "would remove"
                else:
                    repo.delete_incomplete(found, ts)
                    log.info("removed incomplete backup %s/%s", found, ts)
                out.append(item)
        finally:
            if lock is not None:
                lock.release()
    out.extend(restore_leftovers(dm, data_id, dry_run))
    return out

def restore_leftovers(dm: DataManager, data_id: str | None, dry_run: bool) -> list[CleanupItem]:
    """What interrupted restores left beside the targets of configured sources; removed under the lock."""
    out: list[CleanupItem] = []
    datasets = [dm.dataset(data_id)] if data_id is not None else list(dm.config.datasets.values())
    for dataset in datasets:
        sources = [dm.source(spec) for spec in dataset.sources]
        found = [(s, path) for s in sources for path in s.restore_leftovers(remove=False)]
        if not found:
            continue
        if dry_run:
            out.extend(CleanupItem(dataset.data_id, "", 0, 0, "would remove", path=p, kind="restore leftover") for _, p in found)
            continue
        lock = DatasetLock(dm.storage(dataset.storage), dataset.data_id, "cleanup-" + os.urandom(4).hex(),
                           "cleanup", dm.lock_settings)
        try:
            lock.acquire()
        except RefusedError:
            reason = f"{dataset.data_id} is locked: a restore may be using it"
            out.extend(CleanupItem(dataset.data_id, "", 0, 0, "kept", reason, p, "restore leftover") for _, p in found)
            continue
        try:
            for source in {id(s): s for s, _ in found}.values():
                for path in source.restore_leftovers(remove=True):
                    log.info("removed %s, left by an interrupted restore", path)
                    out.append(CleanupItem(dataset.data_id, "", 0, 0, "removed", path=path, kind="restore leftover"))
        finally:
            lock.release()
    return out
