"""``directory._swap`` without an atomic exchange: two renames, and the rollback when the second one fails.

``data_manager.durable.exchange`` is forced to report "not supported" (as on filesystems without
``renameat2(RENAME_EXCHANGE)``), so the restore moves the target aside, then renames the staging copy into
place; ``os.rename`` is made to fail on that second rename. The target must be back as it was, with no
``.dm-old-`` or ``.dm-restore-`` copy beside it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import data_manager.builtin.directory as directory
from data_manager.api import DataManager
from data_manager.errors import SourceError
from tests.helpers import snapshot


def manager(tmp_path: Path, src: Path) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "raw", "type": "directory", "path": str(src)}]}},
    })


def backed_up_then_changed(tmp_path: Path) -> tuple[DataManager, Path]:
    """A backup of ``data`` (a.txt, sub/b.bin), then ``data`` changed: what a restore would replace."""
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("backed up")
    (src / "sub" / "b.bin").write_bytes(os.urandom(5000))
    dm = manager(tmp_path, src)
    dm.backup("d")
    (src / "a.txt").write_text("changed after the backup")
    (src / "new.txt").write_text("only in the target")
    return dm, src


def beside(src: Path) -> list[str]:
    """Restore leftovers next to the target."""
    return sorted(p.name for p in src.parent.iterdir() if p.name.startswith(f".{src.name}"))


def no_exchange(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Force the two-rename path; return the list of renames it makes."""
    calls: list[tuple[str, str]] = []
    real = os.rename

    def rename(a: object, b: object, *args: object, **kw: object) -> None:
        calls.append((os.path.basename(str(a)), os.path.basename(str(b))))
        real(a, b, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(directory, "exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", rename)
    return calls


@pytest.mark.parametrize("fault", [OSError(errno.EXDEV, "Invalid cross-device link"), KeyboardInterrupt()],
                         ids=["oserror", "interrupt"])
def test_second_rename_fails_target_is_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                fault: BaseException) -> None:
    """Kills: the rollback ``os.rename(old, target)`` dropped (target missing), the ``raise`` after it
    dropped (the old tree is then deleted and the restore reports success)."""
    dm, src = backed_up_then_changed(tmp_path)
    before = snapshot(src)
    calls = no_exchange(monkeypatch)
    real = os.rename  # the recording wrapper

    def failing(a: object, b: object, *args: object, **kw: object) -> None:
        if os.path.basename(str(a)).startswith(".data.dm-restore-") and str(b) == str(src):
            calls.append(("FAIL", ""))
            raise fault
        real(a, b, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", failing)
    if isinstance(fault, OSError):
        with pytest.raises(SourceError) as info:
            dm.restore("d")
        message = str(info.value)
        assert message == f"source 'raw': cannot restore into {src}: Invalid cross-device link"
    else:
        with pytest.raises(KeyboardInterrupt):
            dm.restore("d")
    # It did take the two-rename path: target aside, the failing rename, target back.
    assert len(calls) == 3 and calls[0][0] == "data" and calls[0][1].startswith(".data.dm-old-")
    assert calls[1] == ("FAIL", "") and calls[2] == (calls[0][1], "data")
    assert snapshot(src) == before
    assert (src / "a.txt").read_text() == "changed after the backup" and (src / "new.txt").exists()
    assert beside(src) == []


def test_two_renames_install_the_restore_and_leave_nothing(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills: ``shutil.rmtree(old)`` after the swap dropped (a ``.dm-old-`` copy stays), ``fsync_dir(parent)``
    dropped (the renames are not made durable)."""
    dm, src = backed_up_then_changed(tmp_path)
    calls = no_exchange(monkeypatch)
    synced: list[tuple[str, bool]] = []
    real_sync = directory.fsync_dir

    def fsync_dir(path: Path | str) -> None:
        # What the directory holds when it is synced: the restored target, the old one gone or going.
        synced.append((str(path), (src / "a.txt").read_text() == "backed up"))
        real_sync(path)

    monkeypatch.setattr(directory, "fsync_dir", fsync_dir)
    dm.restore("d")
    assert len(calls) == 2 and calls[0][1].startswith(".data.dm-old-") and calls[1][1] == "data"
    assert (src / "a.txt").read_text() == "backed up" and not (src / "new.txt").exists()
    assert beside(src) == []
    assert (str(src.parent), True) in synced


def test_no_target_yet_is_one_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target that does not exist is not moved aside (kills ``not lexists`` inverted: the two-rename path
    would fail renaming a missing target)."""
    dm, src = backed_up_then_changed(tmp_path)
    calls = no_exchange(monkeypatch)
    out = tmp_path / "fresh"
    dm.restore("d", overrides={"raw": {"path": str(out)}})
    assert len(calls) == 1 and calls[0][1] == "fresh"
    assert (out / "a.txt").read_text() == "backed up" and beside(out) == []


def test_an_old_tree_that_cannot_be_removed_leaves_the_restore_done(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two renames, then the old tree is removed as far as it can be: what stays (an immutable file) is a
    leftover ``cleanup`` lists, not a failed restore."""
    import subprocess

    dm, src = backed_up_then_changed(tmp_path)
    stuck = src / "stuck"
    stuck.write_text("immutable")
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        no_exchange(monkeypatch)
        dm.restore("d")
        assert (src / "a.txt").read_text() == "backed up" and not (src / "stuck").exists()
        [left] = beside(src)
        assert ".dm-old-" in left and (src.parent / left / "stuck").read_text() == "immutable"
    finally:
        for p in tmp_path.rglob("stuck"):
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)


def test_what_an_interrupted_restore_left_is_removed_and_logged(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    dm, src = backed_up_then_changed(tmp_path)
    left = src.parent / f".{src.name}.dm-restore-abc123"
    (left / "half").mkdir(parents=True)
    caplog.set_level("INFO")
    dm.restore("d")
    assert not left.exists() and beside(src) == []
    assert f"removing {left}, left by an interrupted restore" in caplog.messages
