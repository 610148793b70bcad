"""The command as users and scripts run it: real processes, exit codes, one-line errors."""

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import cli, make_sqlite, make_tree, snapshot, sqlite_rows, write_config


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    raw = make_tree(tmp_path / "data" / "raw")
    db = make_sqlite(tmp_path / "data" / "notes.db")
    backups = tmp_path / "backups"
    config = write_config(tmp_path / "dm.toml", backups, {"raw": raw, "notes": db})
    return config, backups, raw, db


def test_backup_list_restore_verify(setup: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    config, backups, raw, db = setup
    tree, rows = snapshot(raw), sqlite_rows(db)
    first = cli("backup", "exp42", config=config)
    assert first.returncode == 0, first.stderr
    assert "complete" in first.stdout
    (raw / "hello.txt").write_text("changed")
    second = cli("backup", "exp42", "--json", config=config)
    ts2 = json.loads(second.stdout)["timestamp"]

    listed = json.loads(cli("list", "backup", "--json", config=config).stdout)
    assert [b["complete"] for b in listed] == [True, True]
    ts1 = listed[0]["timestamp"]
    assert "exp42" in cli("list", "backup", "exp42", config=config).stdout

    # Restore an older timestamp, then latest.
    shutil.rmtree(raw)
    db.unlink()
    r = cli("restore", "--yes", ts1, "exp42", config=config)
    assert r.returncode == 0, r.stderr
    assert snapshot(raw) == tree and sqlite_rows(db) == rows
    assert cli("restore", "-y", "latest", "exp42", config=config).returncode == 0
    assert (raw / "hello.txt").read_text() == "changed"

    v = cli("verify", "exp42", config=config)
    assert v.returncode == 0 and ts2 in v.stdout

    status = json.loads(cli("status", "--json", config=config).stdout)
    assert status["datasets"][0]["latest"] == ts2 and status["storages"][0]["reachable"] is True


def files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its content (empty if ``root`` does not exist)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dry_runs_change_nothing(setup: tuple[Path, Path, Path, Path]) -> None:
    config, backups, raw, db = setup
    tree, rows = snapshot(raw), db.read_bytes()
    r = cli("backup", "--dry-run", "exp42", config=config)
    assert r.returncode == 0 and "would back up" in r.stdout, r.stderr
    assert not backups.exists()
    assert snapshot(raw) == tree and db.read_bytes() == rows

    assert cli("backup", "exp42", config=config).returncode == 0
    (raw / "hello.txt").write_text("newer")
    (raw / "new.txt").write_text("not in the backup")
    con = sqlite3.connect(db)
    con.execute("DELETE FROM t WHERE id > 10")
    con.commit()
    con.close()
    changed, changed_rows, stored = snapshot(raw), db.read_bytes(), files(backups)
    jobs = json.loads(cli("status", "--json", config=config).stdout)["recent"]
    r = cli("restore", "--dry-run", "exp42", config=config)
    assert r.returncode == 0 and "would restore" in r.stdout, r.stderr
    assert str(raw) in r.stdout and str(db) in r.stdout
    assert snapshot(raw) == changed and db.read_bytes() == changed_rows  # neither source was touched
    assert files(backups) == stored  # no backup, no lock, nothing written in the storage
    assert sorted(p.name for p in raw.parent.iterdir()) == ["notes.db", "raw"]  # no staging beside the targets
    assert json.loads(cli("status", "--json", config=config).stdout)["recent"] == jobs  # no job ran


def test_flipped_byte_is_caught_by_verify_and_restore(setup: tuple[Path, Path, Path, Path]) -> None:
    config, backups, raw, db = setup
    assert cli("backup", "exp42", config=config).returncode == 0
    vol = sorted(backups.glob("exp42/*/raw/vol-*"))[0]
    data = bytearray(vol.read_bytes())
    data[100] ^= 1
    vol.write_bytes(data)
    before = snapshot(raw)
    for args in (["verify", "exp42"], ["restore", "--yes", "exp42"]):
        r = cli(*args, config=config)
        assert r.returncode == 4, r.stderr
        assert r.stderr.count("\n") == 1 and "vol-000001" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(raw) == before


def one_line_error(r, code: int, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert needle in r.stderr, r.stderr


def test_bad_inputs_one_line_and_nothing_changed(setup: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    config, backups, raw, db = setup
    assert cli("backup", "exp42", config=config).returncode == 0
    state = sorted(p for p in backups.rglob("*"))
    one_line_error(cli("backup", "nope", config=config), 2, "unknown dataset 'nope'")
    one_line_error(cli("restore", "--yes", "2026-11-23", "exp42", config=config), 2, "bad timestamp")
    one_line_error(cli("restore", "--yes", "20000101T000000Z", "exp42", config=config), 2, "no backup exp42/20000101T000000Z")
    one_line_error(cli("restore", "exp42", config=config), 2, "pass --yes")
    one_line_error(cli("restore", "--yes", "--set", "ghost.path=/x", "exp42", config=config), 2, "no source 'ghost'")
    one_line_error(cli("backup", "exp42", config=tmp_path / "missing.toml"), 2, "not found")
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('type = "sqlite"', 'type = "nosuchdb"'))
    one_line_error(cli("backup", "exp42", config=bad), 2, "unknown source type 'nosuchdb'")
    bad.write_text(config.read_text() + "\n[broken\n")
    one_line_error(cli("status", config=bad), 2, "not valid TOML")
    bad.write_text(config.read_text().replace(f'path = "{raw}"', 'path = "/nonexistent/dir"'))
    one_line_error(cli("backup", "exp42", config=bad), 1, "/nonexistent/dir is not a directory")
    unwritable = tmp_path / "ro"
    unwritable.write_text("a file, not a directory")
    bad.write_text(config.read_text().replace(f'root = "{backups}"', f'root = "{unwritable}"'))
    one_line_error(cli("backup", "exp42", config=bad), 1, "is not a directory")
    assert sorted(p for p in backups.rglob("*")) == state


def test_secrets_stay_out_of_metadata_and_logs(tmp_path: Path) -> None:
    raw = make_tree(tmp_path / "raw")
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[storages.local]
type = "filesystem"
root = "{tmp_path / 'b'}"
[datasets.d]
[[datasets.d.sources]]
name = "raw"
type = "directory"
path = "{raw}"
exclude = ["${{DM_SECRET_PATTERN}}"]
""")
    secret = "s3cr3t-value-xyz"
    env = {"DM_SECRET_PATTERN": secret}
    r = cli("-vv", "backup", "d", config=config, env=env)
    assert r.returncode == 0, r.stderr
    assert secret not in r.stderr and secret not in r.stdout
    for f in (tmp_path / "b").rglob("*.json"):
        assert secret not in f.read_text()
    assert "${DM_SECRET_PATTERN}" in next((tmp_path / "b").rglob("backup.json")).read_text()


HEAVY = {"cassandra", "minio", "googleapiclient", "google", "psycopg", "psycopg2", "pymysql", "MySQLdb",
         "zstandard", "urllib3", "requests"}


def imported(*args: str) -> set[str]:
    """The top-level modules the command imports (``python -X importtime``)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "data_manager", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_help_and_plugins_are_fast_and_clean() -> None:
    for args, needle in ((["--help"], "Exit codes"), (["plugins", "--json"], '"name": "sqlite"')):
        t0 = time.monotonic()
        r = cli(*args)
        seconds = time.monotonic() - t0
        assert r.returncode == 0 and needle in r.stdout, r.stderr
        assert r.stderr == ""  # no warning, no log line, no deprecation notice
        assert seconds < 5, f"{args}: {seconds:.1f}s"  # ~0.4 s; a bound a loaded machine still meets
    names = {p["name"] for p in json.loads(cli("plugins", "--json").stdout)}
    assert {"filesystem", "directory", "sqlite"} <= names
    # Fast by construction: no client library or compressor is imported to print help or list plugins.
    help_imports, plugins_imports = imported("--help"), imported("plugins", "--json")
    assert "data_manager" in help_imports and "click" in help_imports
    assert help_imports & HEAVY == set() and plugins_imports & HEAVY == set()
    assert [m for m in help_imports if m.startswith("data_manager_")] == []  # --help loads no plugin at all


def test_restore_from_metadata_alone(setup: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    """A source no longer in the config is restored from what backup.json recorded, to where --set says
    (never to the recorded path by itself: the storage's content does not choose where data is written)."""
    config, backups, raw, db = setup
    assert cli("backup", "exp42", config=config).returncode == 0
    tree = snapshot(raw)
    only_storage = tmp_path / "storage-only.toml"
    only_storage.write_text(f'[storages.local]\ntype = "filesystem"\nroot = "{backups}"\n[datasets.exp42]\n'
                            f'[[datasets.exp42.sources]]\nname = "other"\ntype = "directory"\npath = "/x"\n')
    con = sqlite3.connect(db)
    con.execute("DELETE FROM t WHERE id > 10")
    con.commit()
    con.close()
    db_bytes = db.read_bytes()
    shutil.rmtree(raw)
    r = cli("restore", "--yes", "--only", "raw", "exp42", config=only_storage)
    assert r.returncode == 2 and "--set raw.path=" in r.stderr, r.stderr
    assert not raw.exists()
    r = cli("restore", "--yes", "--only", "raw", "--set", f"raw.path={raw}", "exp42", config=only_storage)
    assert r.returncode == 0, r.stderr
    assert snapshot(raw) == tree
    assert db.read_bytes() == db_bytes  # --only raw: the other source was left alone
