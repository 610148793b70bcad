"""The scheduler under load with the real clock: 200 datasets scheduled every minute, a real ``serve`` for
three minute boundaries. Every due time is acted on exactly once (a job, or skipped while the dataset's
previous job is still queued), and acted on promptly: lag p99 <= 2 s (due time to the row recording it)."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

SCHEDULES = 200
BOUNDARIES = 3


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_200_every_minute_schedules_lag_and_no_duplicates(tmp_path: Path, serve_factory: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("x")
    lines = ["[storages.local]", 'type = "filesystem"', f'root = "{tmp_path / "store"}"', "",
             "[state]", f'path = "{tmp_path / "state.db"}"', "", "[locks]", 'settle = "0.05s"', "",
             "[service]", "max_jobs = 2", ""]
    for i in range(SCHEDULES):
        lines += [f"[datasets.s{i:03d}]", 'storage = "local"', f"[datasets.s{i:03d}.schedule]", 'cron = "* * * * *"',
                  f"[[datasets.s{i:03d}.sources]]", 'name = "files"', 'type = "directory"', f'path = "{data}"', ""]
    config = tmp_path / "dm.toml"
    config.write_text("\n".join(lines))
    server = serve_factory(config).start()
    started = datetime.now(timezone.utc)
    first = started.replace(second=0, microsecond=0) + timedelta(minutes=1)
    last = first + timedelta(minutes=BOUNDARIES - 1)
    while datetime.now(timezone.utc) < last + timedelta(seconds=5):
        assert server.proc is not None and server.proc.poll() is None, server.log.read_text()
        time.sleep(1)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/readyz").status_code == 200
    assert server.stop() == 0

    with sqlite3.connect(tmp_path / "state.db") as con:
        rows = con.execute("SELECT data_id, due_at, job_id, outcome, coalesced, recorded_at FROM schedule_runs").fetchall()
        jobs = con.execute("SELECT data_id, due_at, count(*) FROM service_jobs WHERE trigger = 'schedule' "
                           "GROUP BY data_id, due_at").fetchall()
    expected = {first + timedelta(minutes=k) for k in range(BOUNDARIES)}
    per = {}
    lags = []
    for data_id, due_at, job_id, outcome, coalesced, recorded_at in rows:
        due = parse(due_at)
        if due <= last:
            per.setdefault(data_id, []).append(due)
            lags.append((parse(recorded_at) - due).total_seconds())
        assert coalesced == 0, (data_id, due_at, coalesced)  # nothing was missed
        assert (job_id is not None) == (outcome == "job"), (data_id, due_at, outcome)
    assert len(per) == SCHEDULES
    for data_id, dues in per.items():
        assert sorted(dues) == sorted(expected), (data_id, dues)  # each due time exactly once
    assert all(n == 1 for _, _, n in jobs), [j for j in jobs if j[2] != 1]
    lags.sort()
    p99 = lags[int(0.99 * (len(lags) - 1))]
    print(f"schedule lag over {len(lags)} due times: p50 {lags[len(lags) // 2]:.3f} s, p99 {p99:.3f} s, "
          f"max {lags[-1]:.3f} s")
    assert p99 <= 2.0, lags[-20:]
