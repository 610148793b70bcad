"""``forget`` and ``prune`` on a dedup storage through the real command: tombstones hide forgotten backups,
prune --dry-run changes nothing and says what each phase would free, the mark waits --delete-delay before
the sweep frees the space, the backup kept restores byte for byte; only an admin key forgets and prunes
(exit 3); a worm storage has nothing to prune."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cli, snapshot


FREED = (2 << 20) * 9 // 10


def ok(r: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str], Path]:
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "same.txt").write_text("unchanged\n" * 10_000)
    vault = tmp_path / "vault"
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[locks]
settle = "0.02s"

[storages.vault]
type = "filesystem"
root = "{vault}"
engine = "dedup"
passphrase = "${{DM_PASSPHRASE}}"
pack_size = "256KiB"
cache_dir = "{tmp_path / 'cache'}"

[storages.plain]
type = "filesystem"
root = "{tmp_path / 'plain'}"

[datasets.exp42]
storage = "vault"

[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{raw}"
""")
    env = {"DATA_MANAGER_STATE": str(tmp_path / "state.db"), "DM_PASSPHRASE": "correct horse"}
    return config, vault, env, raw


def test_forget_then_prune_in_two_runs_frees_the_space_and_the_kept_backup_restores(setup, tmp_path: Path) -> None:
    config, vault, env, raw = setup
    ok(cli("repo", "init", "vault", config=config, env=env))
    stamps = []
    for i in range(3):
        for old in raw.glob("unique-*"):
            old.unlink()
        (raw / f"unique-{i}.bin").write_bytes(os.urandom(1 << 20))
        stamps.append(json.loads(ok(cli("backup", "exp42", "--json", config=config, env=env)).stdout)["timestamp"])
    kept = snapshot(raw)

    forgot = json.loads(ok(cli("forget", "exp42", "--keep-last", "1", "--json", config=config, env=env)).stdout)
    assert forgot["removed"] == stamps[:2]
    listed = json.loads(ok(cli("list", "backup", "exp42", "--json", config=config, env=env)).stdout)
    assert [b["timestamp"] for b in listed] == stamps[2:]
    assert len(list((vault / "tombstones").iterdir())) == 2

    before = size(vault)
    dry = json.loads(ok(cli("prune", "vault", "--dry-run", "--json", config=config, env=env)).stdout)
    (report,) = dry
    (mark,) = report["phases"]
    assert mark["phase"] == "mark" and mark["status"] == "would mark"
    assert mark["packs_deleted"] + mark["packs_repacked"] >= 2 and mark["tombstones"] == 2, mark
    # the two forgotten 1 MiB files, but for a small chunk of them that may share a pack with data still in use:
    # a pack less than max-unused (5%) dead is left as it is
    assert mark["bytes_deleted"] + mark["bytes_freed_by_repack"] > FREED, mark
    assert size(vault) == before and not (vault / "prune").exists()
    text = ok(cli("prune", "vault", "--dry-run", config=config, env=env)).stdout
    assert "mark" in text and "would delete" in text and "dry run" in text

    marked = json.loads(ok(cli("prune", "exp42", "--json", config=config, env=env)).stdout)  # a dataset: its storage
    assert marked[0]["phases"][0]["status"] == "done" and len(list((vault / "prune").iterdir())) == 1
    waiting = ok(cli("prune", "vault", config=config, env=env)).stdout
    assert "sweep: waiting" in waiting and "--delete-delay" in waiting
    assert size(vault) >= before

    swept = json.loads(ok(cli("prune", "--delete-delay", "0", "--json", config=config, env=env)).stdout)
    by_storage = {r["storage"]: r for r in swept}
    sweep = by_storage["vault"]["phases"][0]
    assert sweep["phase"] == "sweep" and sweep["status"] == "done" and sweep["snapshots"] == 2
    assert by_storage["plain"]["needed"] is False  # a worm storage: nothing to prune
    assert before - size(vault) > FREED
    assert not list(vault.glob("tombstones/*"))

    target = tmp_path / "restored"
    ok(cli("restore", "latest", "exp42", "--yes", "--set", f"raw.path={target}", config=config, env=env))
    assert snapshot(target) == kept
    check = json.loads(ok(cli("check", "vault", "--read-data-subset", "100%", "--json", config=config, env=env)).stdout)
    assert check[0]["ok"], check


