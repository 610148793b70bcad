"""The state database keeps secrets out, is readable by its owner only, and may be created by two processes at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from data_manager.engines.dedup.cache import IndexCache
from data_manager.jobs import FAILED, Recorder, StateDB
from data_manager.scrub import add_secrets

SECRET = "tok-9f8e7d6c5b4a"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_private_with_its_directory_and_journal(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "new" / "state.db")
    db.create_job("backup", "d", [("a", "directory")])
    assert mode(db.path) == 0o600
    assert mode(db.path.parent) == 0o700
    # WAL mode, so the API's reads never wait for a job's commit; SQLite gives the WAL files the database
    # file's mode: look at them while a write is open.
    con = sqlite3.connect(db.path, isolation_level=None)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE jobs SET bytes = 1")
        for suffix in ("-wal", "-shm"):
            journal = Path(f"{db.path}{suffix}")
            assert journal.exists() and mode(journal) == 0o600
    finally:
        con.execute("ROLLBACK")
        con.close()


def test_a_read_waits_for_no_commit(tmp_path: Path) -> None:
    """A reader reads the last committed state while another connection holds the write lock mid-commit."""
    db = StateDB(tmp_path / "state.db")
    job = db.create_job("backup", "d", [("a", "directory")])
    writer = sqlite3.connect(db.path, isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("UPDATE jobs SET bytes = 7")
        found = db.job(job.id)  # with the rollback journal this would wait for the busy timeout (30 s)
        assert found is not None and found.bytes == 0
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    StateDB(tmp_path / "state.db").create_job("backup", "d", [])
    assert mode(tmp_path) == 0o755 and mode(tmp_path / "state.db") == 0o600


def test_errors_are_stored_scrubbed(tmp_path: Path) -> None:
    add_secrets([SECRET])
    db = StateDB(tmp_path / "state.db")
    job = db.create_job("backup", "d", [("a", "directory"), ("b", "directory")])
    rec = Recorder(db, job)
    rec.start("20240101T000000Z")
    rec.task_failed("a", f"cannot log in with {SECRET}")
    rec.task_done("b", 1, f"note {SECRET}")
    rec.release_failed(f"guard said {SECRET}; also http://u:urlpass@host/")
    rec.finish(f"failed with {SECRET}")
    other = db.create_job("restore", "d", [("a", "directory")])
    Recorder(db, other).task_started("a")
    db.finish_job(other.id, FAILED, f"stopped: {SECRET}")

    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert SECRET.encode() not in data and b"urlpass" not in data, path
    stored = db.job(job.id)
    assert stored is not None
    assert stored.error == "failed with ***"
    assert stored.release_error == "guard said ***; also http://u:***@host/"
    assert [t.error for t in stored.tasks] == ["cannot log in with ***", "note ***"]
    assert db.unavailable()[0].error == stored.release_error
    other_stored = db.job(other.id)
    assert other_stored is not None and other_stored.tasks[0].error == "stopped: ***"


def _open_at(path: str, kind: str, start: float, out: Any) -> None:
    while time.time() < start:  # both processes open the new database at the same moment
        pass
    try:
        if kind == "state":
            StateDB(Path(path)).create_job("backup", "d", [("a", "directory")])
        else:
            IndexCache(Path(path)).close()
        out.put("ok")
    except Exception as exc:  # the assertion shows it
        out.put(repr(exc))


@pytest.mark.parametrize("kind", ["state", "dedup cache"])
def test_two_processes_creating_the_database_at_once_both_succeed(tmp_path: Path, kind: str) -> None:
    """Switching a new database to WAL needs it alone and SQLite does not wait for that: without retries one
    of two backups started together on a fresh machine failed ("database is locked") in 13 of 20 tries."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    for i in range(8):
        path = tmp_path / str(i) / ("state.db" if kind == "state" else "cache")
        start = time.time() + 0.1
        procs = [ctx.Process(target=_open_at, args=(str(path), kind, start, out)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [out.get(timeout=5), out.get(timeout=5)] == ["ok", "ok"], i
