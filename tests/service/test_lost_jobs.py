"""Zero lost jobs under ``kill -9`` of the service: a real ``data-manager serve`` is killed at seeded random
moments while clients submit backups of tiny datasets (each with its own ``Idempotency-Key``, retried
after the restart when the kill cut the request off) and an every-minute schedule fires (and is forced
through run-now); it is restarted, several rounds, then left to drain. Then:

- every accepted job ended ``done``, or ``failed`` with a reason; every job of the database ended too;
- no job is duplicated: one job per Idempotency-Key, one per schedule due time;
- every due time of the schedule is accounted for exactly once (``schedule_runs``: a job, a skip, or
  counted as coalesced by the next row), and each ``job`` row has exactly its one job;
- no dataset lock (``data-manager lock list``) and no unavailability mark (``status --json``) is left.

The soak of the issue: 20 rounds, about 50 accepted jobs (half of them at least), and at least one kill
landing while a job's child process ran (an attempt recorded ``interrupted``).
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from .conftest import TOKENS, token_env, write_config

SEED = 19
ROUNDS = 20
JOBS_PER_ROUND = 3
DATASETS = ("d1", "d2", "d3", "d4")
SCHEDULED = "s1"
AUTH = {"Authorization": f"Bearer {TOKENS['operator']}"}


def cli(config: Path, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "data_manager", "--config", str(config), *args, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_no_job_is_lost_under_kill_9(tmp_path: Path, serve_factory: Any) -> None:
    rng = random.Random(SEED)
    extra = "\n".join(["[service]", "max_jobs = 2", 'retry_backoff = "1s"', 'refused_retry = "1s"',
                       "refused_retries = 100", "retries = 3", "",
                       f"[datasets.{SCHEDULED}.schedule]", 'cron = "* * * * *"', ""])
    config = write_config(tmp_path, datasets=(*DATASETS, SCHEDULED), tokens=True, extra=extra)
    db = tmp_path / "state.db"

    accepted: dict[str, str] = {}  # Idempotency-Key -> job id
    unanswered: dict[str, str] = {}  # Idempotency-Key -> data_id: the kill cut the request off
    run_now: set[str] = set()
    counter = iter(range(10_000))

    def submit(url: str, n: int, with_run_now: bool) -> None:
        """A run-now of the scheduled dataset if asked, then n backups with random gaps; stops at the first
        connection error (the service was killed)."""
        with httpx.Client(base_url=url, headers=AUTH, timeout=5) as c:
            if with_run_now:
                try:
                    r = c.post(f"/v1/datasets/{SCHEDULED}/schedule/run")
                except httpx.HTTPError:
                    return
                assert r.status_code in (202, 409), r.text  # 409: a job of s1 is queued or running
                if r.status_code == 202:
                    run_now.add(r.json()["id"])
            for _ in range(n):
                key, data_id = f"soak-{next(counter)}", rng.choice(DATASETS)
                unanswered[key] = data_id
                try:
                    r = c.post("/v1/backups", json={"data_id": data_id}, headers={"Idempotency-Key": key})
                except httpx.HTTPError:
                    return
                assert r.status_code == 202, r.text
                accepted[key] = r.json()["id"]
                del unanswered[key]
                time.sleep(rng.uniform(0.0, 0.4))

    errors: list[BaseException] = []

    def guarded(*args: Any) -> None:
        try:
            submit(*args)
        except BaseException as exc:  # an assertion in the client thread fails the test
            errors.append(exc)

    def retry_unanswered(c: httpx.Client) -> None:
        for key, data_id in list(unanswered.items()):
            r = c.post("/v1/backups", json={"data_id": data_id}, headers={"Idempotency-Key": key})
            assert r.status_code == 202, r.text
            accepted[key] = r.json()["id"]
            del unanswered[key]

    started = time.monotonic()
    kills = 0
    rounds = 0
    # at least ROUNDS rounds, and on (one backup a round) until a due time of the every-minute schedule
    # yielded a job; run-now first in the first two rounds only (a due time while s1 has a job queued or
    # running is skipped)
    while rounds < ROUNDS or not _scheduled_jobs(db):
        assert time.monotonic() - started < 300, "no due time of the every-minute schedule after 300 s"
        server = serve_factory(config, env=token_env()).start()
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=5) as c:
            retry_unanswered(c)
        t = threading.Thread(target=guarded, args=(server.url, JOBS_PER_ROUND if rounds < ROUNDS else 1, rounds < 2),
                             daemon=True)
        t.start()
        time.sleep(rng.uniform(0.2, 3.0))  # kill at a random moment: mid-request, mid-job, idle
        server.kill9()
        kills += 1
        t.join(10)
        assert not t.is_alive() and not errors, errors
        rounds += 1

    # drain
    server = serve_factory(config, env=token_env()).start()
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        retry_unanswered(c)
        deadline = time.monotonic() + 240  # a bound for a loaded machine, not a speed test
        while True:
            jobs = c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
            if all(j["state"] in ("done", "failed") for j in jobs):
                break
            assert time.monotonic() < deadline, [(j["id"], j["state"]) for j in jobs if j["state"] not in ("done", "failed")]
            time.sleep(0.2)
    assert server.stop() == 0
    elapsed = time.monotonic() - started

    by_id = {j["id"]: j for j in jobs}
    assert len(accepted) >= ROUNDS * JOBS_PER_ROUND // 2, accepted
    # every accepted job ended, done or failed with a reason
    for job_id in [*accepted.values(), *run_now]:
        job = by_id[job_id]
        assert job["state"] in ("done", "failed"), job
        if job["state"] == "failed":
            assert job["error"] and job["error"]["message"], job
    assert not unanswered

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    interrupted = con.execute("SELECT count(*) FROM service_attempts WHERE outcome = 'interrupted'").fetchone()[0]
    assert interrupted >= 1, "no kill landed while a job's child process ran"
    rows = [dict(r) for r in con.execute("SELECT * FROM service_jobs")]
    runs = [dict(r) for r in con.execute("SELECT * FROM schedule_runs WHERE data_id = ? ORDER BY due_at", (SCHEDULED,))]
    con.close()
    assert len(rows) == len(jobs)  # every job of the database is in the (ended) list
    # no duplicates: one job per Idempotency-Key, and the keys are exactly the accepted ones
    keys = [r["idempotency_key"] for r in rows if r["idempotency_key"] is not None]
    assert sorted(keys) == sorted(accepted), "a job was duplicated or made without being accepted"
    assert {r["id"] for r in rows if r["idempotency_key"]} == set(accepted.values())
    # every job is one we know: an accepted backup, a run-now, or a due time's
    scheduled = [r for r in rows if r["trigger"] == "schedule"]
    assert {r["id"] for r in rows} == set(accepted.values()) | run_now | {r["id"] for r in scheduled}
    # each due time has exactly one row, each 'job' row exactly its one job
    assert scheduled, "no due time yielded a job"
    assert len({r["due_at"] for r in runs}) == len(runs)
    job_runs = [r for r in runs if r["outcome"] == "job"]
    assert sorted(r["job_id"] for r in job_runs) == sorted(r["id"] for r in scheduled)
    for r in job_runs:
        assert [j["id"] for j in scheduled if j["due_at"] == r["due_at"]] == [r["job_id"]]
    # due times are consecutive minutes, each missed one counted by the next row (coalesced), none twice
    for before, after in zip(runs, runs[1:]):
        gap = int((parse(after["due_at"]) - parse(before["due_at"])) / timedelta(minutes=1))
        assert gap >= 1 and after["coalesced"] == gap - 1, (before, after)
    for r in runs:
        assert parse(r["due_at"]).second == 0
    # nothing left behind
    for data_id in (*DATASETS, SCHEDULED):
        assert cli(config, "lock", "list", data_id) == [], data_id
    status = cli(config, "status")
    assert status["unavailable"] == [], status
    states = [by_id[j]["state"] for j in accepted.values()]
    print(f"{rounds} rounds, {kills} kills ({interrupted} while a job ran), {len(accepted)} accepted backups ({states.count('done')} done), "
          f"{len(run_now)} run-now, {len(scheduled)} scheduled, {len(runs)} due times, {elapsed:.1f} s")


def _scheduled_jobs(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM schedule_runs WHERE outcome = 'job'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()
