"""Jobs: every backup and restore is recorded in a local state database, with one task per source.

The database (SQLite) holds what ``data-manager status`` shows: running and recent jobs, their tasks, and
the datasets this machine marked unavailable in other systems (or failed to mark available again). It is
local bookkeeping, never needed to restore: the storage and its metadata are the truth about backups.

Path: ``$DATA_MANAGER_STATE``, else ``[state] path`` in the config, else
``$XDG_STATE_HOME/data-manager/state.db`` (``~/.local/state/...``). Each write opens its own short
connection (several processes may share one database; SQLite's busy timeout serialises writers); reads
use a connection kept per thread (:func:`state_read`).

Errors are stored scrubbed of secrets (:func:`data_manager.scrub.scrub`), and a database we create is
readable by its owner only (mode 0600, its directory 0700; SQLite gives its WAL files the same mode).

This module also holds the job watchdog (timeouts) and the duration parser shared by the config tables.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import units
from .durable import use_wal
from .errors import ConfigError, DataManagerError
from .timestamps import iso, now_utc
from .scrub import scrub

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
UNAVAILABLE, RELEASE_FAILED = "unavailable", "release_failed"
DEFAULT_TIMEOUT = 6 * 3600.0
RECENT = 10



def parse_duration(value: Any, where: str, key: str) -> float:
    """A duration from the config or the command line (see :func:`data_manager.units.parse_duration`), or a
    ConfigError naming ``where`` and ``key``."""
    seconds = units.parse_duration(value)
    if seconds is None:
        raise ConfigError(f"{where}: key {key!r}: must be {units.DURATION_HINT}, not {value!r}", key=key)
    return seconds


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def default_state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "data-manager" / "state.db"


def state_path(config: Mapping[str, Any], file: str = "<config>") -> Path:
    """Where the state database is: ``$DATA_MANAGER_STATE``, ``[state] path``, or the default."""
    env = os.environ.get("DATA_MANAGER_STATE")
    if env:
        return Path(env).expanduser()
    table = config.get("state", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: key 'state': must be a table", key="state")
    unknown = sorted(set(table) - {"path"})
    if unknown:
        raise ConfigError(f"{file}: [state]: key {unknown[0]!r}: unknown (known: path)", key=unknown[0])
    if "path" in table:
        if not isinstance(table["path"], str) or not table["path"]:
            raise ConfigError(f"{file}: [state]: key 'path': must be a file path", key="path")
        return Path(os.path.expandvars(table["path"])).expanduser()
    return default_state_path()


# --------------------------------------------------------------------------- records


@dataclass
class Task:
    """One source of a job."""

    job_id: str
    source: str
    type: str
    state: str = PENDING
    started_at: str | None = None
    ended_at: str | None = None
    bytes: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Job:
    """One backup or restore of one dataset, as recorded in the state database."""

    id: str
    kind: str  # backup | restore
    data_id: str
    state: str
    host: str
    pid: int
    created_at: str
    started_at: str | None = None
    ended_at: str | None = None
    backup: str | None = None  # the TIMESTAMP written or restored
    bytes: int = 0
    error: str | None = None
    release_error: str | None = None
    tasks: list[Task] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "tasks"}, "tasks": [t.to_json() for t in self.tasks]}


@dataclass
class Availability:
    """A dataset this machine marked unavailable in other systems, or failed to mark available again."""

    data_id: str
    state: str  # unavailable | release_failed
    job_id: str
    since: str
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    data_id TEXT NOT NULL,
    state TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    backup TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    release_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_at);
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    source TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    PRIMARY KEY (job_id, source)
);
CREATE TABLE IF NOT EXISTS availability (
    data_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    job_id TEXT NOT NULL,
    since TEXT NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS verifies (
    location TEXT NOT NULL,
    data_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    verified_at TEXT NOT NULL,
    sample REAL,
    PRIMARY KEY (location, data_id, timestamp)
);
"""
# 2 added ``verifies`` (the last successful verify of each backup): a version-1 database gets the table on
# its next open, as every table is created IF NOT EXISTS.
_VERSION = 2
_ERRORS = ("error", "release_error")  # the columns that hold free text from sources, storages and plugins