def test_only_an_admin_key_forgets_and_prunes(setup, tmp_path: Path) -> None:
    config, vault, env, raw = setup
    ok(cli("repo", "init", "vault", config=config, env=env))
    ok(cli("backup", "exp42", config=config, env=env))
    ok(cli("backup", "exp42", config=config, env=env))
    ok(cli("repo", "key", "add", "vault", "--role", "append", "--passphrase-env", "APPEND",
           config=config, env={**env, "APPEND": "append pass"}))
    append = {**env, "DM_PASSPHRASE": "append pass"}
    for args in (("forget", "exp42", "--keep-last", "1"), ("prune", "vault")):
        r = ok(cli(*args, config=config, env=append), 3)
        assert "only an admin key may" in r.stderr and r.stderr.count("\n") == 1
    r = ok(cli("prune", "vault", "--json", config=config, env=append), 3)
    assert json.loads(r.stdout or r.stderr)["error"]["code"] == "refused"
    ok(cli("prune", "vault", "--dry-run", config=config, env=append))  # a dry run reads only
    assert len(json.loads(ok(cli("list", "backup", "exp42", "--json", config=config, env=env)).stdout)) == 2


def test_prune_usage_errors(setup) -> None:
    config, vault, env, raw = setup
    r = ok(cli("prune", "nowhere", config=config, env=env), 2)
    assert "neither a storage nor a dataset" in r.stderr
    r = ok(cli("prune", "vault", "--delete-delay", "soon", config=config, env=env), 2)
    assert "--delete-delay" in r.stderr
    plain = ok(cli("prune", "plain", config=config, env=env)).stdout
    assert "nothing to prune" in plain


def test_forget_prune_marks_in_the_same_run_and_max_unused_is_checked(setup, tmp_path: Path) -> None:
    config, vault, env, raw = setup
    ok(cli("repo", "init", "vault", config=config, env=env))
    for i in range(2):
        for old in raw.glob("unique-*"):
            old.unlink()
        (raw / f"unique-{i}.bin").write_bytes(os.urandom(1 << 20))
        ok(cli("backup", "exp42", config=config, env=env))
    kept = snapshot(raw)

    for bad in ("5", "-1%", "101%", "lots"):
        r = ok(cli("prune", "vault", "--max-unused", bad, config=config, env=env), 2)
        assert "--max-unused" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (vault / "prune").exists()

    done = json.loads(ok(cli("forget", "exp42", "--keep-last", "1", "--prune", "--json", config=config,
                             env=env)).stdout)
    assert len(done["removed"]) == 1
    (mark,) = done["prune"][0]["phases"]
    assert mark["phase"] == "mark" and mark["status"] == "done" and mark["tombstones"] == 1
    swept = json.loads(ok(cli("prune", "vault", "--delete-delay", "0", "--max-unused", "0%", "--json",
                              config=config, env=env)).stdout)
    assert [p["status"] for p in swept[0]["phases"]][0] == "done"  # then a mark at 0% (if anything is left)
    ok(cli("prune", "vault", "--delete-delay", "0", "--max-unused", "0%", config=config, env=env))
    again = json.loads(ok(cli("prune", "vault", "--max-unused", "0%", "--dry-run", "--json", config=config,
                              env=env)).stdout)
    assert again[0]["phases"][-1]["status"] == "nothing to do", again  # 0%: every unused byte was freed
    text = ok(cli("forget", "exp42", "--keep-last", "1", "--prune", config=config, env=env)).stdout
    assert "0 removed" in text and "vault (" in text
    target = tmp_path / "restored"
    ok(cli("restore", "latest", "exp42", "--yes", "--set", f"raw.path={target}", config=config, env=env))
    assert snapshot(target) == kept
