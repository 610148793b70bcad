"""The sqlite source where it waits or fails: ``busy_timeout`` against a lock held for a while or for too long,
a restored copy that fails ``PRAGMA integrity_check``, and the restore's error paths (staging not creatable,
not writable, not installable, target locked). Each failure is one line, leaves the target as it was and no
staging copy beside it."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from data_manager.api import DataManager
from data_manager.builtin.sqlite import DB
from data_manager.errors import CorruptBackupError, SourceError
from tests.helpers import make_sqlite, replace_artifact, sqlite_rows


def manager(tmp_path: Path, db: Path, **extra: object) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "db", "type": "sqlite", "path": str(db), **extra}]}},
    })


def beside(db: Path) -> list[str]:
    """Staging copies (and their -wal/-shm) next to the target."""
    return sorted(p.name for p in db.parent.iterdir() if p.name.startswith(f".{db.name}"))


@contextmanager
def exclusive_lock(db: Path, hold: float) -> Iterator[threading.Event]:
    """Another process's writer: an EXCLUSIVE lock on ``db`` (rollback mode: readers wait too), released
    after ``hold`` seconds or when the yielded event is set."""
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        try:
            con.execute("BEGIN EXCLUSIVE")
            con.execute("UPDATE t SET name = 'held' WHERE id = 0")
            locked.set()
            release.wait(hold)
            con.execute("ROLLBACK")
        finally:
            con.close()

    t = threading.Thread(target=hold_lock)
    t.start()
    try:
        assert locked.wait(10)
        yield release
    finally:
        release.set()
        t.join()


# ------------------------------------------------------------------ busy_timeout


def test_backup_waits_for_a_lock_held_less_than_busy_timeout(tmp_path: Path) -> None:
    """Kills ``timeout=self.busy_timeout`` becoming 0 or the setting being ignored in favour of an
    immediate failure: the backup waits for the writer and succeeds."""
    db = make_sqlite(tmp_path / "x.db", rows=50)
    rows = sqlite_rows(db)
    dm = manager(tmp_path, db, busy_timeout=5)
    with exclusive_lock(db, hold=0.5):
        started = time.monotonic()
        dm.backup("d")
        waited = time.monotonic() - started
    assert waited >= 0.4  # it did wait for the lock
    out = tmp_path / "out.db"
    dm.restore("d", overrides={"db": {"path": str(out)}})
    assert sqlite_rows(out) == rows  # the writer's rolled-back change is not in it


def test_a_lock_held_past_busy_timeout_is_one_error_line_exit_1(tmp_path: Path) -> None:
    """busy_timeout = 1 against a lock held 4 s: the backup fails after about a second, not after sqlite3's
    default 5 s nor the source's default 30 s (kills ``timeout=`` dropped and the ``"busy_timeout"`` key
    mutated), with one line naming the source, the file and the lock; exit code 1 (a source error)."""
    db = make_sqlite(tmp_path / "x.db", rows=50)
    root = tmp_path / "backups"
    config = tmp_path / "dm.toml"
    config.write_text(
        f'[storages.local]\ntype = "filesystem"\nroot = "{root}"\n\n'
        f'[[datasets.d.sources]]\nname = "db"\ntype = "sqlite"\npath = "{db}"\nbusy_timeout = 1\n'
    )
    from data_manager.cli import main

    with exclusive_lock(db, hold=4.0):
        started = time.monotonic()
        result = CliRunner().invoke(main, ["--config", str(config), "backup", "d"])
        elapsed = time.monotonic() - started
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert 0.9 <= elapsed < 3.5, elapsed
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("data-manager: error:")]
    assert len(errors) == 1, result.stderr
    assert f"source 'db': {db} stayed locked by another connection longer than busy_timeout" in errors[0], errors[0]
    assert list(root.glob("d/*/backup.json")) == []


# ------------------------------------------------------------------ integrity_check


def inconsistent_database(path: Path) -> bytes:
    """A database that opens and reads, but whose index does not match its table (integrity_check fails with
    'row N missing from index i')."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("CREATE INDEX i ON t(id)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(200)])
    con.execute("PRAGMA writable_schema=ON")
    con.execute("UPDATE sqlite_master SET sql = 'CREATE INDEX i ON t(name)' WHERE name = 'i'")
    con.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
    assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 200  # but it opens and reads
    check.close()
    return path.read_bytes()


@pytest.mark.parametrize("existing", [True, False], ids=["over-a-target", "new-target"])
def test_a_copy_failing_integrity_check_is_refused_and_the_target_kept(tmp_path: Path, existing: bool) -> None:
    """Kills the integrity check dropped or its result ignored (the damaged copy would be installed), and
    its message changed. A crafted backup (digests recorded for the damaged file) so only integrity_check
    can tell."""
    db = make_sqlite(tmp_path / "x.db", rows=20)
    dm = manager(tmp_path, db)
    ts = dm.backup("d").timestamp
    replace_artifact(tmp_path / "backups" / "d" / ts, "db", DB, inconsistent_database(tmp_path / "bad.sqlite"))
    target = db if existing else tmp_path / "new" / "y.db"
    before = db.read_bytes()
    with pytest.raises(CorruptBackupError) as info:
        dm.restore("d", overrides={} if existing else {"db": {"path": str(target)}})
    message = str(info.value)
    assert message == "source 'db': restored database fails integrity_check: row 1 missing from index i"
    assert exit_code(info.value) == 4
    assert db.read_bytes() == before
    assert target.exists() is existing
    assert beside(target) == []


