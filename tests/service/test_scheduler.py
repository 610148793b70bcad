"""The scheduler with an injected clock: DST gaps and repeats, ISO week 53, coalescing of missed runs, a
due time skipped while the dataset has a job, pause, jitter, and one job per due time across a restart."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from data_manager.service.scheduler import Scheduler, due_times, jitter_offset
from data_manager.service.settings import Schedule
from data_manager.service.store import Store

UTC = timezone.utc


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


class Harness:
    """A Scheduler over a state database, recording what it submitted (jobs in the store, as the service's)."""

    def __init__(self, path: Path, schedule: Schedule, clock: Clock) -> None:
        self.store = Store(path)
        self.schedule = schedule
        self.clock = clock
        self.submitted: list[tuple[str, int]] = []
        self.scheduler = self.new()

    def new(self) -> Scheduler:
        """A scheduler as a (re)started service builds it."""
        return Scheduler(self.store, {self.schedule.data_id: self.schedule}, self._submit, clock=self.clock)

    def _submit(self, schedule: Schedule, due_at: str, coalesced: int) -> dict[str, Any] | None:
        job, created = self.store.create_job("backup", schedule.data_id, {}, "schedule", due=(due_at, coalesced))
        if created:
            self.submitted.append((due_at, coalesced))
        return job if created else None

    def finish_all(self) -> None:
        for job in self.store.jobs(states=("pending", "running")):
            self.store.update_job(job["id"], state="done", ended_at="2030-01-01T00:00:00.000Z")

    def run(self, until: datetime, step: timedelta = timedelta(minutes=1), finish: bool = True) -> None:
        while self.clock.now < until:
            self.clock.now = min(self.clock.now + step, until)
            self.scheduler.tick()
            if finish:
                self.finish_all()


def berlin(cron: str = "30 2 * * *", **kw: Any) -> Schedule:
    return Schedule("d1", cron, "Europe/Berlin", **kw)


def test_dst_gap_runs_once_when_the_gap_ends(tmp_path: Path) -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    clock = Clock(datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    h = Harness(tmp_path / "s.db", berlin(), clock)
    h.scheduler.tick()  # first sight: nothing before now is due
    h.run(datetime(2026, 3, 31, 12, 0, tzinfo=UTC), step=timedelta(minutes=5))
    assert [d for d, _ in h.submitted] == [
        "2026-03-29T01:00:00.000Z",  # 03:00 CEST, right after the gap
        "2026-03-30T00:30:00.000Z",  # 02:30 CEST
        "2026-03-31T00:30:00.000Z",
    ]


def test_dst_repeat_runs_once(tmp_path: Path) -> None:
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    clock = Clock(datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    h = Harness(tmp_path / "s.db", berlin(), clock)
    h.scheduler.tick()
    h.run(datetime(2026, 10, 26, 12, 0, tzinfo=UTC), step=timedelta(minutes=5))
    assert [d for d, _ in h.submitted] == [
        "2026-10-25T00:30:00.000Z",  # 02:30 CEST, the first 02:30; not 01:30 UTC (02:30 CET) again
        "2026-10-26T01:30:00.000Z",  # 02:30 CET
    ]
    assert all(c == 0 for _, c in h.submitted)


def test_iso_week_53_weekly(tmp_path: Path) -> None:
    # 2026 has an ISO week 53 (Mon 2026-12-28): a Monday schedule runs in weeks 52, 53 and 1, 7 days apart.
    schedule = Schedule("d1", "0 3 * * 1", "UTC")
    got = []
    it = due_times(schedule, datetime(2026, 12, 20, tzinfo=UTC))
    for _ in range(3):
        got.append(next(it))
    assert [d.isocalendar()[:2] for d in got] == [(2026, 52), (2026, 53), (2027, 1)]
    assert {(b - a) for a, b in zip(got, got[1:])} == {timedelta(days=7)}


def test_missed_runs_coalesce_into_one(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, 0, 0, 30, tzinfo=UTC))
    h = Harness(tmp_path / "s.db", Schedule("d1", "*/10 * * * *"), clock)
    h.scheduler.tick()
    clock.advance(hours=5)  # down for 5 hours: 30 due times passed
    restarted = h.new()
    restarted.tick()
    assert h.submitted == [("2026-05-01T05:00:00.000Z", 29)]
    restarted.tick()
    assert len(h.submitted) == 1
    run = h.store.runs("d1")[0]
    assert (run["due_at"], run["outcome"], run["coalesced"]) == ("2026-05-01T05:00:00.000Z", "job", 29)


def test_one_job_per_due_time_across_a_restart(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, 0, 0, 30, tzinfo=UTC))
    h = Harness(tmp_path / "s.db", Schedule("d1", "* * * * *"), clock)
    h.scheduler.tick()
    clock.advance(minutes=1)
    h.scheduler.tick()
    assert len(h.submitted) == 1
    # A restart at the same moment (say the first service died right after recording the job): the new
    # scheduler, and even one whose cursor is behind, yields no second job for that due time.
    h.finish_all()
    h.new().tick()
    h.store.set_last_due("d1", "2026-05-01T00:00:00.000Z")  # a cursor behind the recorded due time
    h.new().tick()
    assert len(h.submitted) == 1
    assert [r["due_at"] for r in h.store.runs("d1")] == ["2026-05-01T00:01:00.000Z"]
    # every due time afterwards yields exactly one job, whatever restarts happen between
    for i in range(10):
        clock.advance(minutes=1)
        (h.new() if i % 3 == 0 else h.scheduler).tick()
        h.finish_all()
    dues = [d for d, _ in h.submitted]
    assert len(dues) == len(set(dues)) == 11


def test_skipped_while_the_dataset_has_a_job(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, 0, 0, 30, tzinfo=UTC))
    h = Harness(tmp_path / "s.db", Schedule("d1", "* * * * *"), clock)
    h.scheduler.tick()
    h.run(datetime(2026, 5, 1, 0, 3, 30, tzinfo=UTC), finish=False)  # the first job never ends
    assert [d for d, _ in h.submitted] == ["2026-05-01T00:01:00.000Z"]
    outcomes = {r["due_at"]: r["outcome"] for r in h.store.runs("d1")}
    assert outcomes == {"2026-05-01T00:01:00.000Z": "job", "2026-05-01T00:02:00.000Z": "skipped",
                        "2026-05-01T00:03:00.000Z": "skipped"}


