"""Schedules: ``[datasets.X.schedule]`` turned into backup jobs (cronsim for the cron expressions, zoneinfo
for the time zones).

- **Due times** are the cron expression's times in the schedule's time zone, as cronsim computes them: a
  time inside a DST gap runs once, when the gap ends (``30 2 * * *`` on 2026-03-29 in Europe/Berlin: 03:00
  CEST); a time inside a repeated hour runs once, at its first occurrence (2026-10-25: 02:30 CEST).
- **Jitter**: a due time fires ``jitter * h`` later, ``h`` in [0, 1) from a hash of the dataset and the
  due time: spread across datasets, yet the same after a restart.
- **Coalescing**: when several due times passed unseen (the service was down), only the newest yields a job;
  its ``schedule_runs`` row counts the others (``coalesced``). No catch-up storm (as Velero's schedules).
- **One job per due time**: the job and its due time are recorded in one transaction
  (:meth:`~.store.Store.create_job`); a due time already recorded never yields another, also across restarts.
- A due time is **skipped** (recorded, no job) while the dataset has a job pending or running, and recorded
  as ``paused`` while the schedule is paused (``paused = true`` in the config, or through the API).

A dataset whose schedule is new has a cursor of "now" at its first tick: no past due time runs. The
clock is injected (``clock``), so tests drive the scheduler through DST changes without waiting.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from ..timestamps import iso, now_utc
from .settings import Schedule
from .store import Store

log = logging.getLogger(__name__)

MAX_CATCH_UP = timedelta(days=31)  # due times older than this are not even counted when coalescing
MAX_SCAN = 50_000


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def due_times(schedule: Schedule, after: datetime) -> Any:
    """The due times strictly after ``after`` (aware), in UTC, ascending (an endless iterator)."""
    from cronsim import CronSim

    after = after.astimezone(timezone.utc)
    # Near a change of the zone's offset, start a little earlier in local time and drop what is not after
    # ``after``: cronsim's start inside a repeated hour (fold) must not make it skip or repeat a time.
    # Elsewhere start at ``after`` (an every-minute schedule would iterate 120 times per call otherwise).
    tz = schedule.tz
    margin = timedelta(hours=2)
    steady = (after - margin).astimezone(tz).utcoffset() == (after + margin).astimezone(tz).utcoffset()
    start = (after - (timedelta(minutes=1) if steady else margin)).astimezone(tz).replace(second=0, microsecond=0)
    for local in CronSim(schedule.fields, start):
        due = local.astimezone(timezone.utc)
        if due > after:
            yield due


def jitter_offset(schedule: Schedule, due: datetime) -> timedelta:
    if not schedule.jitter:
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule.data_id}|{iso(due)}".encode()).digest()
    return timedelta(seconds=schedule.jitter * int.from_bytes(digest[:8], "big") / 2**64)


class Scheduler:
    """Turns due times into jobs through ``submit(schedule, due_iso, coalesced) -> job or None``.

    ``tick()`` does one pass (what the thread calls every second); everything it decides is in the state
    database, so a new Scheduler over the same database (a restart) carries on where this one stopped.
    """

    def __init__(self, store: Store, schedules: dict[str, Schedule],
                 submit: Callable[[Schedule, str, int], dict[str, Any] | None],
                 clock: Callable[[], datetime] = now_utc,
                 on_lag: Callable[[str, float], None] | None = None) -> None:
        self.store = store
        self.schedules = schedules
        self.submit = submit
        self.clock = clock
        self.on_lag = on_lag
        self._cursor: dict[str, datetime] = {}
        self._fires: dict[str, datetime] = {}  # when the first due time after the cursor fires (jitter in)
        self._paused: dict[str, bool | None] = {}
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        """Read every schedule's cursor and pause from the state database again (after a failed batch)."""
        self._cursor.clear()
        self._fires.clear()
        with self.store.batch():
            for data_id in self.schedules:
                state = self.store.schedule_state(data_id)
                if state["last_due"]:
                    self._cursor[data_id] = parse_iso(state["last_due"])
                self._paused[data_id] = None if state["paused"] is None else bool(state["paused"])

    def paused(self, data_id: str) -> bool:
        override = self._paused.get(data_id)
        return self.schedules[data_id].paused if override is None else override

    def set_paused(self, data_id: str, paused: bool) -> None:
        with self._lock:
            self.store.set_paused(data_id, paused)
            self._paused[data_id] = paused

    def next_run(self, data_id: str) -> datetime | None:
        """When the next due time of ``data_id`` fires (jitter included); None when paused."""
        schedule = self.schedules[data_id]
        if self.paused(data_id):
            return None
        after = max(self._cursor.get(data_id, self.clock()), self.clock() - MAX_CATCH_UP)
        due = next(due_times(schedule, after))
        return due + jitter_offset(schedule, due)

    def tick(self) -> list[dict[str, Any]]:
        """One pass over every schedule, in one transaction; returns what was decided (``{data_id, due_at,
        outcome, ...}``). When the transaction fails, nothing was decided: the cursors are read again."""
        out = []
        with self._lock:
            try:
                with self.store.batch():
                    for data_id, schedule in self.schedules.items():
                        try:
                            decided = self._tick_one(schedule)
                        except Exception as exc:  # one broken schedule never stops the others
                            log.error("schedule of %s: %s", data_id, exc)
                            continue
                        if decided:
                            out.append(decided)
            except Exception:
                self.reload()
                raise
        return out

    def _tick_one(self, schedule: Schedule) -> dict[str, Any] | None:
        data_id = schedule.data_id
        now = self.clock()
        cursor = self._cursor.get(data_id)
        if cursor is None:  # a new schedule: nothing before now is due
            self.store.set_last_due(data_id, iso(now))
            self._cursor[data_id] = now
            return None
        fires = self._fires.get(data_id)
        if fires is None:  # cronsim once per due time, not once per schedule and tick
            due = next(due_times(schedule, max(cursor, now - MAX_CATCH_UP)))
            fires = self._fires[data_id] = due + jitter_offset(schedule, due)
        if fires > now:
            return None
        del self._fires[data_id]
        passed: list[datetime] = []
        for due in due_times(schedule, max(cursor, now - MAX_CATCH_UP)):
            if due + jitter_offset(schedule, due) > now or len(passed) >= MAX_SCAN:
                break
            passed.append(due)
        if not passed:
            return None
        due, coalesced = passed[-1], len(passed) - 1
        due_at = iso(due)
        lag = (now - (due + jitter_offset(schedule, due))).total_seconds()
        self._cursor[data_id] = due
        decided: dict[str, Any] = {"data_id": data_id, "due_at": due_at, "coalesced": coalesced, "lag": lag}
        if self.paused(data_id):
            self.store.record_due(data_id, due_at, "paused", coalesced, iso(now))
            return {**decided, "outcome": "paused"}
        if self.store.active(data_id):
            self.store.record_due(data_id, due_at, "skipped", coalesced, iso(now))
            log.info("schedule of %s: due time %s skipped, a job of the dataset is queued or running", data_id, due_at)
            return {**decided, "outcome": "skipped"}
        job = self.submit(schedule, due_at, coalesced)
        if self.on_lag is not None:
            self.on_lag(data_id, lag)
        if job is None:
            return {**decided, "outcome": "already recorded"}
        return {**decided, "outcome": "job", "job_id": job["id"]}

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(interval):
            self.tick()
