"""The status page at ``/``: server-rendered (Jinja2), live through an ``EventSource`` on ``/v1/events``
and a few lines of plain JavaScript, no framework.

Datasets with the age of their newest good backup (green up to 26 h, amber up to 3 days, red beyond or
never), running jobs with their progress (updated live; a job started after the page loaded appears without
a reload), recent failures, datasets marked unavailable, each dataset's next scheduled run.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..operations.status import age_text
from ..timestamps import now_utc
from .scheduler import parse_iso

GREEN, AMBER = 26 * 3600, 3 * 86400

_env = Environment(loader=PackageLoader("data_manager.service", "templates"), autoescape=select_autoescape(["html"]))


def colour(age: float | None) -> str:
    if age is None:
        return "red"
    return "green" if age <= GREEN else "amber" if age <= AMBER else "red"


def render(service: Any) -> str:
    now = now_utc()
    latest = service.store.last_good_backups()
    marks = {a.data_id: a for a in service.state.unavailable()}
    datasets = []
    for data_id in service.dm.config.datasets:
        last = latest.get(data_id)
        age = (now - parse_iso(last[1])).total_seconds() if last and last[1] else None
        nxt = service.scheduler.next_run(data_id) if data_id in service.schedules else None
        datasets.append({"data_id": data_id, "latest": last[0] if last else None,
                         "age": age_text(int(age)) if age is not None else "never", "colour": colour(age),
                         "next_run": nxt.strftime("%Y-%m-%d %H:%M:%S UTC") if nxt else None,
                         "paused": service.scheduler.paused(data_id) if data_id in service.schedules else False,
                         "mark": marks.get(data_id)})
    running = service.store.jobs(states=("pending", "running"), limit=200)
    for job in running:
        job["progress"] = service.launcher.progress(job["id"])
    failures = service.store.jobs(state="failed", limit=10)
    return _env.get_template("status.html").render(datasets=datasets, running=running, failures=failures,
                                                   generated=now.strftime("%Y-%m-%d %H:%M:%S UTC"))


def login(error: str | None = None) -> str:
    return _env.get_template("login.html").render(error=error)
