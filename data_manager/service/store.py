"""The service's records, in tables of its own in the state database (beside the core's ``jobs``, ``tasks``,
``availability`` and ``verifies``, which the job processes write as every CLI run does).

| table | what |
|---|---|
| ``service_jobs`` | a job the service accepted: kind, dataset, parameters, state (pending/running/done/failed/cancelled), why it was started (api, schedule, run-now), its due time, the ``Idempotency-Key`` it came with, retry counters, result and error |
| ``service_attempts`` | each run of a job: a child process (pid), the core job it recorded (``core_job_id``), ``--resume`` or not, outcome (done/failed/refused/interrupted/cancelled), exit code, error |
| ``service_events`` | the events served as server-sent events; the id is the event id (monotonic across restarts) |
| ``schedule_runs`` | one row per due time acted on (``PRIMARY KEY (data_id, due_at)``): the job it yielded, or why none (skipped, paused), and how many missed due times it coalesced |
| ``schedule_state`` | per dataset: the last due time acted on, and a pause set through the API |

A job and its due time are inserted in one transaction, so a due time yields exactly one job also when the
service is killed at any moment. Like :class:`data_manager.jobs.StateDB`, every method opens one short
connection (SQLite's busy timeout serialises the job processes and the service); errors are scrubbed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ..jobs import new_job_id, state_read, state_transaction
from ..scrub import scrub
from ..timestamps import iso, now_utc

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
ACTIVE = (PENDING, RUNNING)
STATES = (PENDING, RUNNING, DONE, FAILED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS service_jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    data_id TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    trigger TEXT NOT NULL,
    due_at TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    next_attempt_at TEXT,
    resume INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    refusals INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    backup TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_code TEXT,
    exit_code INTEGER
);
CREATE INDEX IF NOT EXISTS service_jobs_by_state ON service_jobs (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS service_jobs_by_data ON service_jobs (data_id, created_at);
CREATE TABLE IF NOT EXISTS service_attempts (
    job_id TEXT NOT NULL REFERENCES service_jobs (id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    pid INTEGER,
    core_job_id TEXT,
    resume INTEGER NOT NULL DEFAULT 0,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    outcome TEXT,
    exit_code INTEGER,
    error TEXT,
    PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS service_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    type TEXT NOT NULL,
    job_id TEXT,
    data_id TEXT,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_runs (
    data_id TEXT NOT NULL,
    due_at TEXT NOT NULL,
    job_id TEXT,
    outcome TEXT NOT NULL,
    coalesced INTEGER NOT NULL DEFAULT 0,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (data_id, due_at)
);
CREATE TABLE IF NOT EXISTS schedule_state (
    data_id TEXT PRIMARY KEY,
    last_due TEXT,
    paused INTEGER
);
"""

_JSON_COLUMNS = ("params",)


def _row(r: sqlite3.Row | None) -> dict[str, Any] | None:
    if r is None:
        return None
    out = dict(r)
    for k in _JSON_COLUMNS:
        if k in out and isinstance(out[k], str):
            out[k] = json.loads(out[k])
    return out


