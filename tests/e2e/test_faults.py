"""Fault injection through the real command: a disk that fills up (tmpfs mounts of many sizes, in a private
mount namespace) and SIGKILL before every durable step. Never exit 0 with data that does not verify; a
backup counts only when complete; a restore completes or leaves the target as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_manager.timestamps import now_utc, parse_timestamp

from ..helpers import REPO, cli, killed, snapshot, write_config


def _can_mount() -> str:
    if os.geteuid() != 0:
        return "needs root (tmpfs mounts in a private mount namespace)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return "" if probe.returncode == 0 else f"cannot mount tmpfs in a mount namespace: {probe.stderr.strip()}"


_NO_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(bool(_NO_MOUNT) and os.environ.get("CI") != "true", reason=_NO_MOUNT)


def _dataset(tmp_path: Path, many: bool = False) -> tuple[Path, Path]:
    """~1.5 MB that does not compress, in files of several sizes, plus the things a tree has."""
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "empty").mkdir()
    for i, size in enumerate([0, 10, 5000, 70_000, 300_000, 800_000]):
        (src / ("sub" if i % 2 else "sub/deep") / f"f{i}.bin").write_bytes(os.urandom(size))
    for i in range(40 if many else 0):  # with a small volume_size: a volume each, a manifest of several pages
        (src / "many" / f"m{i:02d}.bin").parent.mkdir(exist_ok=True)
        (src / "many" / f"m{i:02d}.bin").write_bytes(os.urandom(9000))
    (src / "notes.txt").write_text("a,b\n" * 20_000)
    os.symlink("notes.txt", src / "link")
    store = tmp_path / "mnt" / "store"
    return src, store


def _on_tmpfs(mount: Path, size: int, *args: str) -> dict:
    mount.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o "size=$1,mode=0755" tmpfs "$2" && shift 2 && exec "$@"'
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(size), str(mount),
                        sys.executable, "-m", "tests.e2e.tmpfs_check", *args],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _one_clean_line(report: dict) -> None:
    assert report["rc"] == 1, report
    lines = report["stderr"].strip().splitlines()
    assert "Traceback" not in report["stderr"] and lines[-1].startswith("data-manager: error:"), report
    assert any(word in lines[-1] for word in ("No space left", "Disk quota", "Read-only")), report


@needs_mount
def test_a_storage_that_fills_up_never_yields_a_backup_that_does_not_verify(tmp_path: Path) -> None:
    """Every page count from a coarse failure to the first success: so the disk fills up at each of the
    last writes (the index, source.json, a backup.json of more than a page)."""
    src, store = _dataset(tmp_path, many=True)
    config = write_config(tmp_path / "dm.toml", store, {"raw": src})
    config.write_text(config.read_text() + 'volume_size = "8KiB"\n')  # many volumes: a manifest of several pages

    def run(pages: int) -> int:
        report = _on_tmpfs(tmp_path / "mnt", pages * 4096, "storage", str(config), str(tmp_path / f"out-{pages}"),
                           json.dumps({"src": str(src)}))
        if report["rc"] == 0:
            assert (report["verify_rc"], report["restore_rc"], report["same"]) == (0, 0, True), (pages, report)
        else:
            _one_clean_line(report)
        return report["rc"]

    step = 24
    coarse = [1, 2, 4, 8] + list(range(step, 1024, step))
    last_fail = 0
    for pages in coarse:
        if run(pages) == 0:
            break
        last_fail = pages
    else:
        pytest.fail("the backup never fitted")
    assert last_fail, "the smallest disk was not full"
    for pages in range(last_fail + 1, pages):
        run(pages)


@needs_mount
def test_a_target_disk_that_fills_up_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    src, _ = _dataset(tmp_path)
    store = tmp_path / "store"
    config = write_config(tmp_path / "dm.toml", store, {"raw": src})
    assert cli("backup", "exp42", config=config).returncode == 0
    old = tmp_path / "old"
    old.mkdir()
    (old / "precious.txt").write_text("the data before the restore\n" * 100)
    outcomes = []
    for size in [4096 * k for k in (4, 16, 64, 128, 192, 256, 320, 384, 448, 512, 640, 1024)]:
        mount = tmp_path / "mnt"
        report = _on_tmpfs(mount, size, "target", str(config), str(mount / "target"), str(old),
                           json.dumps({"src": str(src)}))
        if report["rc"] != 0:
            _one_clean_line(report)
        assert report["same"], (size, report)
        assert report["leftovers"] == [], (size, report)
        outcomes.append(report["rc"])
    assert 0 in outcomes and 1 in outcomes, outcomes


def _backups(config: Path) -> list[dict]:
    r = cli("list", "backup", "exp42", "--json", config=config)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_backup_killed_before_any_write_or_commit_never_counts(tmp_path: Path) -> None:
    src, _ = _dataset(tmp_path)
    config = write_config(tmp_path / "dm.toml", tmp_path / "store", {"raw": src})
    counted = tmp_path / "count"
    assert killed(config, 0, "backup", "exp42", count=counted).returncode == 0
    steps = int(counted.read_text())
    assert steps > 5
    for at in range(1, steps + 1):
        r = killed(config, at, "backup", "exp42")
        assert r.returncode == -9, (at, r.stderr)
        complete = [b for b in _backups(config) if b["complete"]]
        assert len(complete) == 1, (at, complete)  # only the uninterrupted run's
    assert cli("verify", "latest", "exp42", config=config).returncode == 0
    # Whatever the killed runs left is resumable or removable, and the next backup is whole.
    r = cli("backup", "exp42", "--resume", config=config)
    assert r.returncode == 0, r.stderr
    assert cli("verify", "latest", "exp42", config=config).returncode == 0
    # Killed runs come faster than one a second: their timestamps (the next free second) may be ahead of the
    # clock, and a backup is never older than 0 s before its timestamp has passed.
    newest = max(parse_timestamp(b["timestamp"]) for b in _backups(config))
    time.sleep(max(0.0, (newest - now_utc()).total_seconds() + 1.1))
    r = cli("cleanup", "exp42", "--older-than", "0s", config=config)
    assert r.returncode == 0, r.stderr
    assert all(b["complete"] for b in _backups(config))


def test_a_restore_killed_at_any_step_leaves_the_old_target_or_the_new_one(tmp_path: Path) -> None:
    src, _ = _dataset(tmp_path)
    config = write_config(tmp_path / "dm.toml", tmp_path / "store", {"raw": src})
    assert cli("backup", "exp42", config=config).returncode == 0
    new = snapshot(src)
    parent = tmp_path / "restore"
    target = parent / "target"

    def fresh_target() -> dict:
        shutil.rmtree(parent, ignore_errors=True)
        (target / "old-dir").mkdir(parents=True)
        (target / "old-dir" / "old.txt").write_text("old\n")
        return snapshot(target)

    old = fresh_target()
    args = ("restore", "latest", "exp42", "--yes", "--set", f"raw.path={target}")
    counted = tmp_path / "count"
    assert killed(config, 0, *args, count=counted).returncode == 0
    steps = int(counted.read_text())
    assert snapshot(target) == new and steps > 5
    for at in range(1, steps + 1):
        old = fresh_target()
        r = killed(config, at, *args)
        assert r.returncode == -9, (at, r.stderr)
        assert snapshot(target) in (old, new), at
        # The next run cleans up after the killed one, and completes.
        r = cli(*args, config=config)
        assert r.returncode == 0, (at, r.stderr)
        assert snapshot(target) == new
        assert [p.name for p in parent.iterdir()] == ["target"], at
