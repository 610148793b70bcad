"""``FilesystemStorage.delete_tree`` where it cannot simply remove a directory: a missing prefix, an object, an
immutable directory or file (a real EPERM from the kernel: ``chattr +i``, root cannot remove it either).
Every failure is one ``StorageError`` line naming the path and the reason."""

from __future__ import annotations

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
