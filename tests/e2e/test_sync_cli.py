"""The ``sync`` engine through the real command: backup to a mirror, list, verify, restore; a file edited in
the mirror is exit 4 for verify and restore; a bad ``delete_after`` and a non-directory source are one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers import cli, make_sqlite, make_tree, snapshot


def ok(r: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def test_backup_list_verify_restore_and_damage(tmp_path: Path) -> None:
    raw = make_tree(tmp_path / "data" / "raw")
    db = make_sqlite(tmp_path / "data" / "notes.db")
    vault = tmp_path / "vault"
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[storages.vault]
type = "filesystem"
root = "{vault}"
engine = "sync"
delete_after = "never"

[datasets.exp42]
storage = "vault"

[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{raw}"
""")
    env = {"DATA_MANAGER_STATE": str(tmp_path / "state.db")}
    first = json.loads(ok(cli("backup", "exp42", "--json", config=config, env=env)).stdout)
    assert (vault / "exp42" / "mirror" / "raw" / "sub" / "data.csv").read_bytes() == (raw / "sub" / "data.csv").read_bytes()
    before = snapshot(raw)
    (raw / "added.txt").write_text("later\n")
    (raw / "hello.txt").unlink()
    second = json.loads(ok(cli("backup", "exp42", "--json", config=config, env=env)).stdout)
    assert second["stored_size"] < first["stored_size"] / 10  # only what changed went up

    listed = json.loads(ok(cli("list", "backup", "exp42", "--json", config=config, env=env)).stdout)
    assert [b["timestamp"] for b in listed] == [first["timestamp"], second["timestamp"]]
    assert all(b["complete"] for b in listed)
    ok(cli("verify", "--all", "exp42", config=config, env=env))
    report = json.loads(ok(cli("check", "vault", "--read-data-subset", "100%", "--json", config=config, env=env)).stdout)
    assert report[0]["ok"] and report[0]["engine"] == "sync"
    ok(cli("status", config=config, env=env))
    out = tmp_path / "restored"
    ok(cli("restore", "--yes", first["timestamp"], "exp42", "--set", f"raw.path={out}", config=config, env=env))
    assert snapshot(out) == before  # hello.txt is pending deletion (never removed): the first backup restores

    (vault / "exp42" / "mirror" / "raw" / "added.txt").write_text("edited in the bucket\n")
    r = ok(cli("verify", "exp42", config=config, env=env), 4)
    assert "added.txt: differs from what this backup recorded" in r.stderr and r.stderr.count("\n") == 1
    ok(cli("restore", "--yes", "exp42", "--set", f"raw.path={tmp_path / 'again'}", config=config, env=env), 4)
    assert not (tmp_path / "again").exists()

    # Config mistakes and unsupported sources: one line each, exit 2.
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('delete_after = "never"', 'delete_after = "a week"'))
    r = ok(cli("backup", "exp42", config=bad, env=env), 2)
    assert "key 'delete_after'" in r.stderr and r.stderr.count("\n") == 1
    other = tmp_path / "other.toml"
    other.write_text(config.read_text() + f"""
[[datasets.exp42.sources]]
name = "notes"
type = "sqlite"
path = "{db}"
""")
    r = ok(cli("backup", "exp42", config=other, env=env), 2)
    assert "source 'notes' is a sqlite source" in r.stderr and "directory sources only" in r.stderr
