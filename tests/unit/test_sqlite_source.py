import errno
import json
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import data_manager.builtin.sqlite as mod
from data_manager.api import DataManager
from data_manager.builtin.sqlite import DB, WAL, SqliteSource
from data_manager.errors import CorruptBackupError, SourceError
from data_manager.types import Settings
from tests.helpers import make_sqlite, replace_artifact, sqlite_rows


def manager(tmp_path: Path, db: Path) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "db", "type": "sqlite", "path": str(db)}]}},
    })


@pytest.mark.parametrize("wal", [False, True])
def test_round_trip(tmp_path: Path, wal: bool) -> None:
    db = make_sqlite(tmp_path / "x.db", wal=wal)
    rows = sqlite_rows(db)
    dm = manager(tmp_path, db)
    dm.backup("d")
    con = sqlite3.connect(db)
    con.execute("DELETE FROM t WHERE id > 10")
    con.commit()
    con.close()
    dm.restore("d")
    assert sqlite_rows(db) == rows
    fresh = tmp_path / "fresh" / "y.db"
    dm.restore("d", overrides={"db": {"path": str(fresh)}})
    assert sqlite_rows(fresh) == rows


class ProbingSink:
    """An :class:`~data_manager.types.ArtifactSink` that runs ``probe`` at the first write of the database
    file: that is, while the source copies it."""

    def __init__(self, probe: Callable[[], object]) -> None:
        self.probe = probe
        self.seen: list[object] = []
        self.written: dict[str, int] = {}
        self.info: dict[str, Any] = {}
        self.source_name = "db"

    def open(self, name: str, *, compression: str = "auto") -> Any:
        sink = self

        class Writer:
            digest = ""

            def write(self, data: bytes) -> int:
                if name == DB and not sink.seen:
                    sink.seen.append(sink.probe())
                sink.written[name] = sink.written.get(name, 0) + len(data)
                return len(data)

            def close(self) -> None:
                pass

            def abort(self) -> None:
                pass

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

        return Writer()

    def set_info(self, **info: Any) -> None:
        self.info.update(info)


def source(db: Path) -> SqliteSource:
    return SqliteSource("db", Settings({"path": str(db)}))


def test_rollback_journal_writers_wait_while_the_file_is_copied(tmp_path: Path) -> None:
    """The copy runs inside a read transaction: its SHARED lock keeps a writer from committing (timeout=0:
    refused at once), so the file cannot change under the copy."""
    db = make_sqlite(tmp_path / "x.db", rows=100)

    def write() -> str:
        con = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            con.execute("INSERT INTO t (id, name) VALUES (100000, 'during the copy')")
            return "committed"
        except sqlite3.OperationalError as exc:
            return str(exc)
        finally:
            con.close()

    sink = ProbingSink(write)
    source(db).backup(sink)
    assert sink.seen == ["database is locked"]
    assert sink.info["journal_mode"] == "delete" and sink.written[DB] == db.stat().st_size
    assert write() == "committed"  # and once the copy is done, it may


def test_wal_checkpoints_cannot_reset_the_wal_while_it_is_copied(tmp_path: Path) -> None:
    """The copy runs inside a read transaction: a checkpoint cannot truncate the WAL under it (busy)."""
    db = make_sqlite(tmp_path / "x.db", rows=100, wal=True)
    writer = sqlite3.connect(db, isolation_level=None)  # kept open: the WAL is not checkpointed away on close
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE t SET name = 'in the wal' WHERE id < 50")
    assert Path(f"{db}-wal").stat().st_size > 0

    def checkpoint() -> tuple[int, int, int]:
        con = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            return con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            con.close()

    sink = ProbingSink(checkpoint)
    try:
        source(db).backup(sink)
        busy = sink.seen[0][0]  # type: ignore[index]
        assert busy == 1, sink.seen
        assert sink.info["journal_mode"] == "wal" and sink.written[WAL] > 0
        assert checkpoint()[0] == 0  # and once the copy is done, it completes
    finally:
        writer.close()


