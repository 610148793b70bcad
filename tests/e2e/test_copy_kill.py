"""``data-manager copy`` killed with SIGKILL before each of its storage writes and commits (tests/e2e/killer.py):
the target never holds a complete backup that is not whole, and the next ``copy`` resumes: it completes,
rewrites nothing it had finished, duplicates nothing, and the copy verifies from the target alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..helpers import cli, killed



def _config(tmp_path: Path, storage: str = "local") -> Path:
    src = tmp_path / "src"
    if not src.exists():
        (src / "sub").mkdir(parents=True)
        for i, size in enumerate([0, 10, 70_000, 1_500_000]):  # one file over a 1 MiB block
            (src / "sub" / f"f{i}.bin").write_bytes(os.urandom(size))
        (src / "notes.txt").write_text("a,b\n" * 20_000)
    path = tmp_path / f"{storage}.toml"
    path.write_text(f"""
[locks]
settle = "0.02s"
[storages.local]
type = "filesystem"
root = "{tmp_path / 'a'}"
[storages.offsite]
type = "filesystem"
root = "{tmp_path / 'b'}"
[datasets.exp42]
storage = "{storage}"
[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{src}"
volume_size = "600KiB"
[[datasets.exp42.sources]]
name = "more"
type = "directory"
path = "{src / 'sub'}"
""")
    return path


def _objects(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every object of the storage (temporary files of killed writes and lock objects left out): inode, bytes."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".part") and ".locks" not in p.parts}


def _complete_in_target(config: Path) -> list[str]:
    r = cli("list", "backup", "exp42", "--json", config=config)
    assert r.returncode == 0, r.stderr
    return [b["timestamp"] for b in json.loads(r.stdout) if "offsite" in b["storages"]]


def test_a_copy_killed_at_any_step_is_resumed_by_the_next_one(tmp_path: Path) -> None:
    config, target = _config(tmp_path), _config(tmp_path, "offsite")
    assert cli("backup", "exp42", config=config).returncode == 0
    source = {k: v[1] for k, v in _objects(tmp_path / "a").items()}
    counted = tmp_path / "count"
    args = ("copy", "exp42", "--to", "offsite")
    assert killed(config, 0, *args, count=counted).returncode == 0
    steps = int(counted.read_text())
    assert steps > 10, steps  # the lock, every block and commit, 2 source.json, backup.json
    for at in range(1, steps + 1):
        _remove(tmp_path / "b")
        r = killed(config, at, *args)
        assert r.returncode == -9, (at, r.stderr)
        assert not list((tmp_path / "b").glob("exp42/*/backup.json")), at  # killed before it was committed
        before = _objects(tmp_path / "b")
        r = cli(*args, config=config)  # the next run takes over the dead process's lock and resumes
        assert r.returncode == 0, (at, r.stderr)
        after = _objects(tmp_path / "b")
        assert {k: v[1] for k, v in after.items()} == source, at  # whole, and nothing more
        kept = {k: v for k, v in before.items() if not k.endswith(".json")}
        assert {k: after[k] for k in kept} == kept, at  # finished artifacts were skipped, not rewritten
    # Half-way, checked as a user would: the copy verifies and is the latest backup where it is.
    assert _complete_in_target(target) == [next(iter(source)).split("/")[1]]
    r = cli("verify", "latest", "exp42", config=target)
    assert r.returncode == 0, r.stderr


def _remove(root: Path) -> None:
    import shutil

    shutil.rmtree(root, ignore_errors=True)