def new_job_id() -> str:
    return secrets.token_hex(6)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def state_transaction(path: Path, prepare: Callable[[sqlite3.Connection], None] | None = None,
                      immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction on the state database at ``path`` (a deferred ``BEGIN`` when not
    ``immediate``: for reads): committed when the block ends, rolled back on any error; SQLite's errors as
    one :class:`DataManagerError` line naming the file.

    The database is switched to WAL mode once (the mode stays in the file), unless it lies on a network
    filesystem, where SQLite's shared memory index does not work: readers then read a snapshot and never
    wait for a writer's commit, whose fsyncs queue behind the backups' own writes on a busy disk (measured
    with 4 writers and 4 readers while a disk hog wrote: reads p99 6-43 ms in WAL mode, 34-434 ms with the
    rollback journal). Commits stay ``synchronous = FULL``: durable when they return.

    ``prepare(con)`` (a schema, a version check) runs before the transaction; when it is given, the directory
    (0700) and the file (0600) are created first if missing: SQLite would create the file with the umask's
    mode, and its journal copies the file's mode. Shared by the core's jobs and the service's tables.
    """
    try:
        if prepare is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:  # O_EXCL: never an fd of our own on an existing database, whose close would drop every
                # POSIX lock this process's SQLite connections hold on it (in WAL mode another process's
                # last close would then delete the WAL under them: "disk I/O error")
                os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        con = sqlite3.connect(path, timeout=30, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise DataManagerError(f"state database {path}: cannot open: {exc}") from None
    try:
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys = ON")
        if prepare is not None:
            use_wal(con, path)
            prepare(con)
        con.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        yield con
        con.execute("COMMIT")
    except sqlite3.Error as exc:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise DataManagerError(f"state database {path}: {exc}") from None
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()


class _Readers(threading.local):
    """This thread's open read connections, by database path, with the file's (device, inode) they opened."""

    def __init__(self) -> None:
        self.cons: dict[str, tuple[tuple[int, int], sqlite3.Connection]] = {}


_readers = _Readers()


@contextmanager
def state_read(path: Path) -> Iterator[sqlite3.Connection]:
    """A deferred read transaction on this thread's connection to ``path``, kept open between reads.

    Opening a connection costs more than the read (the file, then the schema parsed again at its first
    statement): the service answers each ``GET /v1/jobs/{id}`` with three reads, many times a second. A kept
    connection still sees every commit (SQLite checks the file at each ``BEGIN``); one to a file since
    replaced (another inode at ``path``) is opened again. Errors as :func:`state_transaction`'s."""
    key = str(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataManagerError(f"state database {path}: cannot open: {exc}") from None
    ident = (st.st_dev, st.st_ino)
    cached = _readers.cons.get(key)
    if cached is not None and cached[0] != ident:
        cached[1].close()
        cached = None
    if cached is None:
        try:
            con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise DataManagerError(f"state database {path}: cannot open: {exc}") from None
        con.row_factory = sqlite3.Row
        _readers.cons[key] = (ident, con)
    else:
        con = cached[1]
    try:
        con.execute("BEGIN")
        yield con
        con.execute("COMMIT")
    except sqlite3.Error as exc:
        _readers.cons.pop(key, None)
        con.close()  # rolls back; the next read opens afresh
        raise DataManagerError(f"state database {path}: {exc}") from None
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


class StateDB:
    """The local state database. A write opens, uses and closes one connection; reads reuse this thread's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False

    def _prepare(self, con: sqlite3.Connection) -> None:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > _VERSION:
            raise DataManagerError(f"state database {self.path} is from a newer data-manager (schema {version})")
        con.executescript(_SCHEMA)
        con.execute(f"PRAGMA user_version = {_VERSION}")
        self._ready = True

    def _db(self) -> Any:
        return state_transaction(self.path, None if self._ready else self._prepare)

    def _read(self) -> Any:
        """A deferred transaction for reads: readers share the database while job processes write (an
        ``IMMEDIATE`` one queued every read behind every progress update: the service's API latency), on
        this thread's kept connection once the schema is known to be there (:func:`state_read`)."""
        if self._ready:
            return state_read(self.path)
        return state_transaction(self.path, self._prepare, immediate=False)

    # -- writing

    def create_job(self, kind: str, data_id: str, sources: list[tuple[str, str]], job_id: str | None = None) -> Job:
        job = Job(job_id or new_job_id(), kind, data_id, PENDING, socket.gethostname(), os.getpid(), iso(now_utc()))
        job.tasks = [Task(job.id, name, type_) for name, type_ in sources]
        with self._db() as con:
            con.execute(
                "INSERT INTO jobs (id, kind, data_id, state, host, pid, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, kind, data_id, job.state, job.host, job.pid, job.created_at),
            )
            con.executemany(
                "INSERT INTO tasks (job_id, position, source, type, state) VALUES (?, ?, ?, ?, ?)",
                [(job.id, i, t.source, t.type, t.state) for i, t in enumerate(job.tasks)],
            )
        return job

    def update_job(self, job_id: str, **values: Any) -> None:
        values = {k: scrub(v) if k in _ERRORS else v for k, v in values.items()}
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._db() as con:
            con.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values.values(), job_id))

    def update_task(self, job_id: str, source: str, **values: Any) -> None:
        values = {k: scrub(v) if k in _ERRORS else v for k, v in values.items()}
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._db() as con:
            con.execute(f"UPDATE tasks SET {cols} WHERE job_id = ? AND source = ?", (*values.values(), job_id, source))

    def finish_job(self, job_id: str, state: str, error: str | None = None) -> None:
        """End a job; its tasks still pending or running end with it (failed, or done if the job is)."""
        now = iso(now_utc())
        error = scrub(error)
        with self._db() as con:
            con.execute(
                "UPDATE jobs SET state = ?, ended_at = ?, error = ?, "
                "bytes = (SELECT COALESCE(SUM(bytes), 0) FROM tasks WHERE job_id = ?) WHERE id = ?",
                (state, now, error, job_id, job_id),
            )
            if state == FAILED:
                con.execute(
                    "UPDATE tasks SET state = ?, ended_at = COALESCE(ended_at, ?), "
                    "error = COALESCE(error, CASE WHEN state = 'running' THEN ? ELSE 'not started' END) "
                    "WHERE job_id = ? AND state IN ('pending', 'running')",
                    (FAILED, now, error, job_id),
                )

    def set_unavailable(self, data_id: str, job_id: str) -> None:
        with self._db() as con:
            con.execute(
                "INSERT OR REPLACE INTO availability (data_id, state, job_id, since, error) VALUES (?, ?, ?, ?, NULL)",
                (data_id, UNAVAILABLE, job_id, iso(now_utc())),
            )

    def set_available(self, data_id: str, job_id: str) -> None:
        with self._db() as con:
            con.execute("DELETE FROM availability WHERE data_id = ?", (data_id,))

    def set_release_failed(self, data_id: str, job_id: str, error: str) -> None:
        error = scrub(error)
        with self._db() as con:
            con.execute(
                "INSERT OR REPLACE INTO availability (data_id, state, job_id, since, error) VALUES (?, ?, ?, ?, ?)",
                (data_id, RELEASE_FAILED, job_id, iso(now_utc()), error),
            )
            con.execute("UPDATE jobs SET release_error = ? WHERE id = ?", (error, job_id))

    def reap(self) -> list[str]:
        """Jobs recorded as running on this host whose process is gone (kill -9, power loss): mark them failed."""
        if not self.path.exists():
            return []
        host = socket.gethostname()
        with self._db() as con:
            rows = con.execute(
                "SELECT id, pid FROM jobs WHERE host = ? AND state IN ('pending', 'running')", (host,)
            ).fetchall()
        dead = [r["id"] for r in rows if r["pid"] != os.getpid() and not pid_alive(r["pid"])]
        for job_id in dead:
            self.finish_job(job_id, FAILED, "the process ended without finishing the job (killed?)")
        return dead

    # -- reading

    def _jobs(self, con: sqlite3.Connection, where: str, args: tuple[Any, ...], limit: int | None) -> list[Job]:
        sql = f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC" + (f" LIMIT {int(limit)}" if limit else "")
        jobs = [Job(**dict(r)) for r in con.execute(sql, args).fetchall()]
        for job in jobs:
            job.tasks = [
                Task(**{k: r[k] for k in r.keys() if k != "position"})
                for r in con.execute("SELECT * FROM tasks WHERE job_id = ? ORDER BY position", (job.id,)).fetchall()
            ]
        return jobs

    def job(self, job_id: str) -> Job | None:
        if not self.path.exists():
            return None
        with self._read() as con:
            found = self._jobs(con, "WHERE id = ?", (job_id,), 1)
        return found[0] if found else None

    def jobs(self, *, data_id: str | None = None, running: bool | None = None, limit: int | None = RECENT) -> list[Job]:
        if not self.path.exists():
            return []
        clauses, args = [], []
        if data_id is not None:
            clauses.append("data_id = ?")
            args.append(data_id)
        if running is not None:
            clauses.append(("" if running else "NOT ") + "state IN ('pending', 'running')")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._read() as con:
            return self._jobs(con, where, tuple(args), limit)

    def record_verify(self, location: str, data_id: str, timestamp: str, sample: float | None = None) -> None:
        """A verify of ``data_id/timestamp`` in the storage at ``location`` succeeded now (``sample``: the
        fraction of bytes read, None for all of them)."""
        with self._db() as con:
            con.execute(
                "INSERT OR REPLACE INTO verifies (location, data_id, timestamp, verified_at, sample) VALUES (?, ?, ?, ?, ?)",
                (location, data_id, timestamp, iso(now_utc()), sample),
            )

    def verifies(self, location: str, data_id: str) -> dict[str, tuple[str, float | None]]:
        """TIMESTAMP -> (time of its last successful verify, sample fraction or None) for one dataset."""
        if not self.path.exists():
            return {}
        with self._read() as con:
            rows = con.execute(
                "SELECT timestamp, verified_at, sample FROM verifies WHERE location = ? AND data_id = ?", (location, data_id)
            ).fetchall()
        return {r["timestamp"]: (r["verified_at"], r["sample"]) for r in rows}

    def unavailable(self) -> list[Availability]:
        if not self.path.exists():
            return []
        with self._read() as con:
            return [Availability(**dict(r)) for r in con.execute("SELECT * FROM availability ORDER BY data_id")]


class Recorder:
    """Writes one job's progress to the state database; a bookkeeping failure never fails the job itself."""

    def __init__(self, db: StateDB, job: Job) -> None:
        self.db = db
        self.job = job
        self._warned = False

    def _safe(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except DataManagerError as exc:
            if not self._warned:
                log.warning("job %s: cannot record progress: %s", self.job.id, exc)
                self._warned = True

    def start(self, backup: str | None = None) -> None:
        self.job.state, self.job.backup = RUNNING, backup
        self.job.started_at = iso(now_utc())
        self._safe(self.db.update_job, self.job.id, state=RUNNING, started_at=self.job.started_at, backup=backup)

    def set_backup(self, backup: str) -> None:
        self.job.backup = backup
        self._safe(self.db.update_job, self.job.id, backup=backup)

    def task_started(self, source: str) -> None:
        self._safe(self.db.update_task, self.job.id, source, state=RUNNING, started_at=iso(now_utc()))

    def task_done(self, source: str, nbytes: int, note: str | None = None) -> None:
        now = iso(now_utc())
        self._safe(self.db.update_task, self.job.id, source, state=DONE, ended_at=now, bytes=nbytes, error=note)

    def task_failed(self, source: str, error: str) -> None:
        self._safe(self.db.update_task, self.job.id, source, state=FAILED, ended_at=iso(now_utc()), error=error)

    def finish(self, error: str | None) -> None:
        self.job.state = FAILED if error else DONE
        self.job.error = error
        self._safe(self.db.finish_job, self.job.id, self.job.state, error)

    def unavailable(self) -> None:
        self._safe(self.db.set_unavailable, self.job.data_id, self.job.id)

    def available(self) -> None:
        self._safe(self.db.set_available, self.job.data_id, self.job.id)

    def release_failed(self, error: str) -> None:
        self.job.release_error = error
        self._safe(self.db.set_release_failed, self.job.data_id, self.job.id, error)


# --------------------------------------------------------------------------- timeouts


class JobTimeoutError(DataManagerError):
    """A job ran longer than its limit and was stopped."""


class Watchdog:
    """Stops a job that runs past its limit.

    Two ways, so a stuck source is stopped wherever the job runs: :meth:`check` (called as data moves)
    raises :class:`JobTimeoutError` in the job's own thread; and when the job runs in the main thread with
    Python's default Ctrl-C handler, a timer sends SIGINT to the main thread as Ctrl-C would (this also
    stops a source blocked in sleep, select or a socket read; a C library that retries on EINTR is only
    stopped when it returns). The job turns that interruption into the timeout error.
    """

    def __init__(self, limit: float, what: str) -> None:
        self.limit = limit
        self.what = what
        self.fired = False
        self._deadline = time.monotonic() + limit
        self._lock = threading.Lock()
        self._armed = True
        self._timer: threading.Timer | None = None
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._timer = threading.Timer(limit, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def error(self) -> JobTimeoutError:
        return JobTimeoutError(f"{self.what} stopped: it ran longer than its limit of {format_duration(self.limit)}")

    def _fire(self) -> None:
        with self._lock:
            if self._armed:
                self.fired = True
                log.error("%s: time limit of %s reached, stopping it", self.what, format_duration(self.limit))
                # A real SIGINT to the main thread (not _thread.interrupt_main, which only sets a flag): it
                # also wakes a main thread blocked in sleep, select or a socket read.
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def check(self) -> None:
        if self._armed and time.monotonic() >= self._deadline:
            self.fired = True
            raise self.error()

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
        if self._timer is not None:
            self._timer.cancel()