def test_paused_schedule_records_due_times_without_jobs_and_survives_restart(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, 0, 0, 30, tzinfo=UTC))
    h = Harness(tmp_path / "s.db", Schedule("d1", "* * * * *"), clock)
    h.scheduler.tick()
    h.scheduler.set_paused("d1", True)
    h.scheduler = h.new()  # the pause is in the state database
    assert h.scheduler.paused("d1") and h.scheduler.next_run("d1") is None
    h.run(datetime(2026, 5, 1, 0, 2, 30, tzinfo=UTC))
    assert h.submitted == []
    h.scheduler.set_paused("d1", False)
    h.run(datetime(2026, 5, 1, 0, 3, 30, tzinfo=UTC))
    assert [d for d, _ in h.submitted] == ["2026-05-01T00:03:00.000Z"]


def test_config_paused(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, 0, 0, 30, tzinfo=UTC))
    h = Harness(tmp_path / "s.db", Schedule("d1", "* * * * *", paused=True), clock)
    h.scheduler.tick()
    h.run(datetime(2026, 5, 1, 0, 5, 30, tzinfo=UTC))
    assert h.submitted == []


def test_jitter_is_deterministic_and_bounded(tmp_path: Path) -> None:
    schedule = Schedule("d1", "0 * * * *", jitter=600)
    due = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
    offsets = {jitter_offset(schedule, due + timedelta(hours=i)) for i in range(50)}
    assert all(timedelta(0) <= o < timedelta(seconds=600) for o in offsets) and len(offsets) > 40
    assert jitter_offset(schedule, due) == jitter_offset(Schedule("d1", "0 * * * *", jitter=600), due)
    assert jitter_offset(Schedule("d2", "0 * * * *", jitter=600), due) != jitter_offset(schedule, due)
    clock = Clock(datetime(2026, 5, 1, 2, 30, tzinfo=UTC))
    h = Harness(tmp_path / "s.db", schedule, clock)
    h.scheduler.tick()
    fire = due + jitter_offset(schedule, due)
    assert h.scheduler.next_run("d1") == fire
    clock.now = fire - timedelta(seconds=1)
    h.scheduler.tick()
    assert h.submitted == []
    clock.now = fire
    h.scheduler.tick()
    assert h.submitted == [("2026-05-01T03:00:00.000Z", 0)]


def test_a_new_schedule_does_not_run_past_due_times(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    h = Harness(tmp_path / "s.db", Schedule("d1", "0 * * * *"), clock)
    h.scheduler.tick()
    clock.advance(minutes=59)
    h.scheduler.tick()
    assert h.submitted == []
    clock.advance(minutes=1)
    h.scheduler.tick()
    assert h.submitted == [("2026-05-01T13:00:00.000Z", 0)]


@pytest.mark.parametrize("cron", ["@daily", "0 0 * * 7", "15 3 29 2 *"])
def test_other_expressions(cron: str) -> None:
    it = due_times(Schedule("d1", cron, "Europe/Berlin"), datetime(2026, 1, 1, tzinfo=UTC))
    first, second = next(it), next(it)
    assert first < second
