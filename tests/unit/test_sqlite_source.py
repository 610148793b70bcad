import sqlite3
import threading
from pathlib import Path

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError
from tests.helpers import make_sqlite, sqlite_rows


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


@pytest.mark.parametrize("wal", [False, True])
def test_consistent_while_a_writer_is_active(tmp_path: Path, wal: bool) -> None:
    """Each writer transaction moves 1 between two rows: any consistent copy sums to the same total."""
    db = tmp_path / "live.db"
    con = sqlite3.connect(db)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER, pad BLOB)")
    con.executemany("INSERT INTO acct VALUES (?, 1000, randomblob(2000))", [(i,) for i in range(2000)])
    con.commit()
    con.close()
    stop = threading.Event()

    def writer() -> None:
        w = sqlite3.connect(db, timeout=30)
        i = 0
        while not stop.is_set():
            a, b = i % 2000, (i * 7 + 1) % 2000
            w.execute("BEGIN IMMEDIATE")
            w.execute("UPDATE acct SET bal = bal - 1, pad = randomblob(2000) WHERE id = ?", (a,))
            w.execute("UPDATE acct SET bal = bal + 1 WHERE id = ?", (b,))
            w.execute("COMMIT")
            i += 1
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    dm = manager(tmp_path, db)
    try:
        for n in range(3):
            dm.backup("d")
    finally:
        stop.set()
        t.join()
    for b in dm.list_backups("d"):
        out = tmp_path / f"r-{b.timestamp}.db"
        dm.restore("d", b.timestamp, overrides={"db": {"path": str(out)}})
        con = sqlite3.connect(out)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT sum(bal), count(*) FROM acct").fetchone() == (2000 * 1000, 2000)
        con.close()


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
