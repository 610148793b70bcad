"""A ``filesystem`` storage shared by two users (``shared = true``), issue #18's "a filesystem storage owned
by another user": root is the admin (dedup admin key), ``nobody`` an append client (append key) in the
storage's group. The append client backs up twice and restores, though its attempts to delete or replace
the admin's objects fail in the filesystem itself (sticky, setgid directories); ``forget`` with its key is
refused; the admin forgets, prunes (mark, sweep) and restores what it kept."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import snapshot

NOBODY = 65534
ADMIN_PASS, APPEND_PASS = "admin horse", "append horse"

needs_root = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="needs root (runs a second user with setpriv)")


@pytest.fixture
def reachable_python() -> Iterator[None]:
    """Let ``nobody`` run this environment's Python: tox makes ``.tox`` 0700, so directories above
    ``sys.prefix`` that others cannot traverse get o+x (search, not listing) for the test, and lose it after."""
    changed = []
    for d in reversed(Path(sys.prefix).resolve().parents):
        mode = d.stat().st_mode
        if not mode & 0o001:
            d.chmod(mode | 0o001)
            changed.append((d, mode))
    try:
        yield
    finally:
        for d, mode in reversed(changed):
            d.chmod(mode)


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="dm-shared-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def run(config: Path, env: dict[str, str], *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "data_manager", "--config", str(config), *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


def ok(r: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == code, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=60)


@needs_root
def test_an_append_user_adds_and_reads_but_cannot_remove_the_admins_objects(world: Path, reachable_python: None) -> None:
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed"
    probe = as_nobody(sys.executable, "-c", "import data_manager.cli, pluggy, cryptography")
    assert probe.returncode == 0, f"user nobody cannot run {sys.executable}: {probe.stderr}"
    vault = world / "vault"
    vault.mkdir(mode=0o3770)
    os.chown(vault, 0, NOBODY)
    vault.chmod(0o3770)  # `install -d -m 3770 -g GROUP`: the group of the append users
    raw = world / "raw"
    raw.mkdir()
    (raw / "a.csv").write_text("x,y\n" * 20_000)
    (raw / "b.bin").write_bytes(os.urandom(300_000))
    for p in (raw, *raw.iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)
    homes = {}
    for who in ("admin", "append"):
        home = world / who
        home.mkdir(mode=0o700)
        if who == "append":
            os.chown(home, NOBODY, NOBODY)
        homes[who] = home
    config = world / "dm.toml"
    config.write_text(f"""
[storages.vault]
type = "filesystem"
root = "{vault}"
shared = true
engine = "dedup"
passphrase = "${{DM_PASSPHRASE}}"

[datasets.exp42]
storage = "vault"

[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{raw}"
""")
    config.chmod(0o644)

    def env(who: str) -> dict[str, str]:
        home = homes[who]
        return {"HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"), "DATA_MANAGER_STATE": str(home / "state.db"),
                "DM_PASSPHRASE": ADMIN_PASS if who == "admin" else APPEND_PASS}

    admin, append = env("admin"), env("append")
    ok(run(config, admin, "repo", "init", "vault"))
    ok(run(config, {**admin, "APPEND": APPEND_PASS}, "repo", "key", "add", "vault", "--role", "append",
           "--passphrase-env", "APPEND"))
    first = json.loads(ok(run(config, admin, "backup", "exp42", "--json")).stdout)["timestamp"]
    admins = [p for p in vault.rglob("*") if p.is_file()]
    assert admins and all(p.stat().st_mode & 0o777 == 0o640 for p in admins)
    assert all(p.stat().st_mode & 0o7777 == 0o3770 and p.stat().st_gid == NOBODY for p in vault.rglob("*") if p.is_dir())

    # the append user, through data-manager: two backups and a restore; forget is refused by its key
    (raw / "b.bin").write_bytes(os.urandom(300_000))
    stamps = [json.loads(ok(run(config, append, "backup", "exp42", "--json", user=NOBODY)).stdout)["timestamp"]]
    (raw / "c.txt").write_text("new\n")
    (raw / "c.txt").chmod(0o644)
    stamps.append(json.loads(ok(run(config, append, "backup", "exp42", "--json", user=NOBODY)).stdout)["timestamp"])
    kept = snapshot(raw)
    out = world / "append" / "restored"
    ok(run(config, append, "restore", "latest", "exp42", "--yes", "--set", f"raw.path={out}", user=NOBODY))
    assert snapshot(out) == kept
    r = ok(run(config, append, "forget", "exp42", "--keep-last", "1", user=NOBODY), 3)
    assert "only an admin key may" in r.stderr

    # the filesystem itself refuses the append user any delete or overwrite of the admin's objects
    for victim in admins:
        assert victim.exists()
        assert as_nobody("rm", "-f", str(victim)).returncode != 0 and victim.exists(), victim
        assert as_nobody("mv", "-f", str(raw / "a.csv"), str(victim)).returncode != 0, victim
        assert as_nobody("sh", "-c", f": > '{victim}'").returncode != 0, victim  # 0640: no write
    assert all(p.exists() for p in admins)

    # the admin (root) forgets the first two, prunes in two phases, and restores the newest
    forgot = json.loads(ok(run(config, admin, "forget", "exp42", "--keep-last", "1", "--json")).stdout)
    assert forgot["removed"] == [first, stamps[0]], forgot
    ok(run(config, admin, "prune", "vault"))
    swept = json.loads(ok(run(config, admin, "prune", "vault", "--delete-delay", "0s", "--json")).stdout)
    assert swept[0]["phases"][0]["status"] == "done", swept
    back = world / "admin" / "restored"
    ok(run(config, admin, "restore", "latest", "exp42", "--yes", "--set", f"raw.path={back}"))
    assert snapshot(back) == kept
    listed = json.loads(ok(run(config, admin, "list", "backup", "exp42", "--json")).stdout)
    assert [b["timestamp"] for b in listed] == stamps[1:]
