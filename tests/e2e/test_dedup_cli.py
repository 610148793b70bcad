"""The ``dedup`` engine through the real command: repo init, backups, list, restore, check, keys with roles,
damage, repair; and the repository commands on a ``worm`` storage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cli, make_sqlite, make_tree, snapshot, sqlite_rows

MARKER = "zebra-marker-7f3a"  # in a file name and in file contents: must never be stored in plaintext


def ok(r: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str], Path, Path]:
    raw = make_tree(tmp_path / "data" / "raw")
    (raw / f"{MARKER}.txt").write_text(f"{MARKER}\n" * 1000)
    (raw / "big.bin").write_bytes(os.urandom(3 << 20))
    db = make_sqlite(tmp_path / "data" / "notes.db")
    vault = tmp_path / "vault"
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[storages.vault]
type = "filesystem"
root = "{vault}"
engine = "dedup"
passphrase = "${{DM_PASSPHRASE}}"
cache_dir = "{tmp_path / 'cache'}"

[storages.local]
type = "filesystem"
root = "{tmp_path / 'plain'}"

[datasets.exp42]
storage = "vault"

[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{raw}"

[[datasets.exp42.sources]]
name = "notes"
type = "sqlite"
path = "{db}"
""")
    env = {"DATA_MANAGER_STATE": str(tmp_path / "state.db"), "DM_PASSPHRASE": "correct horse"}
    return config, vault, env, raw, db


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_init_backup_list_restore_check(setup, tmp_path: Path) -> None:
    config, vault, env, raw, db = setup
    made = json.loads(ok(cli("repo", "init", "vault", "--json", config=config, env=env)).stdout)
    assert made["engine"] == "dedup" and made["role"] == "admin" and len(made["key_id"]) == 32
    again = ok(cli("repo", "init", "vault", config=config, env=env), 2)
    assert again.stderr.count("\n") == 1 and "exists already" in again.stderr

    first = json.loads(ok(cli("backup", "exp42", "--json", config=config, env=env)).stdout)
    before = snapshot(raw)
    (raw / "added.txt").write_text("later\n")
    second = json.loads(ok(cli("backup", "exp42", "--json", config=config, env=env)).stdout)
    assert second["stored_size"] < first["stored_size"] / 10  # the unchanged bulk is stored once

    listed = json.loads(ok(cli("list", "backup", "exp42", "--json", config=config, env=env)).stdout)
    assert [b["timestamp"] for b in listed] == [first["timestamp"], second["timestamp"]]
    assert all(b["complete"] and b["storages"] == ["vault"] for b in listed)

    # Nothing of the source in plaintext: names, contents, table names, the dataset's name.
    for path, blob in files_of(vault).items():
        for needle in (MARKER.encode(), b"notes.db", b"CREATE TABLE", b"exp42"):
            assert needle not in blob, (path, needle)

    out = tmp_path / "restored"
    ok(cli("restore", "--yes", first["timestamp"], "exp42", "--set", f"raw.path={out / 'raw'}",
           "--set", f"notes.path={out / 'notes.db'}", config=config, env=env))
    assert snapshot(out / "raw") == before
    assert sqlite_rows(out / "notes.db") == sqlite_rows(db)

    report = json.loads(ok(cli("check", "vault", "--read-data-subset", "100%", "--json", config=config, env=env)).stdout)
    assert report[0]["ok"] and report[0]["engine"] == "dedup" and report[0]["counts"]["snapshots"] == 2
    ok(cli("verify", "--all", "exp42", config=config, env=env))


def test_wrong_passphrase_is_exit_2_and_writes_nothing(setup) -> None:
    config, vault, env, _, _ = setup
    ok(cli("repo", "init", "vault", config=config, env=env))
    ok(cli("backup", "exp42", config=config, env=env))
    stored = files_of(vault)
    r = ok(cli("backup", "exp42", config=config, env={**env, "DM_PASSPHRASE": "wrong"}), 2)
    assert "passphrase" in r.stderr and r.stderr.count("\n") == 1
    assert files_of(vault) == stored
    ok(cli("list", "backup", "exp42", config=config, env={**env, "DM_PASSPHRASE": "wrong"}), 2)


def test_keys_with_roles(setup, tmp_path: Path) -> None:
    config, vault, env, raw, _ = setup
    ok(cli("repo", "init", "vault", config=config, env=env))
    added = ok(cli("repo", "key", "add", "vault", "--role", "write-only", "--passphrase-env", "WO",
                   "--json", config=config, env={**env, "WO": "ingest only"}))
    wo_id = json.loads(added.stdout)["key_id"]
    keys = json.loads(ok(cli("repo", "key", "list", "vault", "--json", config=config, env=env)).stdout)
    assert sorted(k["role"] for k in keys) == ["admin", "write-only"]

    # The write-only key backs up, but reads nothing back, not even its own backup.
    wo = {**env, "DM_PASSPHRASE": "ingest only"}
    ok(cli("backup", "exp42", config=config, env=wo))
    r = ok(cli("restore", "--yes", "exp42", "--set", f"raw.path={tmp_path / 'x'}", config=config, env=wo), 3)
    assert "write-only" in r.stderr and not (tmp_path / "x").exists()
    ok(cli("repo", "key", "add", "vault", "--role", "admin", "--passphrase-env", "WO", config=config,
           env={**wo, "WO": "escalate"}), 3)
    # The admin key reads what the write-only key wrote.
    listed = json.loads(ok(cli("list", "backup", "exp42", "--json", config=config, env=env)).stdout)
    assert len(listed) == 1 and listed[0]["complete"]

    ok(cli("repo", "key", "revoke", "vault", wo_id, config=config, env=env))
    ok(cli("backup", "exp42", config=config, env=wo), 2)  # a revoked key no longer opens the repository