class Store:
    """The service's tables in the state database at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False
        self._local = threading.local()

    def _prepare(self, con: sqlite3.Connection) -> None:
        con.executescript(_SCHEMA)
        self._ready = True

    def db(self) -> Any:
        """One transaction on the service's tables (:func:`data_manager.jobs.state_transaction`), or the
        open one of :meth:`batch` on this thread."""
        con = getattr(self._local, "con", None)
        if con is not None:
            return nullcontext(con)
        return state_transaction(self.path, None if self._ready else self._prepare)

    def read(self) -> Any:
        """A read-only transaction: deferred, so readers share the database instead of queueing for its
        write lock one after the other (the API's reads while job processes commit)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            return nullcontext(con)
        if self._ready:
            return state_read(self.path)  # this thread's kept connection
        return state_transaction(self.path, self._prepare, immediate=False)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every call of this thread inside the block shares one transaction, committed at its end (all or
        nothing). The scheduler acts on hundreds of due times at once: one commit instead of hundreds."""
        if getattr(self._local, "con", None) is not None:
            yield
            return
        with self.db() as con:
            self._local.con = con
            try:
                yield
            finally:
                self._local.con = None

    # ------------------------------------------------------------------ jobs

    def create_job(self, kind: str, data_id: str, params: dict[str, Any], trigger: str, *,
                   idempotency_key: str | None = None, request_hash: str | None = None,
                   due: tuple[str, int] | None = None, now: str | None = None) -> tuple[dict[str, Any] | None, bool]:
        """Accept a job. Returns ``(job, created)``: with an ``idempotency_key`` already used, the job it
        made and False. ``due=(due_at, coalesced)``: the schedule's due time this job is for, recorded in
        the same transaction; if that due time already has its row, ``(None, False)``."""
        now = now or iso(now_utc())
        job_id = new_job_id()
        with self.db() as con:
            if idempotency_key is not None:
                found = con.execute("SELECT * FROM service_jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if found is not None:
                    return _row(found), False
            if due is not None:
                if con.execute("SELECT 1 FROM schedule_runs WHERE data_id = ? AND due_at = ?", (data_id, due[0])).fetchone():
                    return None, False
                con.execute("INSERT INTO schedule_runs (data_id, due_at, job_id, outcome, coalesced, recorded_at) "
                            "VALUES (?, ?, ?, 'job', ?, ?)", (data_id, due[0], job_id, due[1], now))
                con.execute("INSERT INTO schedule_state (data_id, last_due) VALUES (?, ?) "
                            "ON CONFLICT (data_id) DO UPDATE SET last_due = excluded.last_due", (data_id, due[0]))
            con.execute(
                "INSERT INTO service_jobs (id, kind, data_id, state, params, trigger, due_at, idempotency_key, "
                "request_hash, created_at, next_attempt_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
                (job_id, kind, data_id, json.dumps(params), trigger, due[0] if due else None, idempotency_key,
                 request_hash, now, now),
            )
            return _row(con.execute("SELECT * FROM service_jobs WHERE id = ?", (job_id,)).fetchone()), True

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.read() as con:
            return _row(con.execute("SELECT * FROM service_jobs WHERE id = ?", (job_id,)).fetchone())

    def jobs(self, *, data_id: str | None = None, state: str | None = None, limit: int = 100,
             states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        clauses, args = [], []
        if data_id is not None:
            clauses.append("data_id = ?")
            args.append(data_id)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        if states:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        with self.read() as con:
            rows = con.execute(f"SELECT * FROM service_jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                               (*args, int(limit))).fetchall()
        return [r for r in map(_row, rows) if r is not None]

    def due_jobs(self, now: str) -> list[dict[str, Any]]:
        """Pending jobs whose (next) attempt may start now, oldest first."""
        with self.read() as con:
            rows = con.execute("SELECT * FROM service_jobs WHERE state = 'pending' AND next_attempt_at <= ? "
                               "ORDER BY created_at, rowid", (now,)).fetchall()
        return [r for r in map(_row, rows) if r is not None]

    def update_job(self, job_id: str, **values: Any) -> None:
        values = {k: scrub(v) if k == "error" else v for k, v in values.items()}
        cols = ", ".join(f"{k} = ?" for k in values)
        with self.db() as con:
            con.execute(f"UPDATE service_jobs SET {cols} WHERE id = ?", (*values.values(), job_id))

    def request_cancel(self, job_id: str, now: str) -> str | None:
        """Cancel a pending job at once (returns ``cancelled``), or flag a running one (``running``); None
        when the job has already ended."""
        with self.db() as con:
            row = con.execute("SELECT state FROM service_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] not in ACTIVE:
                return None
            if row["state"] == PENDING:
                con.execute("UPDATE service_jobs SET state = 'cancelled', ended_at = ?, error = 'cancelled', "
                            "error_code = 'cancelled', cancel_requested = 1 WHERE id = ?", (now, job_id))
                return CANCELLED
            con.execute("UPDATE service_jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return RUNNING

    def active(self, data_id: str) -> list[dict[str, Any]]:
        return self.jobs(data_id=data_id, states=ACTIVE)

    def counts(self) -> dict[str, int]:
        with self.read() as con:
            rows = con.execute("SELECT state, COUNT(*) AS n FROM service_jobs GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}

    def expire(self, keep_done: float, keep_failed: float, now: float) -> int:
        """Forget finished jobs: done ones ``keep_done`` seconds after they ended, failed and cancelled ones
        after ``keep_failed``. Returns how many were forgotten."""
        from datetime import datetime, timezone

        def before(seconds: float) -> str:
            return iso(datetime.fromtimestamp(now - seconds, timezone.utc))

        with self.db() as con:
            n = con.execute("DELETE FROM service_jobs WHERE state = 'done' AND ended_at < ?", (before(keep_done),)).rowcount
            n += con.execute("DELETE FROM service_jobs WHERE state IN ('failed', 'cancelled') AND ended_at < ?",
                             (before(keep_failed),)).rowcount
        return n

    # ------------------------------------------------------------------ attempts

    def start_attempt(self, job_id: str, pid: int, resume: bool, now: str) -> int:
        with self.db() as con:
            n = con.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM service_attempts WHERE job_id = ?", (job_id,)).fetchone()[0]
            con.execute("INSERT INTO service_attempts (job_id, n, pid, resume, started_at) VALUES (?, ?, ?, ?, ?)",
                        (job_id, n, pid, int(resume), now))
            con.execute("UPDATE service_jobs SET state = 'running', started_at = COALESCE(started_at, ?), "
                        "next_attempt_at = NULL WHERE id = ?", (now, job_id))
        return int(n)

    def update_attempt(self, job_id: str, n: int, **values: Any) -> None:
        values = {k: scrub(v) if k == "error" else v for k, v in values.items()}
        cols = ", ".join(f"{k} = ?" for k in values)
        with self.db() as con:
            con.execute(f"UPDATE service_attempts SET {cols} WHERE job_id = ? AND n = ?", (*values.values(), job_id, n))

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        with self.read() as con:
            rows = con.execute("SELECT * FROM service_attempts WHERE job_id = ? ORDER BY n", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    def open_attempts(self) -> list[dict[str, Any]]:
        """Attempts never ended (their job running): what a service killed left behind."""
        with self.read() as con:
            rows = con.execute("SELECT a.* FROM service_attempts a JOIN service_jobs j ON j.id = a.job_id "
                               "WHERE a.ended_at IS NULL OR j.state = 'running'").fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ the core's records

    def core_job_for_pid(self, pid: int, host: str) -> str | None:
        """The core job (``jobs`` table) the job process ``pid`` recorded, if it did yet."""
        with self.read() as con:
            try:
                row = con.execute("SELECT id FROM jobs WHERE pid = ? AND host = ? ORDER BY created_at DESC LIMIT 1",
                                  (pid, host)).fetchone()
            except sqlite3.OperationalError:  # no core table yet
                return None
        return row["id"] if row else None

    def last_good_backups(self) -> dict[str, tuple[str, str, int]]:
        """data_id -> (TIMESTAMP, ended_at, bytes) of its newest done backup job on this state database."""
        with self.read() as con:
            try:
                rows = con.execute(
                    "SELECT data_id, backup, ended_at, bytes FROM jobs j WHERE kind = 'backup' AND state = 'done' "
                    "AND ended_at = (SELECT MAX(ended_at) FROM jobs k WHERE k.kind = 'backup' AND k.state = 'done' "
                    "AND k.data_id = j.data_id)").fetchall()
            except sqlite3.OperationalError:
                return {}
        return {r["data_id"]: (r["backup"], r["ended_at"], r["bytes"]) for r in rows}

    # ------------------------------------------------------------------ events

    def add_event(self, type_: str, job_id: str | None, data_id: str | None, data: dict[str, Any], now: str) -> int:
        return self.add_events([(type_, job_id, data_id, data, now)])[0]

    def add_events(self, rows: list[tuple[str, str | None, str | None, dict[str, Any], str]]) -> list[int]:
        """Store events ``(type, job_id, data_id, data, at)`` in one transaction; their ids, in order."""
        ids = []
        with self.db() as con:
            for type_, job_id, data_id, data, now in rows:
                cur = con.execute("INSERT INTO service_events (at, type, job_id, data_id, data) VALUES (?, ?, ?, ?, ?)",
                                  (now, type_, job_id, data_id, scrub(json.dumps(data))))
                ids.append(int(cur.lastrowid or 0))
        return ids

    def events_after(self, after: int, *, job_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        where, args = "WHERE id > ?", [after]
        if job_id is not None:
            where += " AND job_id = ?"
            args.append(job_id)
        with self.read() as con:
            rows = con.execute(f"SELECT * FROM service_events {where} ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [dict(r) for r in rows]

    def last_event_id(self) -> int:
        with self.read() as con:
            return int(con.execute("SELECT COALESCE(MAX(id), 0) FROM service_events").fetchone()[0])

    def prune_events(self, keep: int) -> None:
        with self.db() as con:
            con.execute("DELETE FROM service_events WHERE id <= (SELECT MAX(id) FROM service_events) - ?", (keep,))

    # ------------------------------------------------------------------ schedules

    def schedule_state(self, data_id: str) -> dict[str, Any]:
        with self.read() as con:
            row = con.execute("SELECT * FROM schedule_state WHERE data_id = ?", (data_id,)).fetchone()
        return dict(row) if row else {"data_id": data_id, "last_due": None, "paused": None}

    def set_last_due(self, data_id: str, due_at: str) -> None:
        with self.db() as con:
            con.execute("INSERT INTO schedule_state (data_id, last_due) VALUES (?, ?) "
                        "ON CONFLICT (data_id) DO UPDATE SET last_due = excluded.last_due", (data_id, due_at))

    def set_paused(self, data_id: str, paused: bool | None) -> None:
        with self.db() as con:
            con.execute("INSERT INTO schedule_state (data_id, paused) VALUES (?, ?) "
                        "ON CONFLICT (data_id) DO UPDATE SET paused = excluded.paused",
                        (data_id, None if paused is None else int(paused)))

    def record_due(self, data_id: str, due_at: str, outcome: str, coalesced: int, now: str) -> bool:
        """A due time that yields no job (``skipped``: the dataset has a job queued or running; ``paused``).
        False if the due time already has its row."""
        with self.db() as con:
            if con.execute("SELECT 1 FROM schedule_runs WHERE data_id = ? AND due_at = ?", (data_id, due_at)).fetchone():
                return False
            con.execute("INSERT INTO schedule_runs (data_id, due_at, job_id, outcome, coalesced, recorded_at) "
                        "VALUES (?, ?, NULL, ?, ?, ?)", (data_id, due_at, outcome, coalesced, now))
            con.execute("INSERT INTO schedule_state (data_id, last_due) VALUES (?, ?) "
                        "ON CONFLICT (data_id) DO UPDATE SET last_due = excluded.last_due", (data_id, due_at))
        return True

    def runs(self, data_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.read() as con:
            rows = con.execute("SELECT * FROM schedule_runs WHERE data_id = ? ORDER BY due_at DESC LIMIT ?",
                               (data_id, limit)).fetchall()
        return [dict(r) for r in rows]
