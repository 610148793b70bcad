"""``FilesystemStorage.delete_tree`` where it cannot simply remove a directory: a missing prefix, an object, an
immutable directory or file (a real EPERM from the kernel: ``chattr +i``, root cannot remove it either).
Every failure is one ``StorageError`` line naming the path and the reason."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import StorageError
from data_manager.types import Settings


def storage(root: Path) -> FilesystemStorage:
    return FilesystemStorage("t", Settings({"root": str(root)}))


def put(s: FilesystemStorage, key: str, data: bytes = b"x") -> None:
    w = s.open_write(key)
    w.write(data)
    w.commit()


def keys(s: FilesystemStorage) -> list[str]:
    return sorted(k for k, _ in s.walk(""))


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: nothing (not even root) may unlink it or, for a directory, anything in it."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_missing_prefix_is_nothing_to_delete(tmp_path: Path) -> None:
    """Kills ``except FileNotFoundError: return`` dropped (it would become the ``cannot delete`` error) and
    the prune reached for a prefix that was never there."""
    s = storage(tmp_path / "root")
    put(s, "d/keep")
    s.delete_tree("d/missing")
    s.delete_tree("nowhere/at/all")
    assert keys(s) == ["d/keep"]


def test_an_immutable_directory_is_one_storage_error_line(tmp_path: Path) -> None:
    """Kills the ``cannot delete`` message mutated and the OSError escaping as a traceback (or swallowed:
    the caller would believe the backup gone)."""
    root = tmp_path / "root"
    s = storage(root)
    put(s, "d/ts/src/obj")
    put(s, "d/keep")
    with immutable(root / "d" / "ts" / "src"):
        with pytest.raises(StorageError) as info:
            s.delete_tree("d/ts")
        assert str(info.value) == f"cannot delete {root / 'd' / 'ts'}: Operation not permitted"
        assert "\n" not in str(info.value)
        assert keys(s) == ["d/keep", "d/ts/src/obj"]
    s.delete_tree("d/ts")  # once it may, it does
    assert keys(s) == ["d/keep"] and not (root / "d" / "ts").exists()


def test_deleting_the_last_tree_drops_its_emptied_parents(tmp_path: Path) -> None:
    """Kills ``self._prune(path.parent)`` after the rmtree dropped: ``e`` would stay as an empty directory."""
    root = tmp_path / "root"
    s = storage(root)
    put(s, "e/ts/src/obj")
    put(s, "d/keep")
    s.delete_tree("e/ts")
    assert not (root / "e").exists() and keys(s) == ["d/keep"] and root.is_dir()


def test_an_immutable_object_is_one_storage_error_line(tmp_path: Path) -> None:
    """delete_tree on an object goes through ``delete``; its EPERM is one line too, and the object stays."""
    root = tmp_path / "root"
    s = storage(root)
    put(s, "d/obj")
    with immutable(root / "d" / "obj"):
        with pytest.raises(StorageError) as info:
            s.delete_tree("d/obj")
        assert str(info.value) == f"cannot delete {root / 'd' / 'obj'}: Operation not permitted"
        assert keys(s) == ["d/obj"]
    s.delete_tree("d/obj")
    assert keys(s) == [] and root.is_dir() and not (root / "d").exists()


def test_a_prefix_below_an_object_is_missing_too(tmp_path: Path) -> None:
    s = storage(tmp_path / "root")
    put(s, "d/obj")
    s.delete_tree("d/obj/sub")
    assert keys(s) == ["d/obj"]


# --------------------------------------------------------------------------- messages of the rarer failures
# Errors root never meets on a local disk (EACCES, EIO, a read-only mount): raised by a stand-in for the one
# system call, so each message is checked whole (survivors of scripts/mutation filesystem).


def test_an_emptied_parent_that_cannot_be_removed_names_it_and_the_reason(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    s = storage(tmp_path / "root")
    put(s, "d/sub/obj")
    real_rmdir = Path.rmdir

    def rmdir(self: Path) -> None:
        if self.name == "sub":
            raise OSError(errno.EIO, "Input/output error", str(self))
        real_rmdir(self)

    monkeypatch.setattr(Path, "rmdir", rmdir)
    with pytest.raises(StorageError) as e:
        s.delete("d/sub/obj")
    assert str(e.value) == f"cannot delete {tmp_path / 'root' / 'd' / 'sub'}: Input/output error"


def test_a_listing_refused_names_the_path_and_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = storage(tmp_path / "root")
    put(s, "d/obj")

    def scandir(path: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(StorageError) as e:
        list(s.list("d"))
    assert str(e.value) == f"cannot list {tmp_path / 'root' / 'd'}: Permission denied"


def test_check_asks_for_write_and_search_on_the_root_and_write_on_the_parent_that_would_hold_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[Path, int]] = []
    writable = {"value": False}

    def access(path: object, mode: int) -> bool:
        asked.append((Path(str(path)), mode))
        return writable["value"]

    monkeypatch.setattr(os, "access", access)
    missing = storage(tmp_path / "a" / "b")  # tmp_path exists: it would hold a/b
    with pytest.raises(StorageError) as e:
        missing.check()
    assert str(e.value) == f"{tmp_path / 'a' / 'b'} does not exist and cannot be created"
    assert asked == [(tmp_path, os.W_OK)]
    writable["value"] = True
    missing.check()  # a writable parent: the root is created on the first write

    asked.clear()
    writable["value"] = False
    existing = storage(tmp_path)
    with pytest.raises(StorageError) as e:
        existing.check()
    assert str(e.value) == f"{tmp_path} is not writable"
    assert asked == [(tmp_path, os.W_OK | os.X_OK)]


def test_the_background_flush_starts_its_thread_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write past the flush threshold starts the flusher thread even when no other write started it before
    (a new process): the object is committed whole."""
    from data_manager.builtin import filesystem

    monkeypatch.setattr(filesystem, "_flusher", None)
    s = storage(tmp_path / "root")
    data = b"x" * (filesystem._FLUSH_EVERY + 1)
    put(s, "big", data)
    assert filesystem._flusher is not None
    assert (tmp_path / "root" / "big").stat().st_size == len(data)


def test_an_unfinished_write_that_cannot_be_removed_names_it_and_the_reason(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    s = storage(tmp_path / "root")
    part = tmp_path / "root" / "d" / ".vol.tar.1a2b.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"half")
    os.utime(part, (1, 1))

    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(StorageError) as e:
        s.sweep_unfinished("d", 60, remove=True)
    assert str(e.value) == f"cannot delete {part}: Read-only file system"


def test_sweep_goes_on_past_a_part_file_that_vanished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``.part`` file committed or aborted between the walk and its stat is skipped, not the rest of its
    directory."""
    storage = FilesystemStorage("t", Settings({"root": str(tmp_path)}))
    (tmp_path / "d").mkdir()
    for i in range(5):
        (tmp_path / "d" / f".obj{i}.x.part").write_bytes(b"half")
        os.utime(tmp_path / "d" / f".obj{i}.x.part", (1, 1))
    real, first = Path.lstat, []

    def lstat(self: Path) -> os.stat_result:
        if self.name.endswith(".part") and not first:
            first.append(self.name)
            raise FileNotFoundError(self)
        return real(self)

    monkeypatch.setattr(Path, "lstat", lstat)
    found = storage.sweep_unfinished("", 60, remove=False)
    assert len(found) == 4 and f"d/{first[0]}" not in found