def test_damage_is_exit_4_and_repair_rebuilds_from_the_packs(setup, tmp_path: Path) -> None:
    config, vault, env, raw, _ = setup
    ok(cli("repo", "init", "vault", config=config, env=env))
    ok(cli("backup", "exp42", config=config, env=env))
    listed = ok(cli("list", "backup", "exp42", "--json", config=config, env=env)).stdout

    # Index and snapshot pointers gone: rebuilt from the packs alone, same listing, same restore.
    shutil.rmtree(vault / "index")
    shutil.rmtree(vault / "snapshots")
    shutil.rmtree(tmp_path / "cache")
    ok(cli("repo", "repair", "vault", "index", config=config, env=env))
    ok(cli("repo", "repair", "vault", "snapshots", config=config, env=env))
    assert ok(cli("list", "backup", "exp42", "--json", config=config, env=env)).stdout == listed
    out = tmp_path / "again"
    ok(cli("restore", "--yes", "exp42", "--only", "raw", "--set", f"raw.path={out}", config=config, env=env))
    assert snapshot(out) == snapshot(raw)

    # A flipped byte in the biggest data pack: restore exits 4 naming the artifact, check finds it.
    pack = max((vault / "packs" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    blob = bytearray(pack.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    pack.write_bytes(bytes(blob))
    bad = tmp_path / "bad"
    r = ok(cli("restore", "--yes", "exp42", "--only", "raw", "--set", f"raw.path={bad}", config=config, env=env), 4)
    assert "exp42/" in r.stderr and "/raw/" in r.stderr and not bad.exists()
    ok(cli("check", "vault", config=config, env=env))  # the structure is whole...
    r = ok(cli("check", "vault", "--read-data-subset", "100%", config=config, env=env), 4)  # ...its bytes are not
    assert "DAMAGED" in r.stdout


def test_repository_commands_on_a_worm_storage(setup) -> None:
    config, _, env, _, _ = setup
    r = ok(cli("repo", "init", "local", config=config, env=env), 2)
    assert "worm engine" in r.stderr
    ok(cli("repo", "key", "list", "local", config=config, env=env), 2)
    r = ok(cli("repo", "init", "nowhere", config=config, env=env), 2)
    assert "unknown storage 'nowhere' (configured: local, vault)" in r.stderr
    r = ok(cli("check", "local", config=config, env=env))
    assert r.stdout.startswith("local (worm): ok")
    r = ok(cli("backup", "exp42", config=config, env=env), 2)  # vault has no repository yet
    assert "repo init vault" in r.stderr


def test_copies_between_engines(setup, tmp_path: Path) -> None:
    config, vault, env, raw, _ = setup
    text = config.read_text().replace('[datasets.exp42]\nstorage = "vault"', '[datasets.exp42]\nstorage = "vault"\ncopies = ["local"]')
    text += f'\n[datasets.exp43]\nstorage = "local"\ncopies = ["vault"]\n\n[[datasets.exp43.sources]]\nname = "raw"\ntype = "directory"\npath = "{raw}"\n'
    config.write_text(text)
    ok(cli("repo", "init", "vault", config=config, env=env))
    ok(cli("backup", "exp42", config=config, env=env))  # dedup -> worm
    ok(cli("backup", "exp43", config=config, env=env))  # worm -> dedup
    for data_id in ("exp42", "exp43"):
        [b] = json.loads(ok(cli("list", "backup", data_id, "--json", config=config, env=env)).stdout)
        assert sorted(b["storages"]) == ["local", "vault"], b
    # The worm copy of the dedup backup is plain files, byte for byte what was backed up.
    [plain] = (tmp_path / "plain" / "exp42").iterdir()
    assert (plain / "backup.json").exists() and list((plain / "raw").glob("files.jsonl*"))
    for name in ("local", "vault"):
        ok(cli("check", name, "--read-data-subset", "100%", config=config, env=env))
    again = json.loads(ok(cli("copy", "--all", "exp42", "--to", "local", "--json", config=config, env=env)).stdout)
    assert [b["state"] for b in again["backups"]] == ["already complete"]


def test_a_bad_read_data_subset_names_its_option(setup) -> None:
    config, _, env, _, _ = setup
    r = ok(cli("check", "local", "--read-data-subset", "200%", config=config, env=env), 2)
    assert r.stderr == "data-manager: error: --read-data-subset '200%': expected a percentage of the stored data, like 5% or 0.5%\n"
