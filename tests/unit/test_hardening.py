"""The core's guarantees under damage and interruption: a bad backup never blocks the others, restores are
durable and atomic, leftovers are cleaned, writes are whole, storage objects are private."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from data_manager import DataManager
from data_manager import durable
from data_manager.builtin import directory, filesystem
from data_manager.errors import CorruptBackupError, ExitCode, StorageError, UsageError

from ..helpers import cli, make_tree, snapshot, write_config


@pytest.fixture
def two_backups(tmp_path: Path) -> tuple[DataManager, Path, Path, list[str]]:
    src = make_tree(tmp_path / "src")
    store = tmp_path / "store"
    config = write_config(tmp_path / "dm.toml", store, {"raw": src})
    dm = DataManager.from_file(config)
    stamps = [dm.backup("exp42").timestamp]
    (src / "hello.txt").write_text("second\n")
    stamps.append(dm.backup("exp42").timestamp)
    return dm, config, store, stamps


# --------------------------------------------------------------------------- one damaged backup.json


@pytest.mark.parametrize("damage", [b"{not json", b"", b'{"format": "data-manager-backup/2"}', b"[]"])
def test_a_damaged_manifest_is_listed_and_skipped_not_blocking(two_backups, damage: bytes) -> None:
    dm, config, store, (first, second) = two_backups
    (store / "exp42" / second / "backup.json").write_bytes(damage)
    backups = dm.list_backups("exp42")
    assert [(b.timestamp, b.complete, bool(b.damaged)) for b in backups] == [(first, True, False), (second, False, True)]
    assert dm.find_backup("exp42", "latest")[1].timestamp == first
    dm.verify("exp42", first)
    out = config.parent / "out"
    dm.restore("exp42", "latest", overrides={"raw": {"path": str(out)}})
    assert (out / "hello.txt").read_text() == "hello\n"
    with pytest.raises(CorruptBackupError):
        dm.restore("exp42", second, overrides={"raw": {"path": str(out)}})
    [entry] = dm.status().datasets
    assert (entry["latest"], entry["damaged"], entry["incomplete"]) == (first, 1, 0)
    r = cli("list", "backup", "exp42", config=config)
    assert r.returncode == 0 and "DAMAGED" in r.stdout and "complete" in r.stdout
    assert f"damaged: exp42/{second}" in r.stderr
    r = cli("verify", second, "exp42", config=config)
    assert r.returncode == ExitCode.CORRUPT and "Traceback" not in r.stderr


def test_cleanup_leaves_a_damaged_backup_alone(two_backups) -> None:
    """Damaged is not incomplete: cleanup's grace-period removal is for interrupted backups only."""
    dm, _, store, (_, second) = two_backups
    (store / "exp42" / second / "backup.json").write_bytes(b"{")
    assert dm.cleanup("exp42", older_than=0) == []
    assert (store / "exp42" / second).is_dir()


# --------------------------------------------------------------------------- cleanup of .part leftovers


