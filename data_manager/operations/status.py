"""What ``data-manager status`` shows: config, plugins, storages, each dataset's latest backup, jobs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import DataManagerError
from ..jobs import Availability, Job
from ..timestamps import now_utc

if TYPE_CHECKING:
    from ..api import DataManager

log = logging.getLogger(__name__)


@dataclass
class Status:
    """What ``data-manager status`` shows."""

    config: str | None
    state: str
    plugins: list[dict[str, Any]]
    storages: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    running: list[Job]
    recent: list[Job]
    unavailable: list[Availability]

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "state": self.state,
            "plugins": self.plugins,
            "storages": self.storages,
            "datasets": self.datasets,
            "running": [j.to_json() for j in self.running],
            "recent": [j.to_json() for j in self.recent],
            "unavailable": [a.to_json() for a in self.unavailable],
        }



def status(dm: DataManager) -> Status:
    """The config in use, plugins, storages (reachable or not), each dataset's latest backup, its age and
    locks; running and recent jobs; datasets marked unavailable (or whose release failed)."""
    storages = []
    reachable: dict[str, bool] = {}
    for name, cfg in dm.config.storages.items():
        entry: dict[str, Any] = {"name": name, "type": cfg.type, "engine": cfg.engine}
        try:
            repo = dm.repository(name)
            entry["location"] = repo.location()
            repo.check()
            entry["reachable"] = True
        except DataManagerError as exc:
            entry["reachable"] = False
            entry["error"] = str(exc)
        reachable[name] = entry["reachable"]
        storages.append(entry)
    datasets = []
    now = now_utc()
    for data_id, ds in sorted(dm.config.datasets.items()):
        entry = {"data_id": data_id, "storage": ds.storage, "sources": [s.name for s in ds.sources],
                 "latest": None, "age_seconds": None, "verified": None, "verified_sample": None, "incomplete": 0, "damaged": 0, "locks": []}
        if reachable.get(ds.storage):
            try:
                repo = dm.repository(ds.storage)
                backups = dm.with_verified(repo, data_id, repo.backups(data_id))
                complete = [b for b in backups if b.complete]
                entry["damaged"] = sum(1 for b in backups if b.damaged)
                entry["incomplete"] = len(backups) - len(complete) - entry["damaged"]
                if complete:
                    entry["latest"] = complete[-1].timestamp
                    entry["age_seconds"] = int((now - complete[-1].when).total_seconds())
                    entry["verified"] = complete[-1].verified
                    entry["verified_sample"] = complete[-1].verified_sample
                entry["locks"] = [lock.to_json() for lock in dm.locks(data_id)]
            except DataManagerError as exc:
                entry["error"] = str(exc)
        window = _window(dm, data_id, now)
        if window is not None:
            entry["window"] = window
        datasets.append(entry)
    try:
        dm.state.reap()
    except DataManagerError as exc:
        log.warning("%s", exc)
    return Status(
        config=str(dm.config.path) if dm.config.path else None,
        state=str(dm.state.path),
        plugins=[p.to_json() for p in dm.registry.plugins],
        storages=storages,
        datasets=datasets,
        running=dm.jobs(running=True, limit=None),
        recent=dm.jobs(running=False),
        unavailable=dm.state.unavailable(),
    )



def _window(dm: DataManager, data_id: str, now: datetime) -> dict[str, Any] | None:
    """The dataset's backup window (``[datasets.X.schedule] window``) as the service applies it, or None."""
    from ..service.settings import schedule_from_table
    from ..service.windows import window_report

    ds = dm.config.datasets[data_id]
    table = ds.options.get("schedule")
    if not isinstance(table, dict) or "window" not in table:
        return None
    schedule = schedule_from_table(table, str(dm.config.path or "<config>"), data_id)
    assert schedule.window is not None
    return window_report(schedule.window, dm.sources_restarting(data_id), now)


def age_text(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
