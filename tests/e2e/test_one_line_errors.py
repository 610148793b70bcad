"""Failures users meet print one line and the documented exit code, never a traceback (real processes)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.helpers import cli, make_sqlite, sqlite_rows, write_config


def run(tmp_path: Path, *args: str, config: Path) -> tuple[int, str]:
    r = cli(*args, config=config, env={"DATA_MANAGER_STATE": str(tmp_path / "state.db")})
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stderr


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_config_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "dm.toml", tmp_path / "backups", {})
    config.write_bytes(config.read_bytes() + b'\n# caf\xe9 in Latin-1\n')
    code, err = run(tmp_path, "status", config=config)
    assert code == 2
    assert f"{config}: not UTF-8" in one_line(err)


@pytest.mark.parametrize("table, hint", [
    ("[datasetz.x]\nstorage = 'local'", "did you mean [datasets]?"),
    ("[lock]\nttl = '10m'", "did you mean [locks]?"),
])
def test_unknown_top_level_table_is_a_config_error(tmp_path: Path, table: str, hint: str) -> None:
    config = write_config(tmp_path / "dm.toml", tmp_path / "backups", {"db": make_sqlite(tmp_path / "x.db", rows=5)})
    config.write_text(config.read_text() + "\n" + table + "\n")
    code, err = run(tmp_path, "status", config=config)
    assert code == 2
    line = one_line(err)
    name = table.split("]")[0].split(".")[0].lstrip("[")
    assert f"unknown top-level table [{name}]" in line, line
    assert "(known: datasets, guards, jobs, locks, monitoring, service, state, storages)" in line and hint in line, line


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Path, Path]:
    db = make_sqlite(tmp_path / "data" / "x.db", rows=50)
    config = write_config(tmp_path / "dm.toml", tmp_path / "backups", {"db": db})
    code, err = run(tmp_path, "backup", "exp42", config=config)
    assert code == 0, err
    return config, db


def test_sqlite_restore_where_the_directory_cannot_be_made(tmp_path: Path, backed_up: tuple[Path, Path]) -> None:
    config, _ = backed_up
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "sub" / "x.db"
    code, err = run(tmp_path, "restore", "--yes", "--set", f"db.path={target}", "exp42", config=config)
    assert code == 1
    assert f"source 'db': cannot create the directory {target.parent}" in one_line(err)


def test_sqlite_restore_where_the_copy_cannot_be_created(tmp_path: Path, backed_up: tuple[Path, Path]) -> None:
    config, _ = backed_up
    target = tmp_path / "out" / ("n" * 240 + ".db")  # a valid name; the staging copy's name is too long
    target.parent.mkdir()
    code, err = run(tmp_path, "restore", "--yes", "--set", f"db.path={target}", "exp42", config=config)
    assert code == 1
    assert "source 'db': cannot create " in one_line(err) and "File name too long" in err
    assert list(target.parent.iterdir()) == []


def test_sqlite_restore_to_a_new_path_keeps_the_files_mode(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "data" / "x.db", rows=50)
    db.chmod(0o600)
    config = write_config(tmp_path / "dm.toml", tmp_path / "backups", {"db": db})
    assert run(tmp_path, "backup", "exp42", config=config)[0] == 0
    db.chmod(0o640)  # the restore uses the mode recorded at backup, not today's
    target = tmp_path / "restored" / "x.db"
    code, err = run(tmp_path, "restore", "--yes", "--set", f"db.path={target}", "exp42", config=config)
    assert code == 0, err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sqlite_rows(target) == sqlite_rows(db)
