"""``prune``: reclaim the space that forgotten backups leave in a storage whose engine shares data between
backups (``dedup``). Each run does what is due, in two phases (the engine's
:meth:`~data_manager.engines.base.RepositoryEngine.prune`; for ``dedup``:
:mod:`data_manager.engines.dedup.retention`):

* **sweep**: the plan an earlier run marked, once ``delete_delay`` passed and no backup that started before
  the mark is still running: packs deleted or rewritten, the forgotten backups' pointers and tombstones
  removed;
* **mark**: what no backup uses now, recorded in a signed plan; new backups stop reusing it.

A storage-wide operation on what the storage holds, not on one dataset's data: it takes no dataset lock and
asks no guard (it never touches a backup that counts, nor one being written). Run one prune at a time per
repository (from one place: one cron job, one service). Engines that free space at ``forget`` (``worm``)
have nothing to prune.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..api import DataManager

log = logging.getLogger(__name__)

DEFAULT_DELETE_DELAY = 86400.0


def storages_of(dm: DataManager, names: list[str] | tuple[str, ...] | None) -> list[str]:
    """The storages to prune: each name a storage, or a dataset (its storage); none: every storage."""
    if not names:
        return list(dm.config.storages)
    out: list[str] = []
    for name in names:
        if name in dm.config.storages:
            found = name
        else:
            try:
                found = dm.stored_dataset(name).storage
            except UsageError:
                raise UsageError(f"{name!r} is neither a storage nor a dataset of the config "
                                 f"(storages: {', '.join(dm.config.storages) or 'none'})") from None
        if found not in out:
            out.append(found)
    return out


def prune(dm: DataManager, names: list[str] | tuple[str, ...] | None = None, *, dry_run: bool = False,
          delete_delay: float = DEFAULT_DELETE_DELAY, progress: Any = None,
          max_unused: float | None = None) -> list[dict[str, Any]]:
    """Prune each storage of ``names`` (storages or datasets; none: every storage), one after the other;
    what each did (or, with ``dry_run``, would do). The first failure stops the run."""
    if delete_delay < 0:
        raise UsageError(f"--delete-delay: must be 0 or more, not {delete_delay}")
    if max_unused is not None and not 0 <= max_unused <= 1:
        raise UsageError(f"--max-unused: must be between 0% and 100%, not {max_unused:.0%}")
    out = []
    for storage in storages_of(dm, names):
        result = dm.repository(storage).prune(dry_run=dry_run, delete_delay=delete_delay, progress=progress,
                                                 max_unused=max_unused)
        for line in result.get("describe", []):
            log.info("prune %s: %s", storage, line)
        out.append(result)
    return out