def exit_code(exc: BaseException) -> int:
    return int(getattr(exc, "exit_code"))


# ------------------------------------------------------------------ restore errors


def backed_up(tmp_path: Path) -> tuple[DataManager, Path, bytes]:
    db = make_sqlite(tmp_path / "x.db", rows=200)
    dm = manager(tmp_path, db, busy_timeout=0)
    dm.backup("d")
    con = sqlite3.connect(db)
    con.execute("DELETE FROM t WHERE id >= 100")
    con.commit()
    con.close()
    return dm, db, db.read_bytes()


def test_staging_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills the ``cannot create`` message mutated or the OSError left as a traceback."""
    dm, db, before = backed_up(tmp_path)
    real = os.open

    def refuse(path: object, *args: object, **kw: object) -> int:
        if ".dm-restore-" in os.fspath(path):  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(SourceError, match=rf"^source 'db': cannot create {tmp_path}/\.x\.db\.dm-restore-[0-9a-f]{{8}}: "
                                          r"Permission denied$"):
        dm.restore("d")
    assert db.read_bytes() == before and beside(db) == []


def test_a_full_disk_while_writing_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills the ``cannot write`` message mutated, and the ``finally`` that removes the half-written staging
    copy dropped."""
    dm, db, before = backed_up(tmp_path)
    real = shutil.copyfileobj

    def fill_up(src: object, dst: object, length: int = 0) -> None:
        dst.write(src.read(4096))  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", fill_up)
    with pytest.raises(SourceError, match=rf"^source 'db': cannot write {tmp_path}/\.x\.db\.dm-restore-[0-9a-f]{{8}}: "
                                          r"No space left on device$"):
        dm.restore("d")
    assert db.read_bytes() == before and beside(db) == []
    monkeypatch.setattr(shutil, "copyfileobj", real)
    dm.restore("d")
    assert len(sqlite_rows(db)) == 200 and beside(db) == []


def test_a_new_target_that_cannot_be_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills the ``cannot install`` message mutated, and the staging copy left when the rename fails."""
    dm, db, _ = backed_up(tmp_path)
    new = tmp_path / "new" / "y.db"
    real = os.rename

    def refuse(a: object, b: object, *args: object, **kw: object) -> None:
        if os.fspath(b) == str(new):  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied")
        real(a, b, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(SourceError) as info:
        dm.restore("d", overrides={"db": {"path": str(new)}})
    assert str(info.value) == f"source 'db': cannot install the restored database at {new}: Permission denied"
    assert not new.exists() and beside(new) == []


def test_a_target_locked_longer_than_busy_timeout_fails_the_restore(tmp_path: Path) -> None:
    """Documented: ``busy_timeout``, seconds to wait for locks. A restore over a target a writer holds longer
    than that should fail with one line and leave the target as it was."""
    db = make_sqlite(tmp_path / "x.db", rows=200)
    dm = manager(tmp_path, db, busy_timeout=1)
    dm.backup("d")
    con = sqlite3.connect(db)
    con.execute("DELETE FROM t WHERE id >= 100")
    con.commit()
    con.close()
    before = db.read_bytes()
    with exclusive_lock(db, hold=4.0):
        started = time.monotonic()
        with pytest.raises(SourceError, match=f"^source 'db': cannot write {db}: database is locked$"):
            dm.restore("d")
        assert time.monotonic() - started < 3.5
    assert db.read_bytes() == before and beside(db) == []


def test_a_restore_waits_for_a_target_lock_held_less_than_busy_timeout(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "x.db", rows=200)
    dm = manager(tmp_path, db, busy_timeout=10)
    dm.backup("d")
    rows = sqlite_rows(db)
    con = sqlite3.connect(db)
    con.execute("DELETE FROM t WHERE id >= 100")
    con.commit()
    con.close()
    with exclusive_lock(db, hold=1.5):
        started = time.monotonic()
        dm.restore("d")
        assert time.monotonic() - started >= 1.0  # it waited for the writer
    assert sqlite_rows(db) == rows and beside(db) == []


def test_a_target_that_is_not_a_database_is_left_alone(tmp_path: Path) -> None:
    """The online backup into an existing file that is not a database fails (SQLite will not overwrite it):
    one line, the file untouched, no staging left. Kills the ``cannot write {target}`` message mutated and
    the sqlite3.Error escaping as a traceback."""
    dm, db, _ = backed_up(tmp_path)
    junk = os.urandom(8192)
    db.write_bytes(junk)
    with pytest.raises(SourceError) as info:
        dm.restore("d")
    assert str(info.value) == f"source 'db': cannot write {db}: file is not a database"
    assert db.read_bytes() == junk and beside(db) == []