def test_corrupt_backup_leaves_target(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "x.db", rows=5000)
    dm = manager(tmp_path, db)
    ts = dm.backup("d").timestamp
    art = next((tmp_path / "backups" / "d" / ts / "db").glob("database.sqlite*"))
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0x10
    art.write_bytes(data)
    before = db.read_bytes()
    with pytest.raises(CorruptBackupError):
        dm.restore("d")
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("wal", [False, True])
def test_what_the_backup_records(tmp_path: Path, wal: bool) -> None:
    db = make_sqlite(tmp_path / "x.db", rows=100, wal=wal)
    os.chmod(db, 0o640)
    keep = sqlite3.connect(db)  # an open connection keeps the WAL (and its frames) around
    keep.execute("UPDATE t SET name = 'changed' WHERE id < 5")
    keep.commit()
    try:
        sink = ProbingSink(lambda: None)
        source(db).backup(sink)
    finally:
        keep.close()
    assert sink.info == {"journal_mode": "wal" if wal else "delete", "page_size": 4096,
                         "db_bytes": sink.written[DB], "wal_bytes": sink.written.get(WAL, 0),
                         "sqlite_version": sqlite3.sqlite_version, "mode": 0o640}
    assert (WAL in sink.written) is wal and sink.written.get(WAL, 1) > 0


def test_check_names_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=f"^source 'db': {tmp_path / 'none.db'} does not exist$"):
        source(tmp_path / "none.db").check()
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(SourceError, match=f"^source 'db': {junk} is not a usable SQLite database: "):
        source(junk).check()
    with pytest.raises(SourceError, match="is not a usable SQLite database"):
        source(junk).backup(ProbingSink(lambda: None))
    assert source(junk).describe() == str(junk)


def test_a_wal_backup_restores_to_one_file(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "x.db", rows=100, wal=True)
    keep = sqlite3.connect(db)
    keep.execute("DELETE FROM t WHERE id >= 50")
    keep.commit()
    try:
        dm = manager(tmp_path, db)
        dm.backup("d")
    finally:
        keep.close()
    out = tmp_path / "out" / "y.db"
    dm.restore("d", overrides={"db": {"path": str(out)}})
    assert sorted(p.name for p in out.parent.iterdir()) == ["y.db"]  # checkpointed: no -wal, no staging
    assert len(sqlite_rows(out)) == 50


def test_a_backup_that_is_not_a_database_is_corrupt(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "x.db")
    dm = manager(tmp_path, db)
    ts = dm.backup("d").timestamp
    replace_artifact(tmp_path / "backups" / "d" / ts, "db", DB, os.urandom(8192))
    before = db.read_bytes()
    with pytest.raises(CorruptBackupError):
        dm.restore("d")
    assert db.read_bytes() == before


def test_a_new_target_gets_the_recorded_mode_and_its_missing_directories(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "x.db", rows=10)
    os.chmod(db, 0o640)
    dm = manager(tmp_path, db)
    ts = dm.backup("d").timestamp
    deep = tmp_path / "a" / "b" / "c" / "y.db"
    dm.restore("d", overrides={"db": {"path": str(deep)}})
    assert sqlite_rows(deep) == sqlite_rows(db) and stat.S_IMODE(deep.stat().st_mode) == 0o640
    # A backup from before modes were recorded: private.
    meta = tmp_path / "backups" / "d" / ts / "backup.json"
    doc = json.loads(meta.read_text())
    del doc["sources"][0]["info"]["mode"]
    meta.write_text(json.dumps(doc))
    old = tmp_path / "old.db"
    dm.restore("d", overrides={"db": {"path": str(old)}})
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(SourceError) as e:
        dm.restore("d", overrides={"db": {"path": str(blocked / "z.db")}})
    assert str(e.value) in (f"source 'db': cannot create the directory {blocked}: File exists",
                            f"source 'db': cannot create the directory {blocked}: Not a directory")


# --------------------------------------------------------------------------- survivors of scripts/mutation sqlite


def test_the_default_busy_timeout_is_30_seconds(tmp_path: Path) -> None:
    assert source(tmp_path / "x.db").busy_timeout == 30


def test_the_recorded_size_counts_every_chunk(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "x.db", rows=80_000)
    assert db.stat().st_size > 2 << 20  # several 1 MiB chunks
    sink = ProbingSink(lambda: None)
    source(db).backup(sink)
    assert sink.info["db_bytes"] == db.stat().st_size == sink.written[DB]


def test_a_wal_database_without_its_wal_file_is_one_artifact(tmp_path: Path) -> None:
    """WAL mode, every connection closed (the -wal file gone): only the database file is copied."""
    db = make_sqlite(tmp_path / "x.db", rows=10, wal=True)
    assert not Path(f"{db}-wal").exists()
    sink = ProbingSink(lambda: None)
    source(db).backup(sink)
    assert sink.info["journal_mode"] == "wal" and WAL not in sink.written and sink.info["wal_bytes"] == 0