def test_cleanup_removes_an_interrupted_backup_of_part_files_only(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    store = tmp_path / "store"
    config = write_config(tmp_path / "dm.toml", store, {"raw": src})
    dm = DataManager.from_file(config)
    husk = store / "exp42" / "20200101T000000Z" / "raw"
    husk.mkdir(parents=True)
    (husk / ".vol-000001.tar.zst.abcd1234.part").write_bytes(b"x" * 100)
    dry = dm.cleanup("exp42", older_than=0, dry_run=True)
    assert [(i.timestamp, i.action) for i in dry] == [("20200101T000000Z", "would remove")]
    done = dm.cleanup("exp42", older_than=0)
    assert [(i.timestamp, i.action) for i in done] == [("20200101T000000Z", "removed")]
    assert not (store / "exp42" / "20200101T000000Z").exists()
    assert dm.cleanup("exp42", older_than=0, dry_run=True) == []


# --------------------------------------------------------------------------- restore: durable, atomic, leftovers


def test_restore_is_synced_before_the_swap_and_the_swap_after(two_backups, monkeypatch: pytest.MonkeyPatch) -> None:
    dm, config, _, _ = two_backups
    target = config.parent / "target"
    target.mkdir()
    calls: list[str] = []
    real_sync, real_exchange, real_fsync_dir = directory.sync_filesystem, directory.exchange, directory.fsync_dir
    monkeypatch.setattr(directory, "sync_filesystem", lambda fd: (calls.append("syncfs"), real_sync(fd))[1])
    monkeypatch.setattr(directory, "exchange", lambda a, b: (calls.append("exchange"), real_exchange(a, b))[1])
    monkeypatch.setattr(directory, "fsync_dir", lambda p: (calls.append(f"fsync {Path(p).name}"), real_fsync_dir(p))[1])
    dm.restore("exp42", overrides={"raw": {"path": str(target)}})
    assert calls == ["syncfs", "exchange", f"fsync {target.parent.name}"]


def test_the_swap_falls_back_to_two_renames(two_backups, monkeypatch: pytest.MonkeyPatch) -> None:
    dm, config, _, _ = two_backups
    target = config.parent / "target"
    target.mkdir()
    (target / "old").write_text("old")
    monkeypatch.setattr(directory, "exchange", lambda a, b: False)
    dm.restore("exp42", overrides={"raw": {"path": str(target)}})
    assert (target / "hello.txt").read_text() == "second\n" and not (target / "old").exists()
    assert [p.name for p in target.parent.iterdir() if ".dm-" in p.name] == []


def test_a_target_moved_aside_by_a_killed_restore_is_put_back_first(two_backups) -> None:
    """kill -9 between the two renames of the fallback swap leaves no target, only .NAME.dm-old-*: the next
    restore puts it back before anything else, so a failure of that restore still leaves the old data."""
    dm, config, store, (first, second) = two_backups
    target = config.parent / "target"
    moved = config.parent / ".target.dm-old-deadbeef"
    moved.mkdir()
    (moved / "precious").write_text("old data")
    (store / "exp42" / second / "raw" / "files.jsonl").write_bytes(b"corrupt")
    with pytest.raises(CorruptBackupError):
        dm.restore("exp42", second, overrides={"raw": {"path": str(target)}})
    assert (target / "precious").read_text() == "old data"
    assert not moved.exists()


def test_leftover_staging_is_removed_by_the_next_restore_and_by_cleanup(two_backups) -> None:
    dm, config, _, _ = two_backups
    target = config.parent / "target"
    cfg = config.read_text().replace(str(config.parent / "src"), str(target))
    config.write_text(cfg)
    dm = DataManager.from_file(config)
    stale = config.parent / ".target.dm-restore-0badf00d"
    (stale / "half").mkdir(parents=True)
    [item] = dm.cleanup("exp42", dry_run=True)
    assert (item.action, item.path) == ("would remove", str(stale)) and stale.exists()
    r = cli("cleanup", "exp42", config=config)
    assert r.returncode == 0 and f"removed: restore leftover {stale}" in r.stdout, r.stdout + r.stderr
    assert not stale.exists()
    stale.mkdir()
    dm.restore("exp42")
    assert not stale.exists() and (target / "hello.txt").exists()


def test_a_symlinked_target_stays_a_symlink(two_backups) -> None:
    dm, config, _, _ = two_backups
    real = config.parent / "real"
    real.mkdir()
    (real / "old").write_text("old")
    link = config.parent / "link"
    link.symlink_to(real)
    dm.restore("exp42", overrides={"raw": {"path": str(link)}})
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real / "hello.txt").read_text() == "second\n" and not (real / "old").exists()


def test_a_full_target_disk_is_one_line_and_the_target_unchanged(two_backups, monkeypatch: pytest.MonkeyPatch) -> None:
    dm, config, _, _ = two_backups
    target = config.parent / "target"
    target.mkdir()
    (target / "precious").write_text("keep")
    before = snapshot(target)
    real_write = os.write
    budget = [100_000]

    def filling(fd: int, data: bytes) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, memoryview(data)[: budget[0]])
        budget[0] -= n
        return n

    monkeypatch.setattr(durable.os, "write", filling)
    with pytest.raises(Exception) as caught:
        dm.restore("exp42", overrides={"raw": {"path": str(target)}})
    assert caught.value.args[0].endswith("No space left on device"), caught.value
    assert caught.value.exit_code == ExitCode.FAILED  # type: ignore[attr-defined]
    assert snapshot(target) == before
    assert [p.name for p in target.parent.iterdir() if ".dm-" in p.name] == []


# --------------------------------------------------------------------------- whole writes, private objects


def test_write_all_finishes_a_short_write_and_reports_the_error_behind_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    sizes: list[int] = []

    def short(fd: int, data: bytes) -> int:
        if len(sizes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        sizes.append(min(len(data), 3))
        return real_write(fd, memoryview(data)[:3])

    monkeypatch.setattr(durable.os, "write", short)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as caught:
            durable.write_all(fd, b"0123456789")
        assert caught.value.errno == errno.ENOSPC
        assert sizes == [3, 3]
        monkeypatch.setattr(durable.os, "write", real_write)
        durable.write_all(fd, b"abc")
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"012345abc"


def test_the_filesystem_writer_writes_every_byte_of_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(durable.os, "write", lambda fd, data: real_write(fd, memoryview(data)[:1000]))
    storage = filesystem.FilesystemStorage("s", _settings(tmp_path / "store"))
    data = os.urandom(100_000)
    with storage.open_write("a/b/obj") as w:
        w.write(data)
    assert (tmp_path / "store" / "a" / "b" / "obj").read_bytes() == data


def test_a_full_storage_fails_the_commit_and_leaves_no_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    storage = filesystem.FilesystemStorage("s", _settings(tmp_path / "store"))
    w = storage.open_write("a/obj")
    monkeypatch.setattr(durable.os, "write", full)
    with pytest.raises(StorageError, match="No space left on device"):
        w.write(b"x")
    w.abort()
    assert list((tmp_path / "store" / "a").iterdir()) == []


def test_storage_objects_and_directories_are_private(tmp_path: Path) -> None:
    os.umask(0o022)
    storage = filesystem.FilesystemStorage("s", _settings(tmp_path / "store"))
    with storage.open_write("exp/ts/raw/obj") as w:
        w.write(b"secret")
    for d in ("store", "store/exp", "store/exp/ts", "store/exp/ts/raw"):
        assert stat.S_IMODE(os.stat(tmp_path / d).st_mode) == 0o700, d
    assert stat.S_IMODE(os.stat(tmp_path / "store/exp/ts/raw/obj").st_mode) == 0o600


def _settings(root: Path):
    from data_manager.types import Settings

    return Settings({"root": str(root)})


# --------------------------------------------------------------------------- a dataset that left the config


def test_a_dataset_that_left_the_config_is_listed_verified_and_restored_where_told(two_backups) -> None:
    dm, config, store, (first, second) = two_backups
    text = config.read_text()
    config.write_text(text[: text.index("[datasets.exp42]")] + '[datasets.other]\n[[datasets.other.sources]]\n'
                      f'name = "x"\ntype = "directory"\npath = "{config.parent / "x"}"\n')
    dm = DataManager.from_file(config)
    assert [b.timestamp for b in dm.list_backups("exp42")] == [first, second]
    dm.verify("exp42")
    with pytest.raises(UsageError, match=r"--set raw\.path="):
        dm.restore("exp42")
    r = cli("restore", "exp42", "--yes", config=config)
    assert r.returncode == ExitCode.USAGE and "--set raw.path=" in r.stderr and "Traceback" not in r.stderr
    out = config.parent / "restored"
    r = cli("restore", "exp42", "--yes", "--set", f"raw.path={out}", config=config)
    assert r.returncode == 0, r.stderr
    assert (out / "hello.txt").read_text() == "second\n"
    with pytest.raises(UsageError, match="unknown dataset"):
        dm.verify("never-was")


def test_sqlite_restore_leftovers_are_listed_by_cleanup_and_removed_by_the_next_restore(tmp_path: Path) -> None:
    from ..helpers import make_sqlite, sqlite_rows

    db = make_sqlite(tmp_path / "data" / "notes.db")
    config = write_config(tmp_path / "dm.toml", tmp_path / "store", {"notes": db})
    dm = DataManager.from_file(config)
    dm.backup("exp42")
    stale = db.parent / ".notes.db.dm-restore-0badf00d"
    stale.write_bytes(b"half a database")
    [item] = dm.cleanup("exp42", dry_run=True)
    assert (item.action, item.path) == ("would remove", str(stale))
    dm.restore("exp42")
    assert not stale.exists() and len(sqlite_rows(db)) == 1000


def test_cleanup_removes_unfinished_writes_left_inside_a_complete_backup(two_backups) -> None:
    """A write killed inside a backup that was later resumed (or copied again) leaves a .part file that no
    listing shows; cleanup removes it after the grace period, and never a young one."""
    dm, config, store, (first, _) = two_backups
    stale = store / "exp42" / first / "raw" / ".vol-000009.tar.zst.deadbeef.part"
    stale.write_bytes(b"x" * 10)
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    young = store / "exp42" / first / "raw" / ".vol-000010.tar.zst.cafecafe.part"
    young.write_bytes(b"y")
    [item] = dm.cleanup("exp42", dry_run=True)
    assert (item.action, item.kind, item.path) == ("would remove", "unfinished write", str(stale)) and stale.exists()
    r = cli("cleanup", "exp42", config=config)
    assert r.returncode == 0 and f"removed: unfinished write {stale}" in r.stdout, r.stdout + r.stderr
    assert not stale.exists() and young.exists()
    dm.verify("exp42", first)