def test_the_source_opens_the_database_read_only_and_in_autocommit(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``mode=ro`` (a backup never writes the user's database) as a URI, and no implicit transactions: the
    source's own BEGIN takes the snapshot. On restore over an existing target, the staging copy is read
    read-only and the target opened for writing."""
    opened: list[tuple[str, dict[str, Any]]] = []
    real = sqlite3.connect

    def connect(database: str, **kwargs: Any) -> sqlite3.Connection:
        if str(database).startswith("file:"):  # the source's (the module is shared: the state db's too)
            opened.append((database, kwargs))
        return real(database, **kwargs)

    db = make_sqlite(tmp_path / "x.db", rows=10)
    monkeypatch.setattr(mod.sqlite3, "connect", connect)
    s = SqliteSource("db", Settings({"path": str(db), "busy_timeout": 7}))
    s.check()
    s.backup(ProbingSink(lambda: None))
    assert opened == [(f"file:{db}?mode=ro", {"uri": True, "isolation_level": None, "timeout": 7})] * 3
    opened.clear()
    dm = manager(tmp_path, db)
    monkeypatch.setattr(mod.sqlite3, "connect", real)
    dm.backup("d")
    monkeypatch.setattr(mod.sqlite3, "connect", connect)
    dm.restore("d")
    uris = [u for u, _ in opened]
    assert uris[-2:] == [uris[-2].split("?")[0] + "?mode=ro", f"file:{db}"] and ".dm-restore-" in uris[-2]
    assert "?mode=ro" not in uris[-3]  # the staging copy's integrity check may write (a WAL checkpoint)


def test_errors_name_the_source_the_file_and_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_sqlite(tmp_path / "x.db", rows=10)
    s = source(db)

    def refuse(*a: object, **k: object) -> None:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(mod.sqlite3, "connect", refuse)
    with pytest.raises(SourceError) as e:
        s.check()
    assert str(e.value) == f"source 'db': cannot open {db}: unable to open database file"
    monkeypatch.undo()

    class Failing:
        def __init__(self, message: str) -> None:
            self.message = message

        def execute(self, sql: str) -> None:
            raise sqlite3.OperationalError(self.message)

        def close(self) -> None:
            pass

    monkeypatch.setattr(SqliteSource, "_connect", lambda self, path, readonly: Failing("database is busy"))
    with pytest.raises(SourceError) as e:
        s.check()
    assert str(e.value) == (f"source 'db': {db} stayed locked by another connection longer than busy_timeout "
                            f"(database is busy)")
    monkeypatch.setattr(SqliteSource, "_connect", lambda self, path, readonly: Failing("disk I/O error"))
    with pytest.raises(SourceError) as e:
        s.check()
    assert str(e.value) == f"source 'db': {db} is not a usable SQLite database: disk I/O error"
    monkeypatch.undo()

    monkeypatch.setattr(SqliteSource, "check", lambda self: None)
    monkeypatch.setattr(SqliteSource, "_connect", lambda self, path, readonly: Failing("database disk image is malformed"))
    with pytest.raises(SourceError) as e:
        s.backup(ProbingSink(lambda: None))
    assert str(e.value) == f"source 'db': {db}: database disk image is malformed"
    monkeypatch.undo()

    def unreadable(path: Path, out: object) -> int:
        raise OSError(errno.EIO, "Input/output error", f"{db}-wal")

    monkeypatch.setattr(mod, "_copy", unreadable)
    with pytest.raises(SourceError) as e:
        s.backup(ProbingSink(lambda: None))
    assert str(e.value) == f"source 'db': cannot read {db}-wal: Input/output error"


def test_a_leftover_that_cannot_be_removed_does_not_stop_a_restore(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "x.db", rows=10)
    dm = manager(tmp_path, db)
    dm.backup("d")
    stuck = tmp_path / ".x.db.dm-restore-0000"
    stuck.mkdir()  # a directory: unlink fails
    dm.restore("d")
    assert sqlite_rows(db) and stuck.is_dir()
    assert source(db).restore_leftovers(remove=False) == [str(stuck)]


def test_an_unusable_restored_copy_says_so(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "x.db")
    dm = manager(tmp_path, db)
    ts = dm.backup("d").timestamp
    replace_artifact(tmp_path / "backups" / "d" / ts, "db", DB, b"SQLite format 3\0" + os.urandom(8192))
    with pytest.raises(CorruptBackupError, match="^source 'db': the restored copy is not a usable database: |"
                                                 "^source 'db': restored database fails integrity_check: "):
        dm.restore("d")

